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
//   *_rows   (R2 == 1): block of ROWS x 32 threads, a warp reads 32 consecutive channels of
//            one row (coalesced); blockIdx.x picks the group of 32 channels.
//   *_planes (R2 > 1): blockIdx.x = channel; the block's threads read the contiguous R2
//            run of each (r1, c) plane (coalesced) and combine with a block reduction.
// The number of splits S is chosen (in Python) to give the device enough warps for the bytes
// read, and no more, so that the partial states stay small next to the input. Inference
// backward runs GradScaleAcc: the gradient sums and dx = dy * scale in the same pass.
#include "common.cuh"

using gl::index_t;

// What a reduction accumulates per channel. add() folds element i (channel c) into a state;
// store()/load() move a state to and from field arrays p[k], p[stride + k], ... (partial
// results in global memory, and tiles in shared memory: one array per field, so that
// consecutive threads touch consecutive words whatever the state's size).
template <typename T> struct StatsAcc {
    typedef typename gl::Acc<T>::type A;
    typedef gl::Welford<A> State;
    static const int kFields = 3;  // n, mean, m2
    __device__ static State zero() { State s = {0, 0, 0}; return s; }
    __device__ static void add(State& s, const T* x, const T*, const A*, const A*, T*, index_t i, int) {
        gl::welford_add(s, gl::to_acc(x[i]));
    }
    __device__ static State combine(State a, State b) { return gl::welford_combine(a, b); }
    typedef gl::WelfordOp Op;
    __device__ static void store(A* p, index_t k, index_t stride, State s) {
        p[k] = s.n; p[stride + k] = s.mean; p[2 * stride + k] = s.m2;
    }
    __device__ static State load(const A* p, index_t k, index_t stride) {
        State s = {p[k], p[stride + k], p[2 * stride + k]};
        return s;
    }
};

// (sum dy, sum dy * (x - mean)): the gradient statistics.
template <typename T> struct GradAcc {
    typedef typename gl::Acc<T>::type A;
    typedef gl::Sum2<A> State;
    static const int kFields = 2;
    __device__ static State zero() { State s = {0, 0}; return s; }
    __device__ static void add(State& s, const T* x, const T* dy, const A* mean, const A*, T*, index_t i, int c) {
        const A g = gl::to_acc(dy[i]);
        s.a += g;
        s.b += g * (gl::to_acc(x[i]) - mean[c]);
    }
    __device__ static State combine(State a, State b) { State r = {a.a + b.a, a.b + b.b}; return r; }
    typedef gl::Sum2Op Op;
    __device__ static void store(A* p, index_t k, index_t stride, State s) { p[k] = s.a; p[stride + k] = s.b; }
    __device__ static State load(const A* p, index_t k, index_t stride) {
        State s = {p[k], p[stride + k]};
        return s;
    }
};

// Inference backward in one pass: the gradient statistics of GradAcc, and dx = dy * scale[c]
// (scale = gamma / sqrt(moving variance + epsilon)), which does not depend on them.
template <typename T> struct GradScaleAcc : GradAcc<T> {
    typedef typename gl::Acc<T>::type A;
    typedef gl::Sum2<A> State;
    __device__ static void add(State& s, const T* x, const T* dy, const A* mean, const A* scale, T* dx, index_t i,
                               int c) {
        const A g = gl::to_acc(dy[i]);
        s.a += g;
        s.b += g * (gl::to_acc(x[i]) - mean[c]);
        dx[i] = gl::from_acc<T>(g * scale[c]);
    }
};

// Partial states for channels_last-like views (R2 == 1): x is (R1, C).
// grid = (ceil(C / 32), S), block = ROWS x 32 threads: a warp reads 32 consecutive channels
// of one row (coalesced), the ROWS warps take rows r = split * ROWS + warp, + S * ROWS, ...;
// the ROWS states of a channel are merged by a fixed tree in shared memory.
// partial[(split, c)] for split in [0, S).
template <typename T, typename Acc, int ROWS>
__global__ void __launch_bounds__(ROWS * 32)
bn_reduce_rows(const T* __restrict__ x, const T* __restrict__ dy, const typename gl::Acc<T>::type* __restrict__ mean,
               const typename gl::Acc<T>::type* __restrict__ scale, T* __restrict__ dx,
               typename gl::Acc<T>::type* __restrict__ partial, index_t R1, int C) {
    typedef typename Acc::State State;
    typedef typename gl::Acc<T>::type A;
    static_assert((ROWS & (ROWS - 1)) == 0 && ROWS * 32 <= 1024, "ROWS: a power of two, ROWS * 32 threads");
    __shared__ A tile[Acc::kFields * ROWS * 32];
    const int lane = threadIdx.x & 31;      // channel within the group, in [0, 32)
    const int row0 = threadIdx.x >> 5;      // row offset, in [0, ROWS)
    const int c = blockIdx.x * 32 + lane;   // channel, in [0, C) when valid
    const index_t S = gridDim.y;
    State s = Acc::zero();
    if (c < C)
        for (index_t r = (index_t)blockIdx.y * ROWS + row0; r < R1; r += S * ROWS)
            Acc::add(s, x, dy, mean, scale, dx, r * C + c, c);
    Acc::store(tile, threadIdx.x, ROWS * 32, s);
    __syncthreads();
    for (int k = ROWS / 2; k > 0; k >>= 1) {
        if (row0 < k)
            Acc::store(tile, threadIdx.x, ROWS * 32,
                       Acc::combine(Acc::load(tile, threadIdx.x, ROWS * 32), Acc::load(tile, threadIdx.x + k * 32, ROWS * 32)));
        __syncthreads();
    }
    if (row0 == 0 && c < C) Acc::store(partial, (index_t)blockIdx.y * C + c, S * C, Acc::load(tile, lane, ROWS * 32));
}

