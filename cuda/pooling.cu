// pooling.cu -- max and average pooling (1-D, 2-D and 3-D) and global pooling.
//
// Must match the NumPy reference in gpulayers/layers/pooling.py (max_pool_forward,
// max_pool_backward, avg_pool_forward, avg_pool_backward, global_pool_forward,
// global_pool_backward).
//
// Every input is viewed as 5-D with three spatial axes (1-D and 2-D pooling use size-1
// leading spatial axes): channels_last (CL = true) is (N, D, H, W, C), channels_first
// (CL = false) is (N, C, D, H, W). Consecutive threads take consecutive elements of the
// tensor they write, so for CL the channel index is fastest and for channels_first the
// W index is fastest: loads and stores are coalesced in both layouts.
//
// Windowed pooling: forward is one thread per output element; backward is a gather, one
// thread per input element that sums the gradient of every window covering it. Each
// input gradient is written exactly once: deterministic, no atomics, no zero-fill pass.
// channels_first with a column stride (forward) and channels_first backward run warp-per-row
// kernels instead (pool_forward_rows, pool_backward_rows): a thread per element would read
// with a stride between lanes. Rows of at most 32 outputs (1-D and 2-D pooling) are handled 8
// per block through shared memory (loaded and stored as contiguous runs), since requests for
// one short row straddle sector boundaries. Every pooling kernel meets the simulator model's
// targets (python -m gpulayers profile --sim).
// Max pooling records the window offset of the first maximum (row-major, NaN counts as
// the maximum) in one byte per output when the window has at most 256 cells; otherwise
// backward recomputes it from x.
//
// Global pooling: channels_first reduces each contiguous (n, c) row with one block
// (block reduction); channels_last gives a block of up to 1024 threads to each (n, group of
// 32 channels), rows spread over its warps (consecutive threads read consecutive channels).
// Global max pooling saves the int32 position of each row's first maximum, so backward only
// writes dx (no second pass over x).
#include "common.cuh"

using gl::index_t;
using gl::offset5;
using gl::split5;

struct PoolGeom {
    int N, C, D, H, W;        // input
    int OD, OH, OW;           // output
    int KD, KH, KW;           // window
    int SD, SH, SW;           // strides
    int PD, PH, PW;           // padding before
};

#define POOL_GEOM_PARAMS                                                              \
    int N, int C, int D, int H, int W, int OD, int OH, int OW, int KD, int KH, int KW, \
        int SD, int SH, int SW, int PD, int PH, int PW
#define POOL_GEOM_ARGS {N, C, D, H, W, OD, OH, OW, KD, KH, KW, SD, SH, SW, PD, PH, PW}

// Window offset (row-major inside the window) of the first maximum of output
// (n, c, od, oh, ow); the window always holds at least one real cell.
template <typename T, bool CL>
__device__ __forceinline__ int window_argmax(const T* __restrict__ x, const PoolGeom& g, int n,
                                             int c, int od, int oh, int ow,
                                             gl::acc_t<T>& best) {
    int best_off = -1;
    const int d0 = od * g.SD - g.PD, h0 = oh * g.SH - g.PH, w0 = ow * g.SW - g.PW;
    for (int kd = 0; kd < g.KD; ++kd) {
        const int d = d0 + kd;
        if (d < 0 || d >= g.D) continue;
        for (int kh = 0; kh < g.KH; ++kh) {
            const int h = h0 + kh;
            if (h < 0 || h >= g.H) continue;
            for (int kw = 0; kw < g.KW; ++kw) {
                const int w = w0 + kw;
                if (w < 0 || w >= g.W) continue;
                const gl::acc_t<T> v =
                    gl::to_acc(x[offset5<CL>(n, c, d, h, w, g.C, g.D, g.H, g.W)]);
                if (best_off < 0 || gl::max_replaces(v, best)) {
                    best = v;
                    best_off = (kd * g.KH + kh) * g.KW + kw;
                }
            }
        }
    }
    return best_off;
}

// Number of real (unpadded) input cells in the window of output (od, oh, ow).
__device__ __forceinline__ int window_count(const PoolGeom& g, int od, int oh, int ow) {
    const int d0 = od * g.SD - g.PD, h0 = oh * g.SH - g.PH, w0 = ow * g.SW - g.PW;
    const int nd = min(d0 + g.KD, g.D) - max(d0, 0);
    const int nh = min(h0 + g.KH, g.H) - max(h0, 0);
    const int nw = min(w0 + g.KW, g.W) - max(w0, 0);
    return nd * nh * nw;
}

