// analysis_checks.cu -- planted kernels that the simulator's analysis mode must classify
// correctly (tests/test_analysis.py): coalescing, broadcast, bank conflicts, races and
// uninitialised shared memory, each with an obvious expected figure.

// y[i] = x[i]: a warp's 4-byte loads cover 128 contiguous bytes, 4 sectors per request.
extern "C" __global__ void coalesced_copy(const float* x, float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i];
}

// y[i] = x[32 i]: every lane's load falls in its own sector, 32 sectors per request.
extern "C" __global__ void strided_copy(const float* x, float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[32 * i];
}

// y[i] = x[0]: one sector serves the whole warp.
extern "C" __global__ void broadcast_read(const float* x, float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[0];
}

// Reverses a block through shared memory without the barrier: a RAW race.
extern "C" __global__ void reverse_missing_barrier(const float* x, float* y) {
    __shared__ float tile[128];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    tile[threadIdx.x] = x[i];
    y[i] = tile[blockDim.x - 1 - threadIdx.x];
}

// The same with the barrier: no hazard.
extern "C" __global__ void reverse_with_barrier(const float* x, float* y) {
    __shared__ float tile[128];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    tile[threadIdx.x] = x[i];
    __syncthreads();
    y[i] = tile[blockDim.x - 1 - threadIdx.x];
}

// Lanes swap values with their neighbour through shared memory, relying on the warp running
// in lockstep (no __syncwarp): a race on Volta and later GPUs.
extern "C" __global__ void warp_exchange(const float* x, float* y, int sync) {
    __shared__ float buf[32];
    const int lane = threadIdx.x;
    buf[lane] = x[lane];
    if (sync) __syncwarp();
    y[lane] = buf[lane ^ 1];
}

// Each lane reads one column of a 32 x 32 tile: every access falls in bank 0 (32-way
// conflict). With padded rows (stride 33 words) the accesses spread over the 32 banks.
extern "C" __global__ void column_read(const float* x, float* y, int padded) {
    __shared__ float tile[32 * 33];
    const int lane = threadIdx.x;
    const int stride = padded ? 33 : 32;
    for (int r = 0; r < 32; ++r) tile[r * stride + lane] = x[r * 32 + lane];  // rows: conflict-free
    __syncwarp();
    float s = 0.f;
    for (int c = 0; c < 32; ++c) s += tile[lane * stride + c];               // columns
    y[lane] = s;
}

// Every block writes y[0]: a write-write conflict between blocks.
extern "C" __global__ void every_block_writes_one(float* y) {
    if (threadIdx.x == 0) y[0] = (float)blockIdx.x;
}

// Block b reads what block b - 1 writes: a read of bytes another block writes.
extern "C" __global__ void read_neighbour_block(float* y) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    y[i] = 1.f;
    if (blockIdx.x > 0 && threadIdx.x == 0) y[i] += y[i - 1];
}

// Reads shared memory that nothing wrote.
extern "C" __global__ void uninitialized_shared(float* y) {
    __shared__ float scratch[64];
    if (threadIdx.x < 32) scratch[threadIdx.x] = 1.f;
    __syncthreads();
    y[threadIdx.x] = scratch[threadIdx.x];
}

// Lane l runs counts[l] inner iterations in each of 2 outer iterations, reading x[l + 32 j]:
// the j-th inner iteration of the lanes that run it is one request, in each outer iteration.
extern "C" __global__ void ragged_loops(const float* x, const int* counts, float* y) {
    const int lane = threadIdx.x;
    float s = 0.f;
    for (int outer = 0; outer < 2; ++outer)
        for (int j = 0; j < counts[lane]; ++j) s += x[lane + 32 * j];
    y[lane] = s;
}

// Counts with an atomic: no hazard, one atomic request per warp.
extern "C" __global__ void atomic_count(unsigned* counter) {
    atomicAdd(counter, 1u);
}

// 8-byte and 16-byte shared accesses, contiguous across lanes: conflict-free (2 and 4 phases).
extern "C" __global__ void wide_shared(const double* x, double* y) {
    __shared__ double d[64];
    const int lane = threadIdx.x;
    d[lane] = x[lane];
    d[lane + 32] = x[lane + 32];
    __syncwarp();
    y[lane] = d[lane] + d[2 * (lane / 2) + 32];
}