// Partial states for channels_first-like views (R2 > 1): x is (R1, C, R2).
// grid = (C, S), block = 256 (a multiple of 32). Split blockIdx.y covers a contiguous range
// of the channel's (r1, r2) elements; the block's threads read each contiguous R2 run
// (coalesced) and combine with a block reduction.
template <typename T, typename Acc>
__global__ void bn_reduce_planes(const T* __restrict__ x, const T* __restrict__ dy,
                                 const typename gl::Acc<T>::type* __restrict__ mean,
                                 const typename gl::Acc<T>::type* __restrict__ scale, T* __restrict__ dx,
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
        Acc::add(s, x, dy, mean, scale, dx, (r1 * C + c) * R2 + r2, c);
    }
    s = gl::block_reduce(s, typename Acc::Op(), scratch, Acc::zero());
    if (threadIdx.x == 0) Acc::store(partial, split * C + c, S * C, s);
}

// Merges the S partial states of each channel: block = FINALIZE_ROWS rows x FINALIZE_CHANNELS
// channels (1024 threads), grid = ceil(C / FINALIZE_CHANNELS). Thread (row, ch) folds splits
// row, row + FINALIZE_ROWS, ... of channel blockIdx.x * FINALIZE_CHANNELS + ch in order (a
// warp reads 4 rows of 8 consecutive channels: coalesced), then a fixed tree in shared memory
// merges the rows: deterministic. Narrow channel groups give the merge enough warps for the
// partial bytes. Returns the merged state to the threads of row 0.
constexpr int FINALIZE_CHANNELS = 8, FINALIZE_ROWS = 128, FINALIZE_THREADS = FINALIZE_CHANNELS * FINALIZE_ROWS;

template <typename Acc>
__device__ __forceinline__ typename Acc::State merge_partials(const typename Acc::A* __restrict__ partial, int S,
                                                              int C, typename Acc::A* tile) {
    typedef typename Acc::State State;
    const int ch = threadIdx.x % FINALIZE_CHANNELS, row = threadIdx.x / FINALIZE_CHANNELS;
    const int c = blockIdx.x * FINALIZE_CHANNELS + ch;
    const index_t SC = (index_t)S * C;
    State s = Acc::zero();
    if (c < C)
        for (int k = row; k < S; k += FINALIZE_ROWS) s = Acc::combine(s, Acc::load(partial, (index_t)k * C + c, SC));
    Acc::store(tile, threadIdx.x, FINALIZE_THREADS, s);
    __syncthreads();
    for (int k = FINALIZE_ROWS / 2; k > 0; k >>= 1) {
        if (row < k)
            Acc::store(tile, threadIdx.x, FINALIZE_THREADS,
                       Acc::combine(Acc::load(tile, threadIdx.x, FINALIZE_THREADS),
                                    Acc::load(tile, threadIdx.x + k * FINALIZE_CHANNELS, FINALIZE_THREADS)));
        __syncthreads();
    }
    return Acc::load(tile, ch, FINALIZE_THREADS);
}

// Statistics: the mean, the biased variance and 1 / sqrt(variance + epsilon) of each channel.
// block = FINALIZE_THREADS, grid = ceil(C / FINALIZE_CHANNELS).
template <typename T>
__global__ void __launch_bounds__(FINALIZE_THREADS)
bn_stats_finalize(const typename gl::Acc<T>::type* __restrict__ partial, int S, int C,
                  typename gl::Acc<T>::type epsilon, typename gl::Acc<T>::type* __restrict__ mean,
                  typename gl::Acc<T>::type* __restrict__ var, typename gl::Acc<T>::type* __restrict__ inv_std) {
    typedef typename gl::Acc<T>::type A;
    __shared__ A tile[StatsAcc<T>::kFields * FINALIZE_THREADS];
    const gl::Welford<A> s = merge_partials<StatsAcc<T>>(partial, S, C, tile);
    const int c = blockIdx.x * FINALIZE_CHANNELS + threadIdx.x % FINALIZE_CHANNELS;
    if (threadIdx.x < FINALIZE_CHANNELS && c < C) {
        const A v = s.m2 / s.n;
        mean[c] = s.mean;
        var[c] = v;
        inv_std[c] = (A)1 / sqrt(v + epsilon);
    }
}

// Gradient sums: sum_dy is d(loss)/d(beta); sum_dy_xhat = inv_std * sum dy * (x - mean) is
// d(loss)/d(gamma). block = FINALIZE_THREADS, grid = ceil(C / FINALIZE_CHANNELS).
template <typename T>
__global__ void __launch_bounds__(FINALIZE_THREADS)
bn_grad_finalize(const typename gl::Acc<T>::type* __restrict__ partial, int S, int C,
                 const typename gl::Acc<T>::type* __restrict__ inv_std, typename gl::Acc<T>::type* __restrict__ sum_dy,
                 typename gl::Acc<T>::type* __restrict__ sum_dy_xhat) {
    typedef typename gl::Acc<T>::type A;
    __shared__ A tile[GradAcc<T>::kFields * FINALIZE_THREADS];
    const gl::Sum2<A> s = merge_partials<GradAcc<T>>(partial, S, C, tile);
    const int c = blockIdx.x * FINALIZE_CHANNELS + threadIdx.x % FINALIZE_CHANNELS;
    if (threadIdx.x < FINALIZE_CHANNELS && c < C) {
        sum_dy[c] = s.a;
        sum_dy_xhat[c] = s.b * inv_std[c];
    }
}