// Range [lo, hi] of outputs along one axis whose window covers input position i.
__device__ __forceinline__ void covering(int i, int pad, int k, int s, int out, int& lo, int& hi) {
    const int first = i + pad - k + 1;  // smallest window start that still covers i
    lo = first <= 0 ? 0 : (first + s - 1) / s;
    hi = min((i + pad) / s, out - 1);
}

// Coordinates of input element i and the ranges of outputs whose windows cover it.
struct Covering {
    int n, c, d, h, w;
    int dlo, dhi, hlo, hhi, wlo, whi;
};
template <bool CL>
__device__ __forceinline__ Covering covering_outputs(index_t i, const PoolGeom& g) {
    Covering v;
    split5<CL>(i, g.C, g.D, g.H, g.W, v.n, v.c, v.d, v.h, v.w);
    covering(v.d, g.PD, g.KD, g.SD, g.OD, v.dlo, v.dhi);
    covering(v.h, g.PH, g.KH, g.SH, g.OH, v.hlo, v.hhi);
    covering(v.w, g.PW, g.KW, g.SW, g.OW, v.wlo, v.whi);
    return v;
}

// y[o] = max of window o; argmax[o] = its window offset when save_argmax != 0.
// One thread per output element, o in [0, N*C*OD*OH*OW).
template <typename T, bool CL>
__global__ void max_pool_forward(const T* __restrict__ x, T* __restrict__ y,
                                 unsigned char* __restrict__ argmax, int save_argmax,
                                 POOL_GEOM_PARAMS) {
    const PoolGeom g = POOL_GEOM_ARGS;
    const index_t total = (index_t)g.N * g.C * g.OD * g.OH * g.OW;
    GL_FOR_EACH(o, total) {
        int n, c, od, oh, ow;
        split5<CL>(o, g.C, g.OD, g.OH, g.OW, n, c, od, oh, ow);
        gl::acc_t<T> best = 0;
        const int off = window_argmax<T, CL>(x, g, n, c, od, oh, ow, best);
        y[o] = gl::from_acc<T>(best);
        if (save_argmax) argmax[o] = (unsigned char)off;
    }
}

// channels_first forward with a column stride SW > 1. The direct kernels above give
// consecutive lanes consecutive outputs, so their loads are SW elements apart: each sector is
// fetched SW times over. Here one warp takes 32 consecutive outputs of one output row
// (n, c, od, oh), lane = output column (lanes past the row's end only help load). For each
// input row its windows touch, the warp loads the columns [w_first, w_first + 32 * nseg) as
// nseg coalesced 32-element segments, and each lane takes its window's cells from them with
// warp shuffles. Same cells in the same order as the direct kernels: identical results.
// Needs 31 * SW + KW <= 32 * kMaxSegments (Python checks; otherwise it launches the direct one).
constexpr int kMaxSegments = 4;

// One warp's share of pool_forward_rows: the result of output (n, c, od, oh, chunk * 32 + lane)
// (value and window offset of the first maximum), every lane taking part in the shuffles.
template <typename T, bool IS_MAX>
__device__ __forceinline__ gl::acc_t<T> pool_row_chunk(const T* __restrict__ x, const PoolGeom& g, int n,
                                                                   int c, int od, int oh, int chunk, int& best_off) {
    typedef gl::acc_t<T> A;
    const int lane = threadIdx.x & 31;
    const int nseg = (31 * g.SW + g.KW + 31) / 32;  // segments of 32 input columns, <= kMaxSegments
    const int w_first = chunk * 32 * g.SW - g.PW;   // input column of segment 0, lane 0
    const int d0 = od * g.SD - g.PD, h0 = oh * g.SH - g.PH;
    A acc = 0;
    best_off = -1;
    for (int kd = 0; kd < g.KD; ++kd) {
        const int d = d0 + kd;
        if (d < 0 || d >= g.D) continue;
        for (int kh = 0; kh < g.KH; ++kh) {
            const int h = h0 + kh;
            if (h < 0 || h >= g.H) continue;
            const T* __restrict__ row = x + offset5<false>(n, c, d, h, 0, g.C, g.D, g.H, g.W);
            A seg[kMaxSegments];
            for (int j = 0; j < kMaxSegments; ++j) {
                const int w = w_first + 32 * j + lane;
                seg[j] = (j < nseg && w >= 0 && w < g.W) ? gl::to_acc(row[w]) : (A)0;
            }
            for (int kw = 0; kw < g.KW; ++kw) {
                const int rel = lane * g.SW + kw;  // column relative to w_first, in [0, 32 * nseg)
                A v = 0;
                for (int j = 0; j < kMaxSegments; ++j) {
                    if (j >= nseg) break;  // nseg is the same for every lane
                    const A t = __shfl_sync(0xffffffffu, seg[j], rel & 31);
                    if ((rel >> 5) == j) v = t;
                }
                const int w = w_first + rel;
                if (w < 0 || w >= g.W) continue;  // a padding cell
                if (IS_MAX) {
                    if (best_off < 0 || gl::max_replaces(v, acc)) {
                        acc = v;
                        best_off = (kd * g.KH + kh) * g.KW + kw;
                    }
                } else {
                    acc += v;
                }
            }
        }
    }
    return acc;
}

