// cuda_sim.h -- maps CUDA's device-side language onto the host C++ compiler, so that the
// unchanged .cu files in cuda/ compile into a CPU library (see gpulayers/simulator).
//
// Threads of a block run as cooperative fibers on one OS thread, one block after another;
// __syncthreads() and the warp operations are scheduling points (sim_runtime.h). Blocks
// never run concurrently, so atomics are plain read-modify-writes and `__shared__`
// variables (static storage) are private to the running block.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define GPULAYERS_SIMULATOR 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ thread_local
#define __constant__ static
#define __align__(n) __attribute__((aligned(n)))

// The analysis build (GLSIM_ANALYSIS, see sim_analysis.h) compiles the kernels with
// -fsanitize=thread: every memory access calls a hook. The runtime itself (GLSIM_RT) is not
// instrumented; atomics report themselves as atomic accesses.
#ifdef GLSIM_ANALYSIS
#define GLSIM_RT __attribute__((no_sanitize("thread")))
#define GLSIM_ATOMIC GLSIM_RT __attribute__((noinline))
namespace glsim { void atomic_access(void* p, unsigned size, void* pc); }
#define GLSIM_NOTE_ATOMIC(p) ::glsim::atomic_access((void*)(p), sizeof(*(p)), __builtin_return_address(0))
#else
#define GLSIM_RT
#define GLSIM_ATOMIC inline
#define GLSIM_NOTE_ATOMIC(p) ((void)0)
#endif

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };
// CUDA's vector types (the built-in alignment, so that a copy is one wide access)
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(16))) double2 { double x, y; };
struct __attribute__((aligned(8))) int2 { int x, y; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };

namespace glsim {
extern uint3 thread_idx, block_idx;
extern dim3 block_dim, grid_dim;
void syncthreads();
// Warp collective: deposits `bits` for this lane, waits for every lane of `mask`; on return
// warp_value(lane) is the value that lane deposited in the same collective.
// fence: a __syncwarp(), which orders the memory accesses of its lanes (shuffles and votes do not)
void warp_collective(unsigned mask, unsigned long long bits, bool fence = false);
unsigned long long warp_value(int lane);
unsigned warp_group_mask();
int lane_id();

template <typename T> inline unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= 8, "warp shuffles of types wider than 8 bytes are not simulated");
    unsigned long long b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <typename T> inline T from_bits(unsigned long long b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}
template <typename T> inline T shuffle_from(unsigned mask, T v, int src) {
    warp_collective(mask, to_bits(v));
    if (src < 0 || src > 31 || !((warp_group_mask() >> src) & 1u)) return v;
    return from_bits<T>(warp_value(src));
}
}  // namespace glsim

#define threadIdx (::glsim::thread_idx)
#define blockIdx (::glsim::block_idx)
#define blockDim (::glsim::block_dim)
#define gridDim (::glsim::grid_dim)
#define warpSize 32

inline void __syncthreads() { glsim::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { glsim::warp_collective(mask, 0, true); }
inline void __threadfence() {}
inline void __threadfence_block() {}

template <typename T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    const int lane = glsim::lane_id();
    return glsim::shuffle_from(mask, v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <typename T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = glsim::lane_id();
    const int src = (lane % width) + (int)delta < width ? lane + (int)delta : lane;
    return glsim::shuffle_from(mask, v, src);
}
template <typename T> inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = glsim::lane_id();
    const int src = (lane % width) - (int)delta >= 0 ? lane - (int)delta : lane;
    return glsim::shuffle_from(mask, v, src);
}
template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    const int lane = glsim::lane_id();
    const int src = lane ^ lane_mask;
    return glsim::shuffle_from(mask, v, src < ((lane & ~(width - 1)) + width) ? src : lane);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    glsim::warp_collective(mask, pred ? 1u : 0u);
    unsigned r = 0, group = glsim::warp_group_mask();
    for (int l = 0; l < 32; ++l)
        if (((group >> l) & 1u) && glsim::warp_value(l)) r |= 1u << l;
    return r;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) {
    return __ballot_sync(mask, pred) == glsim::warp_group_mask();
}
inline unsigned __activemask() { return 0xffffffffu; }

// Atomics: blocks and threads never run at the same time, so plain updates are exact.
template <typename T> GLSIM_ATOMIC T atomicAdd(T* p, T v) { GLSIM_NOTE_ATOMIC(p); T old = *p; *p = old + v; return old; }
template <typename T> GLSIM_ATOMIC T atomicSub(T* p, T v) { GLSIM_NOTE_ATOMIC(p); T old = *p; *p = old - v; return old; }
template <typename T> GLSIM_ATOMIC T atomicExch(T* p, T v) { GLSIM_NOTE_ATOMIC(p); T old = *p; *p = v; return old; }
template <typename T> GLSIM_ATOMIC T atomicMax(T* p, T v) { GLSIM_NOTE_ATOMIC(p); T old = *p; if (v > old) *p = v; return old; }
template <typename T> GLSIM_ATOMIC T atomicMin(T* p, T v) { GLSIM_NOTE_ATOMIC(p); T old = *p; if (v < old) *p = v; return old; }
template <typename T> GLSIM_ATOMIC T atomicCAS(T* p, T cmp, T v) {
    GLSIM_NOTE_ATOMIC(p); T old = *p; if (old == cmp) *p = v; return old;
}
GLSIM_ATOMIC unsigned atomicInc(unsigned* p, unsigned limit) {
    GLSIM_NOTE_ATOMIC(p); unsigned old = *p; *p = (old >= limit) ? 0 : old + 1; return old;
}

// Math: the fast intrinsics are their accurate counterparts here.
using std::isinf;
using std::isnan;
inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline float max(float a, float b) { return std::fmax(a, b); }
inline float min(float a, float b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __tanhf(float x) { return std::tanh(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
template <typename T> inline T __ldg(const T* p) { return *p; }
