// upsampling.cu -- UpSampling1D/2D/3D: nearest (repeat) and bilinear (2-D) interpolation.
//
// Must match the NumPy reference in gpulayers/layers/upsampling.py (upsample_nearest,
// upsample_nearest_backward, upsample_bilinear, upsample_bilinear_backward).
//
// Tensors are viewed as 5-D with three spatial axes, channels_last (CL = true) as
// (N, D, H, W, C) and channels_first as (N, C, D, H, W); factors (SD, SH, SW) are integers.
// Forward: one thread per output element (per VEC consecutive channels in channels_last,
// loaded and stored as one aligned vector); consecutive threads write consecutive
// elements, so accesses are coalesced in both layouts. Backward is a gather: one thread
// per input element sums, with their weights, the output gradients it contributed to.
// Each input gradient is written once: deterministic, no atomics, no zero-fill pass.
//
// Bilinear (Keras/TF, half-pixel centres, align_corners off): along an axis of input size
// n and factor s, output o samples src = (o + 0.5) / s - 0.5; i0 = floor(src),
// frac = src - i0; it reads i0 with weight 1 - frac and i0 + 1 with weight frac, both
// clamped into [0, n - 1].
#include "common.cuh"

using gl::index_t;
using gl::offset5;
using gl::split5;

// VEC consecutive values moved as one load/store (16 bytes for float x4, half x8, double x2).
template <typename T, int VEC> struct __align__(sizeof(T) * VEC) Vec { T v[VEC]; };

#define UPSAMPLE_PARAMS int N, int C, int D, int H, int W, int SD, int SH, int SW

// Nearest forward: y[n, c, od, oh, ow] = x[n, c, od / SD, oh / SH, ow / SW].
// One thread per VEC outputs (VEC > 1 only for channels_last with C % VEC == 0).
template <typename T, bool CL, int VEC>
__global__ void upsample_nearest_forward(const T* __restrict__ x, T* __restrict__ y, UPSAMPLE_PARAMS) {
    const int OD = D * SD, OH = H * SH, OW = W * SW;
    const int CV = CL ? C / VEC : C;  // channel groups
    const index_t total = (index_t)N * CV * OD * OH * OW;
    for (index_t o = gl::global_thread_index(); o < total; o += gl::grid_stride()) {
        int n, cv, od, oh, ow;
        split5<CL>(o, CV, OD, OH, OW, n, cv, od, oh, ow);
        const index_t src = offset5<CL>(n, cv, od / SD, oh / SH, ow / SW, CV, D, H, W);
        if (VEC == 1)
            y[o] = x[src];
        else
            reinterpret_cast<Vec<T, VEC>*>(y)[o] = reinterpret_cast<const Vec<T, VEC>*>(x)[src];
    }
}

// Nearest backward: dx[i] = sum of dy over the SD x SH x SW block that repeats input i.
template <typename T, bool CL, int VEC>
__global__ void upsample_nearest_backward(const T* __restrict__ dy, T* __restrict__ dx, UPSAMPLE_PARAMS) {
    typedef typename gl::Acc<T>::type A;
    const int OD = D * SD, OH = H * SH, OW = W * SW;
    const int CV = CL ? C / VEC : C;
    const index_t total = (index_t)N * CV * D * H * W;
    for (index_t i = gl::global_thread_index(); i < total; i += gl::grid_stride()) {
        int n, cv, d, h, w;
        split5<CL>(i, CV, D, H, W, n, cv, d, h, w);
        A acc[VEC];
        for (int k = 0; k < VEC; ++k) acc[k] = 0;
        for (int od = d * SD; od < (d + 1) * SD; ++od)
            for (int oh = h * SH; oh < (h + 1) * SH; ++oh)
                for (int ow = w * SW; ow < (w + 1) * SW; ++ow) {
                    const index_t o = offset5<CL>(n, cv, od, oh, ow, CV, OD, OH, OW);
                    const Vec<T, VEC> g = reinterpret_cast<const Vec<T, VEC>*>(dy)[o];
                    for (int k = 0; k < VEC; ++k) acc[k] += gl::to_acc(g.v[k]);
                }
        Vec<T, VEC> r;
        for (int k = 0; k < VEC; ++k) r.v[k] = gl::from_acc<T>(acc[k]);
        reinterpret_cast<Vec<T, VEC>*>(dx)[i] = r;
    }
}

// Source taps of output o along an axis of input size n and factor s (half-pixel centres),
// computed in the accumulate type A (float for float/half, double for double).
template <typename A>
__device__ __forceinline__ void bilinear_taps(int o, int s, int n, int& i0, int& i1, A& frac) {
    const A src = ((A)o + (A)0.5) / (A)s - (A)0.5;
    const A fl = floor(src);
    frac = src - fl;
    i0 = min(max((int)fl, 0), n - 1);
    i1 = min(max((int)fl + 1, 0), n - 1);
}