// Rows of up to 32 outputs fill a warp only partly, and a store of one such row straddles
// sectors: the block's 8 warps take 8 consecutive output rows (contiguous in y), stage their
// results in shared memory, and the block stores them as one contiguous run.
constexpr int kRowsBlock = 256;
constexpr int kStagedInput = 2048;  // input elements pool_forward_rows may stage per block

template <typename T, bool IS_MAX>
__global__ void __launch_bounds__(kRowsBlock)
pool_forward_rows(const T* __restrict__ x, T* __restrict__ y, unsigned char* __restrict__ argmax,
                  int save_argmax, POOL_GEOM_PARAMS) {
    typedef gl::acc_t<T> A;
    const PoolGeom g = POOL_GEOM_ARGS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps_per_block = kRowsBlock / 32;
    const int chunks = (g.OW + 31) / 32;
    const index_t rows = (index_t)g.N * g.C * g.OD * g.OH;  // output rows (n, c, od, oh), in y's order
    if (chunks == 1) {
        __shared__ T staged[kRowsBlock];
        __shared__ unsigned char staged_off[kRowsBlock];
        // 1-D and 2-D pooling whose input rows fit: the tile's input rows (one contiguous run of
        // x, consecutive planes being adjacent) are loaded once into shared memory, coalesced.
        __shared__ T staged_x[kStagedInput];
        const bool stage_x = g.D == 1 && ((warps_per_block + 1) * g.SH + g.KH + 2) * g.W <= kStagedInput;
        const index_t tiles = (rows + warps_per_block - 1) / warps_per_block;
        for (index_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
            const index_t row = tile * warps_per_block + warp;
            index_t first_in = 0;
            if (stage_x) {  // the same for the whole block
                const index_t r0 = tile * warps_per_block, r1 = min(r0 + warps_per_block, rows) - 1;
                first_in = (r0 / g.OH) * g.H + max((int)(r0 % g.OH) * g.SH - g.PH, 0);
                const index_t last_in = (r1 / g.OH) * g.H + min((int)(r1 % g.OH) * g.SH - g.PH + g.KH - 1, g.H - 1);
                const index_t total = (index_t)g.N * g.C * g.H * g.W;
                gl::block_load(staged_x, x + first_in * g.W, (int)max(last_in - first_in + 1, (index_t)0) * g.W, x,
                               x + total);
                __syncthreads();
            }
            if (row < rows) {  // the same for the warp's lanes
                index_t q = row;
                const int oh = (int)(q % g.OH); q /= g.OH;
                const int od = (int)(q % g.OD); q /= g.OD;
                const int c = (int)(q % g.C);
                const int n = (int)(q / g.C);
                int off = -1;
                A v = 0;
                if (stage_x) {  // same cells in the same order as pool_row_chunk, read from shared memory
                    const index_t plane = row / g.OH;
                    const int h0 = oh * g.SH - g.PH, w0 = lane * g.SW - g.PW;
                    for (int kh = 0; kh < g.KH; ++kh) {
                        const int h = h0 + kh;
                        if (h < 0 || h >= g.H) continue;
                        const int base = (int)(plane * g.H + h - first_in) * g.W;
                        for (int kw = 0; kw < g.KW; ++kw) {
                            const int w = w0 + kw;
                            if (lane >= g.OW || w < 0 || w >= g.W) continue;
                            const A cell = gl::to_acc(staged_x[base + w]);
                            if (IS_MAX) {
                                if (off < 0 || gl::max_replaces(cell, v)) { v = cell; off = kh * g.KW + kw; }
                            } else {
                                v += cell;
                            }
                        }
                    }
                } else {
                    v = pool_row_chunk<T, IS_MAX>(x, g, n, c, od, oh, 0, off);
                }
                if (lane < g.OW) {
                    staged[warp * g.OW + lane] = gl::from_acc<T>(IS_MAX ? v : v / window_count(g, od, oh, lane));
                    staged_off[warp * g.OW + lane] = (unsigned char)off;
                }
            }
            __syncthreads();
            const index_t first = tile * warps_per_block * g.OW;  // flat index of the tile's first output
            const int count = (int)(min(rows - tile * warps_per_block, (index_t)warps_per_block) * g.OW);
            for (int k = threadIdx.x; k < count; k += kRowsBlock) {
                y[first + k] = staged[k];
                if (IS_MAX && save_argmax) argmax[first + k] = staged_off[k];
            }
            __syncthreads();
        }
        return;
    }
    const index_t warps = rows * chunks;
    for (index_t wi = gl::global_thread_index() / 32; wi < warps; wi += gl::grid_stride() / 32) {
        index_t q = wi;  // warp -> (n, c, od, oh, chunk); the same for all its lanes
        const int chunk = (int)(q % chunks); q /= chunks;
        const int oh = (int)(q % g.OH); q /= g.OH;
        const int od = (int)(q % g.OD); q /= g.OD;
        const int c = (int)(q % g.C);
        const int n = (int)(q / g.C);
        const int ow = chunk * 32 + lane;
        int off;
        const A v = pool_row_chunk<T, IS_MAX>(x, g, n, c, od, oh, chunk, off);
        if (ow < g.OW) {
            const index_t o = offset5<false>(n, c, od, oh, ow, g.C, g.OD, g.OH, g.OW);
            if (IS_MAX) {
                y[o] = gl::from_acc<T>(v);
                if (save_argmax) argmax[o] = (unsigned char)off;
            } else {
                y[o] = gl::from_acc<T>(v / window_count(g, od, oh, ow));
            }
        }
    }
}

