// batchnorm.cu -- the per-channel reductions of BatchNormalization (statistics of x in
// training; sums of dy and dy * (x - mean) in backward). The element-wise parts
// (normalise, input gradient) are cupy.ElementwiseKernel snippets in
// gpulayers/layers/normalization.py, which also holds the NumPy reference
// (batch_norm_forward, batch_norm_backward) these kernels must match.
//
// x is viewed as (R1, C, R2): C channels (the normalised axes), reduced over R1 and R2.
// channels_last (axis = -1) has R2 = 1; channels_first (axis = 1) has R1 = N, R2 = H*W.
// To use the whole GPU with few channels, the reduced extent is split across blocks
// (blockIdx.y = split in [0, S)); each block writes one partial state per channel, and a
// finalize kernel merges the S partials of a channel in a fixed order: deterministic, no
// atomics. Accumulation is in float for float/__half and in double for double.
//
//   *_rows   (R2 == 1): block of 256 threads = 8 rows x 32 consecutive channels, so a warp
//            reads 32 consecutive channels of one row (coalesced); blockIdx.x picks the
//            group of 32 channels.
//   *_planes (R2 > 1): blockIdx.x = channel; the block's threads read the contiguous R2
//            run of each (r1, c) plane (coalesced) and combine with a block reduction.
#include "common.cuh"

using gl::index_t;

template <typename T> struct StatsAcc {
    typedef typename gl::Acc<T>::type A;
    typedef gl::Welford<A> State;
    __device__ static State zero() { State s = {0, 0, 0}; return s; }
    __device__ static void add(State& s, const T* x, const T*, const A*, index_t i, int) {
        gl::welford_add(s, gl::to_acc(x[i]));
    }
    __device__ static State combine(State a, State b) { return gl::welford_combine(a, b); }
    typedef gl::WelfordOp Op;
    // partial layout: 3 arrays of S*C values (n, mean, m2)
    __device__ static void store(A* p, index_t k, index_t SC, State s) { p[k] = s.n; p[SC + k] = s.mean; p[2 * SC + k] = s.m2; }
    __device__ static State load(const A* p, index_t k, index_t SC) { State s = {p[k], p[SC + k], p[2 * SC + k]}; return s; }
};

template <typename T> struct GradAcc {
    typedef typename gl::Acc<T>::type A;
    typedef gl::Sum2<A> State;  // (sum dy, sum dy * (x - mean))
    __device__ static State zero() { State s = {0, 0}; return s; }
    __device__ static void add(State& s, const T* x, const T* dy, const A* mean, index_t i, int c) {
        const A g = gl::to_acc(dy[i]);
        s.a += g;
        s.b += g * (gl::to_acc(x[i]) - mean[c]);
    }
    __device__ static State combine(State a, State b) { State r = {a.a + b.a, a.b + b.b}; return r; }
    typedef gl::Sum2Op Op;
    __device__ static void store(A* p, index_t k, index_t SC, State s) { p[k] = s.a; p[SC + k] = s.b; }
    __device__ static State load(const A* p, index_t k, index_t SC) { State s = {p[k], p[SC + k]}; return s; }
};

// Partial states for channels_last-like views (R2 == 1): x is (R1, C).
// grid = (ceil(C / 32), S), block = 256. partial[(split, c)] for split in [0, S).
template <typename T, typename Acc>
__global__ void bn_reduce_rows(const T* __restrict__ x, const T* __restrict__ dy,
                               const typename gl::Acc<T>::type* __restrict__ mean,
                               typename gl::Acc<T>::type* __restrict__ partial, index_t R1, int C) {
    typedef typename Acc::State State;
    __shared__ State tile[8][32];
    const int lane = threadIdx.x & 31;      // channel within the group, in [0, 32)
    const int row0 = threadIdx.x >> 5;      // row offset, in [0, 8)
    const int c = blockIdx.x * 32 + lane;   // channel, in [0, C) when valid
    const index_t S = gridDim.y;
    State s = Acc::zero();
    if (c < C)
        for (index_t r = (index_t)blockIdx.y * 8 + row0; r < R1; r += S * 8) Acc::add(s, x, dy, mean, r * C + c, c);
    tile[row0][lane] = s;
    __syncthreads();
    if (row0 == 0 && c < C) {
        for (int k = 1; k < 8; ++k) s = Acc::combine(s, tile[k][lane]);
        Acc::store(partial, (index_t)blockIdx.y * C + c, S * C, s);
    }
}

