"""Upsampling ("deconvolution" family): UpSampling1D/2D/3D, nearest and bilinear (2-D).

- NumPy reference (``upsample_nearest`` ... ``upsample_bilinear_backward``): vectorised;
  bilinear is separable, one interpolation matrix per axis.
- Kernel path (``*_kernel``): ``cuda/upsampling.cu`` on the GPU or the simulator.
- Keras 3 layer classes.

Output size: every spatial size times its integer factor. Nearest: out[i] = in[i // s].
Bilinear (Keras/TF): half-pixel centres, align_corners off, taps clamped at the edges.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from .. import kernels, validation
from .base import Layer

SOURCE = "upsampling.cu"
BLOCK = 256
VEC_BYTES = 16  # channels_last nearest kernels move 16-byte vectors when C allows

kernels.declare(SOURCE, [
    f"{name}<{{T}}, {cl}, {vec}>"
    for name in ("upsample_nearest_forward", "upsample_nearest_backward")
    for cl, vecs in (("true", "1 2 4 8"), ("false", "1")) for vec in vecs.split()
] + [f"{name}<{{T}}, {cl}>" for name in ("upsample_bilinear_forward", "upsample_bilinear_backward")
     for cl in ("true", "false")] + ["upsample_nearest_forward_rows<{T}>", "upsample_nearest_backward_rows<{T}>",
                                     "upsample_bilinear_backward_rows<{T}>"])
ROW_SEGMENTS = 4  # the *_rows kernels load up to this many 32-element segments per row (kRowSegments)
ROW_KERNELS = True  # channels_first backward takes the warp-per-row kernels where they fit (tests switch it off)


def _acc_dtype(dtype):
    return np.float64 if dtype == np.float64 else np.float32


def _spatial_axes(ndim, data_format):
    return tuple(range(2, ndim)) if data_format == "channels_first" else tuple(range(1, ndim - 1))


# ----------------------------------------------------------------------------- NumPy reference

def upsample_nearest(x, size, data_format="channels_last"):
    """Repeat each spatial position ``size[k]`` times along spatial axis k."""
    for axis, s in zip(_spatial_axes(x.ndim, data_format), size):
        x = np.repeat(x, s, axis=axis)
    return x


def upsample_nearest_backward(dy, size, data_format="channels_last"):
    """d(loss)/dx of nearest upsampling: the sum of each repeated block."""
    acc = _acc_dtype(dy.dtype)
    g = dy.astype(acc)
    for axis, s in zip(_spatial_axes(dy.ndim, data_format), size):
        shape = g.shape
        g = g.reshape(shape[:axis] + (shape[axis] // s, s) + shape[axis + 1:]).sum(axis=axis + 1)
    return g.astype(dy.dtype)


def bilinear_matrix(n, s, dtype=np.float64):
    """(n * s, n) interpolation weights along one axis (half-pixel centres, clamped taps).

    Computed in ``dtype`` with the kernels' operation order, so float32 weights are the
    kernels' float32 weights.
    """
    o = np.arange(n * s, dtype=dtype)
    src = (o + dtype(0.5)) / dtype(s) - dtype(0.5)
    fl = np.floor(src)
    frac = src - fl
    i0 = np.clip(fl.astype(np.int64), 0, n - 1)
    i1 = np.clip(fl.astype(np.int64) + 1, 0, n - 1)
    m = np.zeros((n * s, n), dtype)
    rows = np.arange(n * s)
    np.add.at(m, (rows, i0), dtype(1) - frac)
    np.add.at(m, (rows, i1), frac)
    return m


def upsample_bilinear(x, size, data_format="channels_last"):
    """Bilinear upsampling of a 4-D input by integer factors (size_h, size_w)."""
    acc = _acc_dtype(x.dtype)
    xcl = np.moveaxis(x, 1, -1) if data_format == "channels_first" else x
    mh = bilinear_matrix(xcl.shape[1], size[0], acc)
    mw = bilinear_matrix(xcl.shape[2], size[1], acc)
    y = np.einsum("oh,nhwc,pw->nopc", mh, xcl.astype(acc), mw, optimize=True)
    y = np.moveaxis(y, -1, 1) if data_format == "channels_first" else y
    return y.astype(x.dtype)


def upsample_bilinear_backward(dy, size, data_format="channels_last"):
    """d(loss)/dx of bilinear upsampling (the transposed interpolation)."""
    acc = _acc_dtype(dy.dtype)
    dycl = np.moveaxis(dy, 1, -1) if data_format == "channels_first" else dy
    mh = bilinear_matrix(dycl.shape[1] // size[0], size[0], acc)
    mw = bilinear_matrix(dycl.shape[2] // size[1], size[1], acc)
    dx = np.einsum("oh,nopc,pw->nhwc", mh, dycl.astype(acc), mw, optimize=True)
    dx = np.moveaxis(dx, -1, 1) if data_format == "channels_first" else dx
    return dx.astype(dy.dtype)


# ----------------------------------------------------------------------------- kernel path

@functools.lru_cache(maxsize=512)
def _kernel_args(in_shape, size, data_format):
    """The 8 int32 arguments (N, C, D, H, W, SD, SH, SW) of the upsampling kernels."""
    k = len(size)
    if data_format == "channels_first":
        n, c, spatial = in_shape[0], in_shape[1], in_shape[2:]
    else:
        n, c, spatial = in_shape[0], in_shape[-1], in_shape[1:-1]
    lead = (1,) * (3 - k)
    return tuple(np.int32(v) for v in (n, c, *lead, *spatial, *lead, *size))


def _vector_width(arrays, channels, data_format, itemsize):
    """Channels per thread: 16-byte vectors in channels_last when C and the pointers allow."""
    if data_format != "channels_last":
        return 1
    vec = VEC_BYTES // itemsize
    while vec > 1 and (channels % vec or any(_address(a) % (vec * itemsize) for a in arrays)):
        vec //= 2
    return vec


def _address(a):
    return a.data.ptr if kernels.is_gpu_array(a) else a.ctypes.data


def _out_shape(in_shape, size, data_format):
    axes = _spatial_axes(len(in_shape), data_format)
    shape = list(in_shape)
    for axis, s in zip(axes, size):
        shape[axis] *= s
    return tuple(shape)


def upsample_kernel(x, size, data_format, interpolation="nearest"):
    """Kernel path of the forward pass."""
    xp = kernels.array_module(x)
    x = xp.ascontiguousarray(x)
    y = xp.empty(_out_shape(x.shape, size, data_format), x.dtype)
    args = _kernel_args(tuple(x.shape), size, data_format)
    cl = "true" if data_format == "channels_last" else "false"
    if interpolation == "nearest" and ROW_KERNELS and data_format == "channels_first":
        # a warp per 32 words of input columns of a row: loaded once, repeated into the output rows
        per_warp = 32 * max(1, 4 // x.dtype.itemsize)
        warps = math.prod(x.shape[:-1]) * kernels.ceil_div(x.shape[-1], per_warp)
        kernels.launch(SOURCE, "upsample_nearest_forward_rows<{T}>", x.dtype, kernels.grid_1d(32 * warps, BLOCK),
                       BLOCK, (x, y, *args))
    elif interpolation == "nearest":
        vec = _vector_width((x, y), int(args[1]), data_format, x.dtype.itemsize)
        kernels.launch(SOURCE, f"upsample_nearest_forward<{{T}}, {cl}, {vec}>", x.dtype,
                       kernels.grid_1d(y.size // vec, BLOCK), BLOCK, (x, y, *args))
    else:
        kernels.launch(SOURCE, f"upsample_bilinear_forward<{{T}}, {cl}>", x.dtype,
                       kernels.grid_1d(y.size, BLOCK), BLOCK, (x, y, *args))
    return y


def upsample_backward_kernel(dy, x_shape, size, data_format, interpolation="nearest"):
    """Kernel path of the backward pass (a gather per input element)."""
    xp = kernels.array_module(dy)
    dy = xp.ascontiguousarray(dy)
    dx = xp.empty(x_shape, dy.dtype)
    args = _kernel_args(tuple(x_shape), size, data_format)
    cl = "true" if data_format == "channels_last" else "false"
    factor = size[-1]  # along the contiguous axis of channels_first rows
    span = 32 * factor if interpolation == "nearest" else 34 * factor
    if ROW_KERNELS and data_format == "channels_first" and span + 3 <= 32 * ROW_SEGMENTS:
        # a warp per 32 input columns of a row: the dy columns it reads are loaded once, coalesced
        warps = math.prod(x_shape[:-1]) * kernels.ceil_div(x_shape[-1], 32)
        kernels.launch(SOURCE, f"upsample_{interpolation}_backward_rows<{{T}}>", dy.dtype,
                       kernels.grid_1d(32 * warps, BLOCK), BLOCK, (dy, dx, *args))
        return dx
    if interpolation == "nearest":
        vec = _vector_width((dy, dx), int(args[1]), data_format, dy.dtype.itemsize)
        kernels.launch(SOURCE, f"upsample_nearest_backward<{{T}}, {cl}, {vec}>", dy.dtype,
                       kernels.grid_1d(dx.size // vec, BLOCK), BLOCK, (dy, dx, *args))
    else:
        kernels.launch(SOURCE, f"upsample_bilinear_backward<{{T}}, {cl}>", dy.dtype,
                       kernels.grid_1d(dx.size, BLOCK), BLOCK, (dy, dx, *args))
    return dx


# ----------------------------------------------------------------------------- layers

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos3", "lanczos5")


class _UpSampling(Layer):
    rank = 0

    def __init__(self, size, data_format=None, interpolation="nearest", name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        layer = type(self).__name__
        self.size = validation.int_tuple(layer, "size", size, self.rank)
        self.data_format = validation.data_format(layer, data_format)
        self.interpolation = validation.choice(layer, "interpolation", interpolation, INTERPOLATIONS)
        if self.interpolation not in ("nearest", "bilinear"):
            raise NotImplementedError(f"{layer}: `interpolation={interpolation!r}` is not supported yet "
                                      f"(only 'nearest' and 'bilinear').")

    def compute_output_shape(self, input_shape):
        return _out_shape(tuple(input_shape), self.size, self.data_format)

    def forward(self, x, training=False):
        layer = type(self).__name__
        validation.rank(layer, "inputs", x, self.rank + 2,
                        "(batch, spatial..., channels)" if self.data_format == "channels_last"
                        else "(batch, channels, spatial...)")
        self._saved = (tuple(x.shape),)  # backward needs only the input's shape
        if x.size == 0:  # a zero-size batch (or any empty axis): empty output, no kernel launch
            return kernels.array_module(x).zeros(self.compute_output_shape(x.shape), x.dtype)
        if self._on_kernels:
            spatial = x.shape[2:] if self.data_format == "channels_first" else x.shape[1:-1]
            validation.int32_sizes(layer, size=self.size, **{"inputs.shape": tuple(x.shape)})
            if any((n + 1) * s >= validation.INT32_LIMIT for n, s in zip(spatial, self.size)):
                raise ValueError(f"{layer}: the output's spatial sizes must stay below 2**31 on the kernel "
                                 f"path (the kernels use 32-bit sizes). Received: size={self.size}, "
                                 f"inputs.shape={tuple(x.shape)}")
            return upsample_kernel(x, self.size, self.data_format, self.interpolation)
        if self.interpolation == "bilinear":
            return upsample_bilinear(x, self.size, self.data_format)
        return upsample_nearest(x, self.size, self.data_format)

    def backward_impl(self, dy):
        (x_shape,) = self._saved
        if dy.size == 0:
            return self._xp.zeros(x_shape, dy.dtype)
        if self._on_kernels:
            return upsample_backward_kernel(dy, x_shape, self.size, self.data_format, self.interpolation)
        if self.interpolation == "bilinear":
            return upsample_bilinear_backward(dy, self.size, self.data_format)
        return upsample_nearest_backward(dy, self.size, self.data_format)


class UpSampling1D(_UpSampling):
    """Repeats each time step ``size`` times, as Keras 3's ``UpSampling1D``.

    Args:
        size: positive int, the upsampling factor (default 2).

    Input: (batch, steps, features). Output: (batch, steps * size, features).
    """

    rank = 1

    def __init__(self, size=2, name=None, **kwargs):
        Layer.__init__(self, name=name, **kwargs)  # Keras's UpSampling1D has no data_format
        self.size = validation.int_tuple(type(self).__name__, "size", size, 1)
        self.data_format = "channels_last"
        self.interpolation = "nearest"


class UpSampling2D(_UpSampling):
    """2-D upsampling, as Keras 3's ``UpSampling2D``.

    Args:
        size: int or tuple of 2 ints (rows, cols) factors (default (2, 2)).
        data_format: "channels_last" (default, None) or "channels_first".
        interpolation: "nearest" (repeat rows and columns) or "bilinear" (half-pixel
            centres, align_corners off, clamped at the edges, as Keras/TF).
            "bicubic", "lanczos3", "lanczos5" raise NotImplementedError.

    Input: (batch, rows, cols, channels) or (batch, channels, rows, cols).
    Output: (batch, rows * size[0], cols * size[1], channels) or channels_first likewise.
    """

    rank = 2

    def __init__(self, size=(2, 2), data_format=None, interpolation="nearest", name=None, **kwargs):
        super().__init__(size, data_format=data_format, interpolation=interpolation, name=name, **kwargs)


class UpSampling3D(_UpSampling):
    """3-D nearest upsampling, as Keras 3's ``UpSampling3D``.

    Args:
        size: int or tuple of 3 ints (dim1, dim2, dim3) factors (default (2, 2, 2)).
        data_format: "channels_last" (default, None) or "channels_first".

    Input: (batch, dim1, dim2, dim3, channels) or (batch, channels, dim1, dim2, dim3).
    Output: each dim multiplied by its factor.
    """

    rank = 3

    def __init__(self, size=(2, 2, 2), data_format=None, name=None, **kwargs):
        super().__init__(size, data_format=data_format, name=name, **kwargs)