// dx[i] = sum of dy[o] over the windows o whose first maximum is input i.
// One thread per input element, i in [0, N*C*D*H*W). With save_argmax == 0 the window
// offsets are recomputed from x (windows of more than 256 cells).
template <typename T, bool CL>
__global__ void max_pool_backward(const T* __restrict__ x, const unsigned char* __restrict__ argmax,
                                  int save_argmax, const T* __restrict__ dy, T* __restrict__ dx,
                                  POOL_GEOM_PARAMS) {
    const PoolGeom g = POOL_GEOM_ARGS;
    const index_t total = (index_t)g.N * g.C * g.D * g.H * g.W;
    GL_FOR_EACH(i, total) {
        const Covering v = covering_outputs<CL>(i, g);
        gl::acc_t<T> acc = 0;
        for (int od = v.dlo; od <= v.dhi; ++od) {
            for (int oh = v.hlo; oh <= v.hhi; ++oh) {
                for (int ow = v.wlo; ow <= v.whi; ++ow) {
                    const int mine = ((v.d - (od * g.SD - g.PD)) * g.KH + (v.h - (oh * g.SH - g.PH))) * g.KW +
                                     (v.w - (ow * g.SW - g.PW));
                    const index_t o = offset5<CL>(v.n, v.c, od, oh, ow, g.C, g.OD, g.OH, g.OW);
                    int winner;
                    if (save_argmax) {
                        winner = argmax[o];
                    } else {
                        gl::acc_t<T> best = 0;
                        winner = window_argmax<T, CL>(x, g, v.n, v.c, od, oh, ow, best);
                    }
                    // Read dy whether or not this window's maximum is ours: every lane of the warp
                    // loads, so the request is coalesced (the bytes are fetched either way).
                    const gl::acc_t<T> g = gl::to_acc(dy[o]);
                    acc += (winner == mine) ? g : (gl::acc_t<T>)0;
                }
            }
        }
        dx[i] = gl::from_acc<T>(acc);
    }
}