// Partial states for channels_first-like views (R2 > 1): x is (R1, C, R2).
// grid = (C, S), block = 256 (a multiple of 32). Split blockIdx.y covers the planes
// r1 in [split * R1 / S, (split + 1) * R1 / S) when R1 >= S, else a slice of each plane.
template <typename T, typename Acc>
__global__ void bn_reduce_planes(const T* __restrict__ x, const T* __restrict__ dy,
                                 const typename gl::Acc<T>::type* __restrict__ mean,
                                 typename gl::Acc<T>::type* __restrict__ partial, index_t R1, int C, index_t R2) {
    typedef typename Acc::State State;
    __shared__ State scratch[32];
    const int c = blockIdx.x;
    const index_t S = gridDim.y, split = blockIdx.y;
    // The (r1, r2) elements of channel c, numbered e = r1 * R2 + r2 in [0, R1 * R2), are split
    // into S contiguous ranges.
    const index_t E = R1 * R2;
    const index_t begin = split * E / S, end = (split + 1) * E / S;
    State s = Acc::zero();
    for (index_t e = begin + threadIdx.x; e < end; e += blockDim.x) {
        const index_t r1 = e / R2, r2 = e % R2;
        Acc::add(s, x, dy, mean, (r1 * C + c) * R2 + r2, c);
    }
    s = gl::block_reduce(s, typename Acc::Op(), scratch, Acc::zero());
    if (threadIdx.x == 0) Acc::store(partial, split * C + c, S * C, s);
}

// Statistics: merge the S partial Welford states of each channel in order; write the
// mean, the biased variance and 1 / sqrt(variance + epsilon). One thread per channel.
template <typename T>
__global__ void bn_stats_finalize(const typename gl::Acc<T>::type* __restrict__ partial, int S, int C,
                                  typename gl::Acc<T>::type epsilon, typename gl::Acc<T>::type* __restrict__ mean,
                                  typename gl::Acc<T>::type* __restrict__ var,
                                  typename gl::Acc<T>::type* __restrict__ inv_std) {
    typedef typename gl::Acc<T>::type A;
    const index_t SC = (index_t)S * C;
    for (index_t c = gl::global_thread_index(); c < C; c += gl::grid_stride()) {
        gl::Welford<A> s = StatsAcc<T>::load(partial, c, SC);
        for (int k = 1; k < S; ++k) s = gl::welford_combine(s, StatsAcc<T>::load(partial, (index_t)k * C + c, SC));
        const A v = s.m2 / s.n;
        mean[c] = s.mean;
        var[c] = v;
        inv_std[c] = (A)1 / sqrt(v + epsilon);
    }
}

// Gradient sums: merge the S partial (sum dy, sum dy * (x - mean)) of each channel in order.
// sum_dy is d(loss)/d(beta); sum_dy_xhat = inv_std * sum dy * (x - mean) is d(loss)/d(gamma).
template <typename T>
__global__ void bn_grad_finalize(const typename gl::Acc<T>::type* __restrict__ partial, int S, int C,
                                 const typename gl::Acc<T>::type* __restrict__ inv_std,
                                 typename gl::Acc<T>::type* __restrict__ sum_dy,
                                 typename gl::Acc<T>::type* __restrict__ sum_dy_xhat) {
    typedef typename gl::Acc<T>::type A;
    const index_t SC = (index_t)S * C;
    for (index_t c = gl::global_thread_index(); c < C; c += gl::grid_stride()) {
        gl::Sum2<A> s = GradAcc<T>::load(partial, c, SC);
        for (int k = 1; k < S; ++k) s = GradAcc<T>::combine(s, GradAcc<T>::load(partial, (index_t)k * C + c, SC));
        sum_dy[c] = s.a;
        sum_dy_xhat[c] = s.b * inv_std[c];
    }
}
