// common.cuh -- helpers shared by every kernel file in cuda/.
//
// Numeric limits and accumulate types per dtype, index arithmetic, and warp/block
// reductions. One template serves float, double and __half; nothing here is copied
// per dtype or per layout. Included by each .cu; compiled by NVRTC on the GPU path and
// by the host C++ compiler (with gpulayers/simulator/cuda_sim.h) on the simulator path.
#pragma once
#include <cuda_fp16.h>

namespace gl {

typedef long long index_t;  // 64-bit element indices: tensors may exceed 2^31 elements

// Accumulate type: float for float and __half, double for double (acc_t<T>).
template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };
template <typename T> using acc_t = typename Acc<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_acc(float v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <typename T> __device__ __forceinline__ T from_acc(double v);
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }

__device__ __forceinline__ bool is_nan(float v) { return v != v; }
__device__ __forceinline__ bool is_nan(double v) { return v != v; }

__device__ __forceinline__ index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }

// Index of the first thread of this launch in a 1-D grid-stride loop, and the stride.
__device__ __forceinline__ index_t global_thread_index() {
    return (index_t)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ index_t grid_stride() { return (index_t)blockDim.x * gridDim.x; }

// A grid-stride loop over i in [0, total): GL_FOR_EACH(i, total) { ... }
#define GL_FOR_EACH(i, total) \
    for (::gl::index_t i = ::gl::global_thread_index(); i < (total); i += ::gl::grid_stride())

// Tensors are viewed as 5-D (N, C, d_, h_, w_) with three spatial axes. channels_last
// (CL = true) stores them as (N, d_, h_, w_, C), channels_first as (N, C, d_, h_, w_).
// offset5: linear index of element (n, c, d, h, w); split5: its inverse.
template <bool CL>
__device__ __forceinline__ index_t offset5(int n, int c, int d, int h, int w, int C, int d_, int h_, int w_) {
    return CL ? ((((index_t)n * d_ + d) * h_ + h) * w_ + w) * C + c
              : ((((index_t)n * C + c) * d_ + d) * h_ + h) * w_ + w;
}

template <bool CL>
__device__ __forceinline__ void split5(index_t i, int C, int d_, int h_, int w_, int& n, int& c, int& d,
                                       int& h, int& w) {
    if (CL) {
        c = (int)(i % C); i /= C;
        w = (int)(i % w_); i /= w_;
        h = (int)(i % h_); i /= h_;
        d = (int)(i % d_); n = (int)(i / d_);
    } else {
        w = (int)(i % w_); i /= w_;
        h = (int)(i % h_); i /= h_;
        d = (int)(i % d_); i /= d_;
        c = (int)(i % C); n = (int)(i / C);
    }
}

// "Is a greater than b" for max pooling: NaN counts as the maximum, and on ties the
// earlier element (b, seen first) stays, so the first maximum in row-major order wins.
template <typename A> __device__ __forceinline__ bool max_replaces(A a, A b) {
    return (a > b) || (is_nan(a) && !is_nan(b));
}

// A (value, index) pair for arg-max reductions. Combining keeps the first maximum
// (smallest index among equal values), NaN counting as the maximum.
template <typename A> struct ArgMax {
    A value;
    index_t index;  // -1: empty
};
template <typename A>
__device__ __forceinline__ ArgMax<A> argmax_combine(ArgMax<A> a, ArgMax<A> b) {
    if (a.index < 0) return b;
    if (b.index < 0) return a;
    if (max_replaces(b.value, a.value)) return b;
    if (max_replaces(a.value, b.value)) return a;
    return (b.index < a.index) ? b : a;  // equal values, or both NaN
}

// Running mean and sum of squared deviations (Welford); n counts elements. Combining two
// states is Chan et al.'s parallel formula, so partial results merge in any fixed order.
template <typename A> struct Welford {
    A n, mean, m2;
};
// Values near the type's limit: a difference x - mean that overflows is taken as a sign that
// the variance does too. The mean is then updated as a convex combination (which cannot
// overflow) and m2 becomes inf; an inf or NaN element makes mean and m2 NaN (as the NumPy
// reference: a channel holding inf or NaN has NaN statistics).
template <typename A> __device__ __forceinline__ bool is_finite(A v) { return v - v == (A)0; }
template <typename A> __device__ __forceinline__ void welford_add(Welford<A>& s, A x) {
    s.n += (A)1;
    const A d = x - s.mean;
    if (is_finite(d)) {
        s.mean += d / s.n;
        s.m2 += d * (x - s.mean);
    } else if (is_finite(x) && is_finite(s.mean)) {
        s.mean = s.mean * ((s.n - (A)1) / s.n) + x / s.n;
        s.m2 = (A)1 / (A)0;
    } else {
        s.mean = s.m2 = (A)0 / (A)0;
    }
}
template <typename A>
__device__ __forceinline__ Welford<A> welford_combine(Welford<A> a, Welford<A> b) {
    if (b.n == (A)0) return a;
    if (a.n == (A)0) return b;
    Welford<A> r;
    r.n = a.n + b.n;
    const A d = b.mean - a.mean;
    const A wb = b.n / r.n;
    if (is_finite(d)) {
        r.mean = a.mean + d * wb;
        r.m2 = a.m2 + b.m2 + d * d * a.n * wb;
    } else if (is_finite(a.mean) && is_finite(b.mean)) {
        r.mean = a.mean * (a.n / r.n) + b.mean * wb;
        r.m2 = (A)1 / (A)0;
    } else {
        r.mean = r.m2 = (A)0 / (A)0;
    }
    return r;
}

struct SumOp {
    template <typename A> __device__ __forceinline__ A operator()(A a, A b) const { return a + b; }
};
struct ArgMaxOp {
    template <typename A>
    __device__ __forceinline__ ArgMax<A> operator()(ArgMax<A> a, ArgMax<A> b) const {
        return argmax_combine(a, b);
    }
};

template <typename A>
__device__ __forceinline__ A shfl_down(A v, int delta) { return __shfl_down_sync(0xffffffffu, v, delta); }
template <typename A>
__device__ __forceinline__ ArgMax<A> shfl_down(ArgMax<A> v, int delta) {
    ArgMax<A> r;
    r.value = __shfl_down_sync(0xffffffffu, v.value, delta);
    r.index = __shfl_down_sync(0xffffffffu, v.index, delta);
    return r;
}

struct WelfordOp {
    template <typename A>
    __device__ __forceinline__ Welford<A> operator()(Welford<A> a, Welford<A> b) const {
        return welford_combine(a, b);
    }
};
template <typename A>
__device__ __forceinline__ Welford<A> shfl_down(Welford<A> v, int delta) {
    Welford<A> r;
    r.n = __shfl_down_sync(0xffffffffu, v.n, delta);
    r.mean = __shfl_down_sync(0xffffffffu, v.mean, delta);
    r.m2 = __shfl_down_sync(0xffffffffu, v.m2, delta);
    return r;
}

// A pair of sums, reduced together; aligned to its size so that a copy is one 8- or
// 16-byte access (two 4-byte accesses to consecutive pairs would conflict in shared memory).
template <typename A> struct __align__(2 * sizeof(A)) Sum2 {
    A a, b;
};
struct Sum2Op {
    template <typename A> __device__ __forceinline__ Sum2<A> operator()(Sum2<A> x, Sum2<A> y) const {
        Sum2<A> r = {x.a + y.a, x.b + y.b};
        return r;
    }
};
template <typename A> __device__ __forceinline__ Sum2<A> shfl_down(Sum2<A> v, int delta) {
    Sum2<A> r;
    r.a = __shfl_down_sync(0xffffffffu, v.a, delta);
    r.b = __shfl_down_sync(0xffffffffu, v.b, delta);
    return r;
}

// Tree reduction over the 32 lanes of a warp; lane 0 ends with the result.
template <typename V, typename Op>
__device__ __forceinline__ V warp_reduce(V v, Op op) {
    for (int delta = 16; delta > 0; delta >>= 1) v = op(v, shfl_down(v, delta));
    return v;
}

// Reduction over a whole block (blockDim.x a multiple of 32, at most 1024): every
// thread passes its value; every thread receives the block's result. `scratch` is
// shared memory for 32 values.
template <typename V, typename Op>
__device__ __forceinline__ V block_reduce(V v, Op op, V* scratch, V identity) {
    const int lane = threadIdx.x & 31;   // lane in [0, 32)
    const int warp = threadIdx.x >> 5;   // warp in [0, blockDim.x / 32)
    v = warp_reduce(v, op);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int num_warps = blockDim.x >> 5;
    v = (threadIdx.x < num_warps) ? scratch[threadIdx.x] : identity;
    if (warp == 0) v = warp_reduce(v, op);
    if (threadIdx.x == 0) scratch[0] = v;
    __syncthreads();
    v = scratch[0];
    __syncthreads();  // scratch may be reused by the caller after this
    return v;
}

// ---------------------------------------------------------------------------------------
// Warp-cooperative reads along one contiguous row (a channels_first row of W elements).
// Kernels that give lane l an element whose neighbours along the row belong to other lanes
// (strided windows, upsampling gathers) read with a stride between lanes: every sector is
// fetched several times over. Instead, the warp loads a span of the row once, coalesced,
// P = 4 / sizeof(T) elements per lane (one 4-byte word: pairs of halves, quads of bytes;
// P = 1 for 4- and 8-byte types), SEGS segments of 32 * P elements, and each lane takes the
// element it needs with warp shuffles. All 32 lanes must call load() and take() together
// (the same number of times). Elements outside [0, W) of the row read as 0.
template <bool C, typename A, typename B> struct Select { typedef A type; };
template <typename A, typename B> struct Select<false, A, B> { typedef B type; };

template <typename T, int SEGS>
struct WarpRow {
    static const int P = sizeof(T) >= 4 ? 1 : 4 / (int)sizeof(T);
    typedef typename Select<(sizeof(T) >= 4), T, unsigned int>::type Word;
    Word word[SEGS];
    int first;  // row column of element 0 of segment 0 (word-aligned for P > 1)
    int nseg;   // segments in use, <= SEGS

    // Loads columns [begin, begin + count) (and a few around them) of `row`, W columns long.
    __device__ __forceinline__ void load(const T* __restrict__ row, int W, int begin, int count) {
        const int lane = threadIdx.x & 31;
        first = begin;
        if (P > 1) first -= (int)(((unsigned long long)(row + begin) / sizeof(T)) % P);  // align down to a word
        nseg = (begin + count - first + 32 * P - 1) / (32 * P);
        for (int j = 0; j < SEGS; ++j) {
            if (j >= nseg) break;  // the same for every lane
            const int c0 = first + (32 * j + lane) * P;  // first column of this lane's word
            if (P == 1) {
                word[j] = (c0 >= 0 && c0 < W) ? reinterpret_cast<const Word*>(row)[c0] : Word(0);
            } else if (c0 >= 0 && c0 + P <= W) {
                word[j] = *reinterpret_cast<const unsigned int*>(row + c0);  // aligned: first is
            } else {  // the row's ends: element by element, only those inside the row
                unsigned int w = 0;
                for (int k = 0; k < P; ++k) {
                    if (c0 + k < 0 || c0 + k >= W) continue;
                    const T v = row[c0 + k];
                    unsigned int bits = 0;
                    *reinterpret_cast<T*>(&bits) = v;  // the low bytes (little-endian, as every CUDA device)
                    w |= bits << (8 * sizeof(T) * k);
                }
                word[j] = w;
            }
        }
    }

    // Writes columns [begin, begin + count) of `out` (a row of W columns), coalesced, P per
    // lane as one 4-byte word where the row allows: value(col) gives each column's value and is
    // called by every lane the same number of times (it may shuffle).
    template <typename F>
    static __device__ __forceinline__ void store(T* __restrict__ out, int W, int begin, int count, F value) {
        const int lane = threadIdx.x & 31;
        const int first = P > 1 ? begin - (int)(((unsigned long long)(out + begin) / sizeof(T)) % P) : begin;
        const int nseg = (begin + count - first + 32 * P - 1) / (32 * P);
        for (int j = 0; j < nseg; ++j) {
            const int c0 = first + (32 * j + lane) * P;
            T v[P];
            for (int k = 0; k < P; ++k) v[k] = value(c0 + k);
            if (P > 1 && c0 >= begin && c0 + P <= begin + count && c0 + P <= W) {
                unsigned int w = 0;
                for (int k = 0; k < P; ++k) {
                    unsigned int bits = 0;
                    *reinterpret_cast<T*>(&bits) = v[k];
                    w |= bits << (8 * sizeof(T) * k);
                }
                *reinterpret_cast<unsigned int*>(out + c0) = w;
            } else {
                for (int k = 0; k < P; ++k)
                    if (c0 + k >= begin && c0 + k < begin + count && c0 + k < W) out[c0 + k] = v[k];
            }
        }
    }

    // Element at row column `col` (in the loaded span) as T; every lane must call it.
    __device__ __forceinline__ T take(int col) const {
        const int rel = col - first;                 // in [0, nseg * 32 * P)
        const int src = (rel / P) & 31, seg = rel / (32 * P);
        Word got = Word(0);
        for (int j = 0; j < SEGS; ++j) {
            if (j >= nseg) break;
            const Word t = __shfl_sync(0xffffffffu, word[j], src);
            if (j == seg) got = t;
        }
        if (P == 1) return *reinterpret_cast<const T*>(&got);
        const unsigned int bits = *reinterpret_cast<const unsigned int*>(&got) >> (8 * sizeof(T) * (rel % P));
        return *reinterpret_cast<const T*>(&bits);
    }
};

// Copies src[0, count) into dst (shared memory) with the whole block, 4 bytes per thread for
// 1- and 2-byte types (consecutive threads read consecutive aligned words: coalesced whatever
// count is). [array_begin, array_end) is the array src points into (4-byte aligned): no word
// outside it is read. Every thread of the block must call it.
template <typename T>
__device__ __forceinline__ void block_load(T* dst, const T* __restrict__ src, int count, const T* array_begin,
                                           const T* array_end) {
    if (sizeof(T) >= 4) {
        for (int k = threadIdx.x; k < count; k += blockDim.x) dst[k] = src[k];
        return;
    }
    const int P = 4 / (int)sizeof(T);
    const int shift = (int)(((unsigned long long)src / sizeof(T)) % P);  // elements of src's word before src
    const T* words = src - shift;
    const int nwords = (shift + count + P - 1) / P;
    for (int j = threadIdx.x; j < nwords; j += blockDim.x) {
        const T* wp = words + j * P;
        if (wp >= array_begin && wp + P <= array_end) {
            const unsigned int w = *reinterpret_cast<const unsigned int*>(wp);
            for (int k = 0; k < P; ++k) {
                const int e = j * P + k - shift;
                const unsigned int bits = w >> (8 * sizeof(T) * k);
                if (e >= 0 && e < count) dst[e] = *reinterpret_cast<const T*>(&bits);
            }
        } else {
            for (int k = 0; k < P; ++k) {
                const int e = j * P + k - shift;
                if (e >= 0 && e < count) dst[e] = src[e];
            }
        }
    }
}

}  // namespace gl