// channels_first backward (a gather, like the kernels above), a warp per 32 consecutive input
// columns w of one input row (n, c, d, h): for each output row (od, oh) covering it, the warp
// loads the dy columns (and one-byte window offsets) its lanes need as coalesced segments
// (gl::WarpRow: 4 bytes per lane), and each lane takes its covering outputs by shuffles.
// Same outputs in the same order as the direct kernels: identical results. Python launches it
// when the warp's columns fit in kRowSegments segments (and max pooling kept its offsets).
constexpr int kRowSegments = 4;

// Rows of at most 32 columns (1-D and 2-D pooling): a block takes 8 consecutive input rows
// (a warp each), which read a contiguous run of dy rows (consecutive planes are adjacent):
// the block loads that run (and the window offsets) into shared memory as one coalesced run,
// the warps gather from it, and the block stores its 8 rows of dx as one contiguous run.
// Short rows would otherwise make every request straddle sector boundaries.
constexpr int kStageRows = 32;  // dy rows a block may stage (the caller checks the geometry)

template <typename T, bool IS_MAX>
__device__ __forceinline__ void pool_backward_staged(const T* __restrict__ dy, const unsigned char* __restrict__ argmax,
                                                     T* __restrict__ dx, const PoolGeom& g) {
    typedef gl::acc_t<T> A;
    __shared__ T staged_dy[kStageRows * 32];
    __shared__ unsigned char staged_off[kStageRows * 32];
    __shared__ T staged_dx[kRowsBlock];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps_per_block = kRowsBlock / 32;
    const index_t rows = (index_t)g.N * g.C * g.H;  // input rows (plane, h); D == 1
    const index_t tiles = (rows + warps_per_block - 1) / warps_per_block;
    for (index_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const index_t r0 = tile * warps_per_block;
        const index_t r1 = min(r0 + warps_per_block, rows) - 1;  // the tile's last row
        int lo, hi, unused;
        covering((int)(r0 % g.H), g.PH, g.KH, g.SH, g.OH, lo, unused);
        covering((int)(r1 % g.H), g.PH, g.KH, g.SH, g.OH, unused, hi);
        const index_t first = (r0 / g.H) * g.OH + lo;  // flat dy row index (plane * OH + oh)
        const index_t last = (r1 / g.H) * g.OH + hi;
        const int count = last >= first ? (int)(last - first + 1) * g.OW : 0;
        const index_t total = (index_t)g.N * g.C * g.OH * g.OW;  // dy's (and argmax's) elements
        gl::block_load(staged_dy, dy + first * g.OW, count, dy, dy + total);
        if (IS_MAX) gl::block_load(staged_off, argmax + first * g.OW, count, argmax, argmax + total);
        __syncthreads();
        const index_t r = r0 + warp;
        if (r < rows) {  // the same for the warp's lanes
            const index_t plane = r / g.H;
            const int h = (int)(r % g.H), w = lane;
            int hlo, hhi, wlo, whi;
            covering(h, g.PH, g.KH, g.SH, g.OH, hlo, hhi);
            covering(w, g.PW, g.KW, g.SW, g.OW, wlo, whi);
            A acc = 0;
            if (w < g.W)
                for (int oh = hlo; oh <= hhi; ++oh) {
                    const int base = (int)(plane * g.OH + oh - first) * g.OW;
                    for (int ow = wlo; ow <= whi; ++ow) {
                        const A gv = gl::to_acc(staged_dy[base + ow]);
                        if (IS_MAX) {
                            const int mine = (h - (oh * g.SH - g.PH)) * g.KW + (w - (ow * g.SW - g.PW));
                            acc += ((int)staged_off[base + ow] == mine) ? gv : (A)0;
                        } else {
                            acc += gv / window_count(g, 0, oh, ow);
                        }
                    }
                }
            if (w < g.W) staged_dx[warp * g.W + w] = gl::from_acc<T>(acc);
        }
        __syncthreads();
        const int n_out = (int)(r1 - r0 + 1) * g.W;
        for (int k = threadIdx.x; k < n_out; k += kRowsBlock) dx[r0 * g.W + k] = staged_dx[k];
        __syncthreads();
    }
}

