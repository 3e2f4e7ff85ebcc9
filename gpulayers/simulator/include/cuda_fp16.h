// cuda_fp16.h for the CPU kernel simulator: __half is the host compiler's _Float16, whose
// arithmetic rounds each operation to half precision as the GPU's __half does.
#pragma once
#include <cstring>

typedef _Float16 __half;

inline float __half2float(__half h) { return (float)h; }
inline __half __float2half(float f) { return (__half)f; }
inline __half __float2half_rn(float f) { return (__half)f; }
inline __half __double2half(double d) { return (__half)d; }
inline __half __ushort_as_half(unsigned short u) { __half h; std::memcpy(&h, &u, 2); return h; }
inline unsigned short __half_as_ushort(__half h) { unsigned short u; std::memcpy(&u, &h, 2); return u; }
inline __half __hadd(__half a, __half b) { return a + b; }
inline __half __hsub(__half a, __half b) { return a - b; }
inline __half __hmul(__half a, __half b) { return a * b; }
inline __half __hdiv(__half a, __half b) { return a / b; }
inline __half __hneg(__half a) { return -a; }
inline __half __habs(__half a) { return a < (__half)0 ? -a : a; }
inline bool __hisnan(__half a) { return a != a; }
inline bool __hgt(__half a, __half b) { return a > b; }
inline bool __hlt(__half a, __half b) { return a < b; }
inline bool __hge(__half a, __half b) { return a >= b; }
inline bool __hle(__half a, __half b) { return a <= b; }
inline bool __heq(__half a, __half b) { return a == b; }
inline __half __hmax(__half a, __half b) { return a != a ? b : (b != b ? a : (a > b ? a : b)); }
inline __half __hmin(__half a, __half b) { return a != a ? b : (b != b ? a : (a < b ? a : b)); }
