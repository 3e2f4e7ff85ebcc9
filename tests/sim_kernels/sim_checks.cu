// sim_checks.cu -- small purpose-written kernels that exercise the CPU kernel simulator's
// CUDA semantics (tests/test_simulator.py). Each has an obvious NumPy equivalent.
#include <cuda_fp16.h>

// Reverses each block's slice of x through static shared memory: needs the barrier.
extern "C" __global__ void block_reverse(const float* x, float* y, int n) {
    __shared__ float tile[256];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    tile[threadIdx.x] = i < n ? x[i] : 0.f;
    __syncthreads();
    if (i < n) y[i] = tile[blockDim.x - 1 - threadIdx.x];
}

// Same without the barrier: the simulator must expose the race (wrong result).
extern "C" __global__ void block_reverse_no_barrier(const float* x, float* y, int n) {
    __shared__ float tile[256];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    tile[threadIdx.x] = i < n ? x[i] : 0.f;
    if (i < n) y[i] = tile[blockDim.x - 1 - threadIdx.x];
}

// out[w] = sum of the 32 values of warp w, by __shfl_down_sync; plus every lane gets the
// warp total through __shfl_xor_sync (butterfly) and the value of lane 5 through __shfl_sync.
extern "C" __global__ void warp_sums(const float* x, float* down, float* butterfly, float* lane5) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = x[i];
    float s = v;
    for (int d = 16; d > 0; d >>= 1) s += __shfl_down_sync(0xffffffffu, s, d);
    if ((threadIdx.x & 31) == 0) down[i / 32] = s;
    float b = v;
    for (int m = 1; m < 32; m <<= 1) b += __shfl_xor_sync(0xffffffffu, b, m);
    butterfly[i] = b;
    lane5[i] = __shfl_sync(0xffffffffu, v, 5);
}

// ballot/any/all over a predicate (x > 0) per warp; __shfl_up_sync inclusive prefix sum.
extern "C" __global__ void warp_votes(const float* x, unsigned* ballot, int* any, int* all, float* prefix) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int pred = x[i] > 0.f;
    const unsigned b = __ballot_sync(0xffffffffu, pred);
    const int a = __any_sync(0xffffffffu, pred);
    const int l = __all_sync(0xffffffffu, pred);
    if ((threadIdx.x & 31) == 0) { ballot[i / 32] = b; any[i / 32] = a; all[i / 32] = l; }
    float s = x[i];
    for (int d = 1; d < 32; d <<= 1) {
        const float up = __shfl_up_sync(0xffffffffu, s, d);
        if ((threadIdx.x & 31) >= d) s += up;
    }
    prefix[i] = s;
    __syncwarp();
}

// Shared-memory tree reduction: out[block] = sum of the block's slice (blockDim a power of 2).
extern "C" __global__ void tree_sum(const double* x, double* out, int n) {
    __shared__ double buf[512];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    buf[threadIdx.x] = i < n ? x[i] : 0.0;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = buf[0];
}

// Histogram of integer bins with atomics (grid-stride loop over n values).
extern "C" __global__ void histogram(const int* bins, unsigned* counts, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        atomicAdd(&counts[bins[i]], 1u);
}

// Dynamic shared memory: rotate each block's slice left by one.
extern "C" __global__ void rotate_dynamic(const float* x, float* y) {
    extern __shared__ float dyn[];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    dyn[threadIdx.x] = x[i];
    __syncthreads();
    y[i] = dyn[(threadIdx.x + 1) % blockDim.x];
}

// A templated kernel, instantiated per dtype: y = a * x + y, with 3-D blocks and grids.
template <typename T>
__global__ void axpy3d(T a, const T* x, T* y, int nx, int ny, int nz) {
    const int ix = blockIdx.x * blockDim.x + threadIdx.x;
    const int iy = blockIdx.y * blockDim.y + threadIdx.y;
    const int iz = blockIdx.z * blockDim.z + threadIdx.z;
    if (ix < nx && iy < ny && iz < nz) {
        const long long k = ((long long)iz * ny + iy) * nx + ix;
        y[k] = a * x[k] + y[k];
    }
}

// Half arithmetic: y = x * x + 1 in half precision.
extern "C" __global__ void half_square(const __half* x, __half* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __hadd(__hmul(x[i], x[i]), __float2half(1.0f));
}

// Planted bugs: writes one element past the end; writes one element before the start;
// a barrier only half the block reaches; a barrier reached a different number of times.
extern "C" __global__ void write_past_end(float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[i] = 1.f;
}
extern "C" __global__ void write_before_start(float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i - 1] = 1.f;
}
extern "C" __global__ void divergent_barrier(float* y) {
    if (threadIdx.x < 16) __syncthreads();
    y[threadIdx.x] = 1.f;
}
extern "C" __global__ void uneven_barriers(float* y) {
    for (int k = 0; k <= (int)(threadIdx.x % 2); ++k) __syncthreads();
    y[threadIdx.x] = 1.f;
}

// Planted out-of-bounds reads: one element before the start, one past the end.
extern "C" __global__ void read_before_start(const float* x, float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i - 1];
}
extern "C" __global__ void read_past_end(const float* x, float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i + 1];
}