template <typename T, bool IS_MAX>
__global__ void pool_backward_rows(const T* __restrict__ dy, const unsigned char* __restrict__ argmax,
                                   T* __restrict__ dx, POOL_GEOM_PARAMS) {
    typedef gl::acc_t<T> A;
    const PoolGeom g = POOL_GEOM_ARGS;
    const int lane = threadIdx.x & 31;
    const int chunks = (g.W + 31) / 32;
    const index_t warps = (index_t)g.N * g.C * g.D * g.H * chunks;
    const int per_lane = (g.KW + g.SW - 1) / g.SW;  // most outputs covering one column
    if (chunks == 1 && g.D == 1 && (7 + 2 * g.KH) / g.SH + 4 <= kStageRows) {  // the dy rows of 8 input rows fit
        pool_backward_staged<T, IS_MAX>(dy, argmax, dx, g);
        return;
    }
    for (index_t wi = gl::global_thread_index() / 32; wi < warps; wi += gl::grid_stride() / 32) {
        index_t q = wi;  // warp -> (n, c, d, h, chunk)
        const int chunk = (int)(q % chunks); q /= chunks;
        const int h = (int)(q % g.H); q /= g.H;
        const int d = (int)(q % g.D); q /= g.D;
        const int c = (int)(q % g.C);
        const int n = (int)(q / g.C);
        const int w = chunk * 32 + lane;
        int dlo, dhi, hlo, hhi, wlo, whi, first_lo, first_hi, last_lo, last_hi;
        covering(d, g.PD, g.KD, g.SD, g.OD, dlo, dhi);
        covering(h, g.PH, g.KH, g.SH, g.OH, hlo, hhi);
        covering(w, g.PW, g.KW, g.SW, g.OW, wlo, whi);
        covering(chunk * 32, g.PW, g.KW, g.SW, g.OW, first_lo, first_hi);
        covering(chunk * 32 + 31, g.PW, g.KW, g.SW, g.OW, last_lo, last_hi);
        const int span_hi = max(last_hi, first_lo);  // the warp's output columns: [first_lo, span_hi]
        A acc = 0;
        for (int od = dlo; od <= dhi; ++od) {
            for (int oh = hlo; oh <= hhi; ++oh) {
                const index_t row = offset5<false>(n, c, od, oh, 0, g.C, g.OD, g.OH, g.OW);
                gl::WarpRow<T, kRowSegments> grads;
                grads.load(dy + row, g.OW, first_lo, span_hi - first_lo + 1);
                gl::WarpRow<unsigned char, kRowSegments> offsets;
                if (IS_MAX) offsets.load(argmax + row, g.OW, first_lo, span_hi - first_lo + 1);
                for (int k = 0; k < per_lane; ++k) {
                    const int ow = wlo + k;
                    const int col = min(max(ow, first_lo), span_hi);
                    const A gv = gl::to_acc(grads.take(col));
                    const int winner = IS_MAX ? (int)offsets.take(col) : 0;
                    if (ow > whi) continue;
                    if (IS_MAX) {
                        const int mine = ((d - (od * g.SD - g.PD)) * g.KH + (h - (oh * g.SH - g.PH))) * g.KW +
                                         (w - (ow * g.SW - g.PW));
                        acc += (winner == mine) ? gv : (A)0;
                    } else {
                        acc += gv / window_count(g, od, oh, ow);
                    }
                }
            }
        }
        if (w < g.W) dx[offset5<false>(n, c, d, h, w, g.C, g.D, g.H, g.W)] = gl::from_acc<T>(acc);
    }
}

// y[o] = mean of the real cells of window o. One thread per output element.
template <typename T, bool CL>
__global__ void avg_pool_forward(const T* __restrict__ x, T* __restrict__ y, POOL_GEOM_PARAMS) {
    const PoolGeom g = POOL_GEOM_ARGS;
    const index_t total = (index_t)g.N * g.C * g.OD * g.OH * g.OW;
    GL_FOR_EACH(o, total) {
        int n, c, od, oh, ow;
        split5<CL>(o, g.C, g.OD, g.OH, g.OW, n, c, od, oh, ow);
        const int d0 = od * g.SD - g.PD, h0 = oh * g.SH - g.PH, w0 = ow * g.SW - g.PW;
        gl::acc_t<T> acc = 0;
        for (int d = max(d0, 0); d < min(d0 + g.KD, g.D); ++d)
            for (int h = max(h0, 0); h < min(h0 + g.KH, g.H); ++h)
                for (int w = max(w0, 0); w < min(w0 + g.KW, g.W); ++w)
                    acc += gl::to_acc(x[offset5<CL>(n, c, d, h, w, g.C, g.D, g.H, g.W)]);
        y[o] = gl::from_acc<T>(acc / window_count(g, od, oh, ow));
    }
}