// Weight of input position i in output o along one axis (0 when o does not read i).
template <typename A>
__device__ __forceinline__ A bilinear_weight(int o, int i, int s, int n) {
    int i0, i1;
    A frac;
    bilinear_taps(o, s, n, i0, i1, frac);
    return (i0 == i ? (A)1 - frac : (A)0) + (i1 == i ? frac : (A)0);
}

// Bilinear forward (2-D: D == 1, SD == 1). One thread per output element.
template <typename T, bool CL>
__global__ void upsample_bilinear_forward(const T* __restrict__ x, T* __restrict__ y, UPSAMPLE_PARAMS) {
    typedef typename gl::Acc<T>::type A;
    const int OH = H * SH, OW = W * SW;
    const index_t total = (index_t)N * C * OH * OW;
    for (index_t o = gl::global_thread_index(); o < total; o += gl::grid_stride()) {
        int n, c, od, oh, ow;
        split5<CL>(o, C, 1, OH, OW, n, c, od, oh, ow);
        int h0, h1, w0, w1;
        A fh, fw;
        bilinear_taps(oh, SH, H, h0, h1, fh);
        bilinear_taps(ow, SW, W, w0, w1, fw);
        const A top = gl::to_acc(x[offset5<CL>(n, c, 0, h0, w0, C, 1, H, W)]) * ((A)1 - fw) +
                      gl::to_acc(x[offset5<CL>(n, c, 0, h0, w1, C, 1, H, W)]) * fw;
        const A bottom = gl::to_acc(x[offset5<CL>(n, c, 0, h1, w0, C, 1, H, W)]) * ((A)1 - fw) +
                         gl::to_acc(x[offset5<CL>(n, c, 0, h1, w1, C, 1, H, W)]) * fw;
        y[o] = gl::from_acc<T>(top * ((A)1 - fh) + bottom * fh);
    }
}

// Bilinear backward: dx[i] = sum over outputs o reading i of w_h(o) * w_w(o) * dy[o].
// Along an axis, only outputs in [(i - 1) * s, (i + 2) * s) can read input i.
template <typename T, bool CL>
__global__ void upsample_bilinear_backward(const T* __restrict__ dy, T* __restrict__ dx, UPSAMPLE_PARAMS) {
    typedef typename gl::Acc<T>::type A;
    const int OH = H * SH, OW = W * SW;
    const index_t total = (index_t)N * C * H * W;
    for (index_t i = gl::global_thread_index(); i < total; i += gl::grid_stride()) {
        int n, c, d, h, w;
        split5<CL>(i, C, 1, H, W, n, c, d, h, w);
        A acc = 0;
        for (int oh = max((h - 1) * SH, 0); oh < min((h + 2) * SH, OH); ++oh) {
            const A wh = bilinear_weight<A>(oh, h, SH, H);
            if (wh == (A)0) continue;
            A row = 0;
            for (int ow = max((w - 1) * SW, 0); ow < min((w + 2) * SW, OW); ++ow) {
                const A ww = bilinear_weight<A>(ow, w, SW, W);
                if (ww != (A)0) row += ww * gl::to_acc(dy[offset5<CL>(n, c, 0, oh, ow, C, 1, OH, OW)]);
            }
            acc += wh * row;
        }
        dx[i] = gl::from_acc<T>(acc);
    }
}

// ---------------------------------------------------------------------------------------
// channels_first backward passes as warp-per-row gathers. The direct kernels above give lane
// w the dy columns [w * SW, ...): SW elements apart between lanes, so each sector is fetched
// SW times over. Here a warp takes 32 consecutive input columns of one input row; for each
// output row it reads, it loads the dy columns the warp needs once as coalesced segments
// (gl::WarpRow, 4 bytes per lane) and each lane takes its own by warp shuffles. Same terms in
// the same order as the direct kernels: identical results. Python launches them when the
// columns fit in kRowSegments segments.
constexpr int kRowSegments = 4;

// Decomposes warp index wi into (n, c, d, h, chunk of 32 columns) of an (N, C, D, H, W) view.
__device__ __forceinline__ void warp_row(index_t wi, int C, int D, int H, int chunks, int& n, int& c, int& d,
                                         int& h, int& chunk) {
    chunk = (int)(wi % chunks); wi /= chunks;
    h = (int)(wi % H); wi /= H;
    d = (int)(wi % D); wi /= D;
    c = (int)(wi % C);
    n = (int)(wi / C);
}

