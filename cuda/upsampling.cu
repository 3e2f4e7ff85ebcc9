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