// dx[i] = sum over windows o covering i of dy[o] / count(o). One thread per input element.
template <typename T, bool CL>
__global__ void avg_pool_backward(const T* __restrict__ dy, T* __restrict__ dx, POOL_GEOM_PARAMS) {
    const PoolGeom g = POOL_GEOM_ARGS;
    const index_t total = (index_t)g.N * g.C * g.D * g.H * g.W;
    GL_FOR_EACH(i, total) {
        const Covering v = covering_outputs<CL>(i, g);
        gl::acc_t<T> acc = 0;
        for (int od = v.dlo; od <= v.dhi; ++od)
            for (int oh = v.hlo; oh <= v.hhi; ++oh)
                for (int ow = v.wlo; ow <= v.whi; ++ow)
                    acc += gl::to_acc(dy[offset5<CL>(v.n, v.c, od, oh, ow, g.C, g.OD, g.OH, g.OW)]) /
                           window_count(g, od, oh, ow);
        dx[i] = gl::from_acc<T>(acc);
    }
}

// ---------------------------------------------------------------------------------------
// Global pooling over L spatial positions. Rows are (n, c) pairs, rows in [0, N*C).

// First maximum of a contiguous row of length L, reduced over the block (every thread
// receives it). Threads read the row with stride blockDim.x: coalesced.
template <typename T>
__device__ __forceinline__ gl::ArgMax<gl::acc_t<T>> row_argmax(
    const T* __restrict__ row, index_t L, gl::ArgMax<gl::acc_t<T>>* scratch) {
    typedef gl::acc_t<T> A;
    gl::ArgMax<A> m = {0, -1};
    for (index_t j = threadIdx.x; j < L; j += blockDim.x) {
        const gl::ArgMax<A> v = {gl::to_acc(row[j]), j};
        m = gl::argmax_combine(m, v);
    }
    const gl::ArgMax<A> none = {0, -1};
    return gl::block_reduce(m, gl::ArgMaxOp(), scratch, none);
}

// channels_first forward: one block per row (blockIdx.x = row, grid-stride over rows);
// the block's threads read the contiguous row with stride blockDim.x and reduce.
// blockDim.x must be a multiple of 32.
template <typename T, bool IS_MAX>
__global__ void global_pool_forward_rows(const T* __restrict__ x, T* __restrict__ y, int* __restrict__ argmax,
                                         index_t rows, index_t L) {
    typedef gl::acc_t<T> A;
    __shared__ A sum_scratch[32];
    __shared__ gl::ArgMax<A> max_scratch[32];
    for (index_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* row = x + r * L;
        if (IS_MAX) {
            const gl::ArgMax<A> m = row_argmax(row, L, max_scratch);
            if (threadIdx.x == 0) {
                y[r] = gl::from_acc<T>(m.value);
                argmax[r] = (int)m.index;
            }
        } else {
            A s = 0;
            for (index_t j = threadIdx.x; j < L; j += blockDim.x) s += gl::to_acc(row[j]);
            s = gl::block_reduce(s, gl::SumOp(), sum_scratch, A(0));
            if (threadIdx.x == 0) y[r] = gl::from_acc<T>(s / (A)L);
        }
    }
}

// channels_last forward: x is (N, L, C). A block of RB rows x CB channels (CB = 32 when
// C >= 32, else C, so that consecutive threads read consecutive addresses; RB * CB <= 1024)
// covers channels [g * CB, g * CB + CB) of one batch row; blockIdx.x = n * groups + g.
// Thread (r, c) folds positions l = r, r + RB, ... of its channel in order; the RB partial
// results of a channel are then combined by a fixed tree in shared memory (deterministic).
// Max pooling also writes the position of the first maximum (int32) for backward.
// Dynamic shared memory: blockDim.x sums, or blockDim.x values and blockDim.x int positions.
extern __shared__ __align__(16) unsigned char pool_scratch[];

template <typename A> struct MaxAt {
    A value;
    int index;  // -1: empty
};
template <typename A> __device__ __forceinline__ MaxAt<A> max_at_combine(MaxAt<A> a, MaxAt<A> b) {
    if (a.index < 0) return b;
    if (b.index < 0) return a;
    if (gl::max_replaces(b.value, a.value)) return b;
    if (gl::max_replaces(a.value, b.value)) return a;
    return b.index < a.index ? b : a;  // equal values, or both NaN: the first position
}