// Nearest: dx[w] = sum over the SD x SH output rows repeating input row (d, h) of
// dy[w * SW .. w * SW + SW).
template <typename T>
__global__ void upsample_nearest_backward_rows(const T* __restrict__ dy, T* __restrict__ dx, UPSAMPLE_PARAMS) {
    typedef typename gl::Acc<T>::type A;
    const int OD = D * SD, OH = H * SH, OW = W * SW;
    const int lane = threadIdx.x & 31, chunks = (W + 31) / 32;
    const index_t warps = (index_t)N * C * D * H * chunks;
    for (index_t wi = gl::global_thread_index() / 32; wi < warps; wi += gl::grid_stride() / 32) {
        int n, c, d, h, chunk;
        warp_row(wi, C, D, H, chunks, n, c, d, h, chunk);
        const int w = chunk * 32 + lane;
        A acc = 0;
        for (int od = d * SD; od < (d + 1) * SD; ++od)
            for (int oh = h * SH; oh < (h + 1) * SH; ++oh) {
                gl::WarpRow<T, kRowSegments> row;
                row.load(dy + offset5<false>(n, c, od, oh, 0, C, OD, OH, OW), OW, chunk * 32 * SW, 32 * SW);
                for (int k = 0; k < SW; ++k) acc += gl::to_acc(row.take(w * SW + k));
            }
        if (w < W) dx[offset5<false>(n, c, d, h, w, C, D, H, W)] = gl::from_acc<T>(acc);
    }
}

// Bilinear (D == 1): dx[w] = sum over output rows oh reading input row h of w_h(oh) times the
// sum over ow in [(w - 1) * SW, (w + 2) * SW) of w_w(ow) * dy[oh, ow].
template <typename T>
__global__ void upsample_bilinear_backward_rows(const T* __restrict__ dy, T* __restrict__ dx, UPSAMPLE_PARAMS) {
    typedef typename gl::Acc<T>::type A;
    const int OH = H * SH, OW = W * SW;
    const int lane = threadIdx.x & 31, chunks = (W + 31) / 32;
    const index_t warps = (index_t)N * C * H * chunks;
    for (index_t wi = gl::global_thread_index() / 32; wi < warps; wi += gl::grid_stride() / 32) {
        int n, c, d, h, chunk;
        warp_row(wi, C, 1, H, chunks, n, c, d, h, chunk);
        const int w = chunk * 32 + lane;
        const int begin = max((chunk * 32 - 1) * SW, 0), end = min((chunk * 32 + 33) * SW, OW);  // [begin, end)
        A acc = 0;
        for (int oh = max((h - 1) * SH, 0); oh < min((h + 2) * SH, OH); ++oh) {
            const A wh = bilinear_weight<A>(oh, h, SH, H);
            if (wh == (A)0) continue;  // the same for the whole warp (one input row)
            gl::WarpRow<T, kRowSegments> row;
            row.load(dy + offset5<false>(n, c, 0, oh, 0, C, 1, OH, OW), OW, begin, end - begin);
            A sum = 0;
            for (int k = 0; k < 3 * SW; ++k) {
                const int ow = (w - 1) * SW + k;
                const A v = gl::to_acc(row.take(min(max(ow, begin), end - 1)));
                if (ow < 0 || ow >= OW) continue;
                const A ww = bilinear_weight<A>(ow, w, SW, W);
                if (ww != (A)0) sum += ww * v;
            }
            acc += wh * sum;
        }
        if (w < W) dx[offset5<false>(n, c, 0, h, w, C, 1, H, W)] = gl::from_acc<T>(acc);
    }
}

// Nearest forward, channels_first: a warp per 32 * P consecutive input columns of one input
// row (P = 4 / sizeof(T), 1 for 4- and 8-byte types): loads them once (coalesced), then writes
// the SW * 32 * P output columns they repeat into each of the SD x SH output rows, coalesced
// (one 4-byte word per lane), taking each value by warp shuffles. The direct kernel's lanes
// read 32 / SW distinct inputs per request, too few bytes to fill the sectors they touch.
template <typename T>
__global__ void upsample_nearest_forward_rows(const T* __restrict__ x, T* __restrict__ y, UPSAMPLE_PARAMS) {
    typedef gl::WarpRow<T, 1> Row;
    const int OD = D * SD, OH = H * SH, OW = W * SW;
    const int span = 32 * Row::P, chunks = (W + span - 1) / span;
    const index_t warps = (index_t)N * C * D * H * chunks;
    for (index_t wi = gl::global_thread_index() / 32; wi < warps; wi += gl::grid_stride() / 32) {
        int n, c, d, h, chunk;
        warp_row(wi, C, D, H, chunks, n, c, d, h, chunk);
        const int w0 = chunk * span;  // first input column of the warp
        Row row;
        row.load(x + offset5<false>(n, c, d, h, 0, C, D, H, W), W, w0, min(span, W - w0));
        for (int od = d * SD; od < (d + 1) * SD; ++od)
            for (int oh = h * SH; oh < (h + 1) * SH; ++oh)
                Row::store(y + offset5<false>(n, c, od, oh, 0, C, OD, OH, OW), OW, w0 * SW,
                           min(span, W - w0) * SW,
                           [&](int ow) { return row.take(min(max(ow / SW, row.first), w0 + span - 1)); });
    }
}
