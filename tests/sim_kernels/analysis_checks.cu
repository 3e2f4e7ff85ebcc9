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

// ---- more hazards and schedules (tests/test_analysis.py)

// A scratch tile reused without a trailing barrier: the second round's write races with the
// first round's reads by other warps (WAR); two warps writing one word without order (WAW).
extern "C" __global__ void reuse_without_barrier(const float* x, float* y) {
    __shared__ float tile[64];
    tile[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    const float a = tile[63 - threadIdx.x];
    tile[threadIdx.x] = a * 2.f;  // no __syncthreads() before overwriting what others still read
    __syncthreads();
    y[threadIdx.x] = tile[threadIdx.x];
}

extern "C" __global__ void two_warps_write_one_word(float* y) {
    __shared__ float word;
    if (threadIdx.x % 32 == 0) word = (float)threadIdx.x;  // lanes 0 of warps 0 and 1
    __syncthreads();
    y[threadIdx.x] = word;
}

// In place: x[i] = x[i + 1] reads what the next thread (or block) overwrites (WAR).
extern "C" __global__ void shift_in_place(float* x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i + 1 < n) x[i] = x[i + 1];
}

// Lane writes global memory, __syncwarp, its neighbour reads it: ordered, no hazard.
extern "C" __global__ void global_exchange_syncwarp(float* y) {
    y[threadIdx.x] = (float)threadIdx.x;
    __syncwarp();
    const float v = y[threadIdx.x ^ 1];
    __syncwarp();
    y[32 + threadIdx.x] = v;
}

// __syncwarp with two disjoint masks: lane 0 writes, syncs with lanes 0-15; lane 16 syncs with
// lanes 16-31 and reads what lane 0 wrote: unordered (RAW).
extern "C" __global__ void disjoint_syncwarp(float* y) {
    __shared__ float buf[32];
    const int lane = threadIdx.x;
    buf[lane] = (float)lane;
    __syncwarp(lane < 16 ? 0x0000ffffu : 0xffff0000u);
    y[lane] = buf[lane ^ 16];
}

// A shuffle is not a memory fence: lane 1 reads what lane 0 wrote, ordered only by a shuffle.
extern "C" __global__ void shuffle_is_not_a_fence(float* y) {
    __shared__ float buf[32];
    const int lane = threadIdx.x;
    buf[lane] = (float)lane;
    const float t = __shfl_sync(0xffffffffu, (float)lane, 0);
    y[lane] = buf[lane ^ 1] + t;
}

// A plain write races with another thread's atomic when nothing orders them.
extern "C" __global__ void init_then_atomic(unsigned* out) {
    __shared__ unsigned count;
    if (threadIdx.x == 0) count = 0;  // missing __syncthreads() before the atomics
    atomicAdd(&count, 1u);
    __syncthreads();
    if (threadIdx.x == 0) out[0] = count;
}

// All 32 lanes add to one shared word: served one lane at a time.
extern "C" __global__ void shared_atomic_one_word(unsigned* out) {
    __shared__ unsigned count;
    if (threadIdx.x == 0) count = 0;
    __syncthreads();
    atomicAdd(&count, 1u);
    __syncthreads();
    if (threadIdx.x == 0) out[0] = count;
}

// Writes its dynamic shared memory up to `upto` floats (the launch may give fewer bytes).
extern "C" __global__ void dynamic_fill(float* y, int upto) {
    extern __shared__ float dyn[];
    if ((int)threadIdx.x < upto) dyn[threadIdx.x] = 1.f;
    __syncthreads();
    if ((int)threadIdx.x < upto) y[threadIdx.x] = dyn[threadIdx.x];
}

// Reads one element past the end of x.
extern "C" __global__ void read_one_past(const float* x, float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i + 1];
}

// A load every iteration, a store only on odd lanes: lanes that skip the store wait for the
// others at the join (the warp reconverges), so each iteration's load is one full request.
extern "C" __global__ void branch_in_loop(const float* x, float* y) {
    const int lane = threadIdx.x;
    float sum = 0.f;
    for (int k = 0; k < 4; ++k) {
        sum += x[32 * k + lane];  // every lane, every iteration
        if (lane & 1) y[32 * k + lane] = sum;
    }
}

// Like ragged_loops, but every outer iteration reads its own rows: merging the iterations of
// different lanes would change the sectors.
extern "C" __global__ void ragged_loops_offset(const float* x, const int* counts, float* y) {
    const int lane = threadIdx.x;
    float s = 0.f;
    for (int outer = 0; outer < 2; ++outer)
        for (int j = 0; j < counts[lane]; ++j) s += x[128 * outer + lane + 32 * j];
    y[lane] = s;
}

// Writes y, then reads it back: the reads are served by the (perfect) L2, not DRAM.
extern "C" __global__ void write_then_read(float* y, float* z) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    y[i] = (float)i;
    __syncthreads();
    z[i] = y[i];
}

// 16-byte shared accesses (float4), contiguous across lanes: 4 phases of 8 lanes, conflict-free.
extern "C" __global__ void float4_shared(const float* x, float* y) {
    __shared__ __align__(16) float4 v[32];
    const int lane = threadIdx.x;
    v[lane] = reinterpret_cast<const float4*>(x)[lane];
    __syncwarp();
    reinterpret_cast<float4*>(y)[lane] = v[31 - lane];
}