template <typename T, bool IS_MAX>
__global__ void global_pool_forward_cols(const T* __restrict__ x, T* __restrict__ y, int* __restrict__ argmax,
                                         int N, int C, index_t L, int CB) {
    typedef gl::acc_t<T> A;
    const int RB = blockDim.x / CB;          // rows per block
    const int groups = (C + CB - 1) / CB;
    const int n = blockIdx.x / groups;       // n in [0, N)
    const int cl = threadIdx.x % CB;         // channel within the group, in [0, CB)
    const int r = threadIdx.x / CB;          // row offset, in [0, RB) when active
    const int c = (blockIdx.x % groups) * CB + cl;
    const bool active = r < RB && c < C;
    const T* __restrict__ column = x + (index_t)n * L * C + c;
    int rows = 1;
    while (rows < RB) rows <<= 1;  // tree width: RB rounded up to a power of two
    if (IS_MAX) {
        // values and positions in two arrays: consecutive threads touch consecutive words
        A* values = reinterpret_cast<A*>(pool_scratch);
        int* positions = reinterpret_cast<int*>(values + blockDim.x);
        MaxAt<A> m = {A(0), -1};
        if (active)
            for (index_t l = r; l < L; l += RB) {
                const A v = gl::to_acc(column[l * C]);
                if (m.index < 0 || gl::max_replaces(v, m.value)) { m.value = v; m.index = (int)l; }
            }
        values[threadIdx.x] = m.value;
        positions[threadIdx.x] = m.index;
        __syncthreads();
        for (int s = rows / 2; s > 0; s >>= 1) {
            if (active && r < s && r + s < RB) {
                const MaxAt<A> a = {values[threadIdx.x], positions[threadIdx.x]};
                const MaxAt<A> b = {values[threadIdx.x + s * CB], positions[threadIdx.x + s * CB]};
                m = max_at_combine(a, b);
                values[threadIdx.x] = m.value;
                positions[threadIdx.x] = m.index;
            }
            __syncthreads();
        }
        if (active && r == 0) {
            y[(index_t)n * C + c] = gl::from_acc<T>(values[threadIdx.x]);
            argmax[(index_t)n * C + c] = positions[threadIdx.x];
        }
    } else {
        A* tile = reinterpret_cast<A*>(pool_scratch);
        A sum = 0;
        if (active)
            for (index_t l = r; l < L; l += RB) sum += gl::to_acc(column[l * C]);
        tile[threadIdx.x] = sum;
        __syncthreads();
        for (int s = rows / 2; s > 0; s >>= 1) {
            if (active && r < s && r + s < RB) tile[threadIdx.x] += tile[threadIdx.x + s * CB];
            __syncthreads();
        }
        if (active && r == 0) y[(index_t)n * C + c] = gl::from_acc<T>(tile[threadIdx.x] / (A)L);
    }
}

// Global max backward, both layouts: dx[i] = dy[row] where i is its row's first maximum
// (argmax saved by the forward pass), else 0. One thread per input element: reads the
// small dy and argmax, writes dx coalesced. row(i) = i / L for channels_first, and
// (i / (L*C)) * C + i % C for channels_last, with position l = i % L or (i / C) % L.
template <typename T, bool CL>
__global__ void global_max_backward(const T* __restrict__ dy, const int* __restrict__ argmax,
                                    T* __restrict__ dx, int N, int C, index_t L) {
    const index_t total = (index_t)N * C * L;
    const T zero = gl::from_acc<T>((gl::acc_t<T>)0);
    GL_FOR_EACH(i, total) {
        const index_t r = CL ? (i / (L * C)) * C + i % C : i / L;
        const index_t l = CL ? (i / C) % L : i % L;
        const T g = dy[r];
        dx[i] = (l == (index_t)argmax[r]) ? g : zero;
    }
}

// Global average backward, both layouts: dx[i] = dy[row(i)] / L. One thread per input
// element; row(i) as above.
template <typename T, bool CL>
__global__ void global_avg_backward(const T* __restrict__ dy, T* __restrict__ dx, int N, int C,
                                    index_t L) {
    typedef gl::acc_t<T> A;
    const index_t total = (index_t)N * C * L;
    GL_FOR_EACH(i, total) {
        const index_t r = CL ? (i / (L * C)) * C + i % C : i / L;
        dx[i] = gl::from_acc<T>(gl::to_acc(dy[r]) / (A)L);
    }
}
