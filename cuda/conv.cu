// conv.cu -- im2col and col2im for Conv2D and Conv2DTranspose (the GEMMs run in cuBLAS).
//
// Must match the NumPy reference in gpulayers/layers/convolution.py (conv2d_forward,
// conv2d_backward, conv2d_transpose_forward, conv2d_transpose_backward): the layer forms
// columns with im2col, multiplies them with the kernel in one GEMM through CuPy (cuBLAS),
// and scatters columns back to an image with col2im.
//
// Geometry: an image of H x W positions and C channels; a grid of OH x OW window
// positions; window tap (kh, kw) of position (oh, ow) reads image row
// h = oh * SH + kh * DH - PH and column w = ow * SW + kw * DW - PW (zero outside).
// Conv2D: image = input, positions = output. Conv2DTranspose: image = output, positions =
// input (its forward is col2im, its backward im2col).
//
// Column layouts (one per data format, so both read and write coalesced):
//   channels_last  (CL = true):  cols[(n, oh, ow), (kh, kw, c)]   -- c fastest, as x[n, h, w, c]
//   channels_first (CL = false): cols[n, (c, kh, kw), (oh, ow)]   -- ow fastest, as x[n, c, h, w]
// Columns are stored in the accumulate type A (float for float/__half, double for double),
// so the GEMMs run and accumulate in float32 for half inputs.
//
// im2col: one thread per column element (consecutive threads write consecutive elements).
// col2im: a gather, one thread per image element that sums, in the accumulate type, every
// column entry that reads it (the taps whose (h + PH - kh * DH) is a multiple of SH inside
// the position grid). Each image element is written once: deterministic, no atomics, no
// zero-fill pass.
#include "common.cuh"

using gl::index_t;

#define CONV_GEOM_PARAMS                                                                      \
    int N, int C, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, int DH, int DW, \
        int PH, int PW

// Column element -> its image element, or -1 when the tap falls in the padding.
template <bool CL>
__device__ __forceinline__ index_t column_source(index_t i, CONV_GEOM_PARAMS) {
    int n, c, kh, kw, oh, ow;
    if (CL) {
        c = (int)(i % C); i /= C;            // c in [0, C)
        kw = (int)(i % KW); i /= KW;
        kh = (int)(i % KH); i /= KH;
        ow = (int)(i % OW); i /= OW;
        oh = (int)(i % OH); n = (int)(i / OH);
    } else {
        ow = (int)(i % OW); i /= OW;         // ow in [0, OW)
        oh = (int)(i % OH); i /= OH;
        kw = (int)(i % KW); i /= KW;
        kh = (int)(i % KH); i /= KH;
        c = (int)(i % C); n = (int)(i / C);
    }
    const int h = oh * SH + kh * DH - PH;
    const int w = ow * SW + kw * DW - PW;
    if (h < 0 || h >= H || w < 0 || w >= W) return -1;
    return CL ? (((index_t)n * H + h) * W + w) * C + c : (((index_t)n * C + c) * H + h) * W + w;
}

// cols (A) <- the windows of x (T). One thread per column element.
template <typename T, bool CL>
__global__ void im2col(const T* __restrict__ x, typename gl::Acc<T>::type* __restrict__ cols, CONV_GEOM_PARAMS) {
    typedef typename gl::Acc<T>::type A;
    const index_t total = (index_t)N * OH * OW * KH * KW * C;
    for (index_t i = gl::global_thread_index(); i < total; i += gl::grid_stride()) {
        const index_t src = column_source<CL>(i, N, C, H, W, OH, OW, KH, KW, SH, SW, DH, DW, PH, PW);
        cols[i] = src < 0 ? (A)0 : gl::to_acc(x[src]);
    }
}

// Index of column entry (n, c, kh, kw, oh, ow) in the layout of CL.
template <bool CL>
__device__ __forceinline__ index_t column_index(int n, int c, int kh, int kw, int oh, int ow, int C, int OH, int OW,
                                                int KH, int KW) {
    return CL ? (((((index_t)n * OH + oh) * OW + ow) * KH + kh) * KW + kw) * C + c
              : (((((index_t)n * C + c) * KH + kh) * KW + kw) * OH + oh) * OW + ow;
}

// x (T) <- sum of the column entries (A) that read each image element. One thread per
// image element (c fastest for CL, w fastest otherwise); taps in (kh, kw) order.
template <typename T, bool CL>
__global__ void col2im(const typename gl::Acc<T>::type* __restrict__ cols, T* __restrict__ x, CONV_GEOM_PARAMS) {
    typedef typename gl::Acc<T>::type A;
    const index_t total = (index_t)N * C * H * W;
    for (index_t i = gl::global_thread_index(); i < total; i += gl::grid_stride()) {
        index_t r = i;
        int n, c, h, w;
        if (CL) {
            c = (int)(r % C); r /= C;
            w = (int)(r % W); r /= W;
            h = (int)(r % H); n = (int)(r / H);
        } else {
            w = (int)(r % W); r /= W;
            h = (int)(r % H); r /= H;
            c = (int)(r % C); n = (int)(r / C);
        }
        A acc = 0;
        for (int kh = 0; kh < KH; ++kh) {
            const int th = h + PH - kh * DH;  // = oh * SH when tap kh of row oh reads h
            if (th < 0 || th % SH) continue;
            const int oh = th / SH;
            if (oh >= OH) continue;
            for (int kw = 0; kw < KW; ++kw) {
                const int tw = w + PW - kw * DW;
                if (tw < 0 || tw % SW) continue;
                const int ow = tw / SW;
                if (ow >= OW) continue;
                acc += cols[column_index<CL>(n, c, kh, kw, oh, ow, C, OH, OW, KH, KW)];
            }
        }
        x[i] = gl::from_acc<T>(acc);
    }
}
