"""Upsampling ("deconvolution" family): UpSampling1D/2D/3D, nearest and bilinear (2-D).

- NumPy reference (``upsample_nearest`` ... ``upsample_bilinear_backward``): vectorised;
  bilinear is separable, two gathered taps per output along each axis.
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
from ._common import as_3d as _as_3d
from ._common import geometry_5d as _geometry_5d
from ._common import int32_args as _int32_args
from ._float16 import narrow, widen
from ._signature import with_signature
from .base import Layer

SOURCE = "upsampling.cu"
BLOCK = 256
VEC_BYTES = 16  # channels_last nearest kernels move 16-byte vectors when C allows

# (CL: channels_last; VEC: channels per thread, 16-byte vectors where C and the pointers allow,
# which only channels_last has)
_VECTORS = dict(channels_last=bool, vec=(1, 2, 4, 8), where=lambda channels_last, vec: channels_last or vec == 1)
NEAREST_FORWARD = kernels.Kernel(SOURCE, "upsample_nearest_forward", **_VECTORS)
NEAREST_BACKWARD = kernels.Kernel(SOURCE, "upsample_nearest_backward", **_VECTORS)
BILINEAR_FORWARD = kernels.Kernel(SOURCE, "upsample_bilinear_forward", channels_last=bool)
BILINEAR_BACKWARD = kernels.Kernel(SOURCE, "upsample_bilinear_backward", channels_last=bool)
NEAREST_FORWARD_ROWS = kernels.Kernel(SOURCE, "upsample_nearest_forward_rows")
BACKWARD_ROWS = {"nearest": kernels.Kernel(SOURCE, "upsample_nearest_backward_rows"),
                 "bilinear": kernels.Kernel(SOURCE, "upsample_bilinear_backward_rows")}
ROW_SEGMENTS = kernels.cuda_constant(SOURCE, "kRowSegments")  # 32-element segments the *_rows kernels load per row
ROW_KERNELS = True  # channels_first backward takes the warp-per-row kernels where they fit (tests switch it off)


def _spatial_axes(ndim, data_format):
    return tuple(range(2, ndim)) if data_format == "channels_first" else tuple(range(1, ndim - 1))


# ----------------------------------------------------------------------------- NumPy reference

def upsample_nearest(x, size, data_format="channels_last"):
    """Repeat each spatial position ``size[k]`` times along spatial axis k."""
    for axis, s in zip(_spatial_axes(x.ndim, data_format), size):
        x = np.repeat(x, s, axis=axis)
    return x


def upsample_nearest_backward(dy, size, data_format="channels_last"):
    """d(loss)/dx of nearest upsampling: the sum of each repeated block (float32 sums for float16).

    Separable: the s values of each block along one axis are added (whole-array adds of
    strided views), axis by axis from the last, so each pass works on data already reduced.
    """
    g = widen(dy)
    for axis, s in reversed(list(zip(_spatial_axes(dy.ndim, data_format), size))):
        if s == 1:
            continue
        blocks = g.reshape(g.shape[:axis] + (g.shape[axis] // s, s) + g.shape[axis + 1:])
        lead = (slice(None),) * (axis + 1)
        total = blocks[lead + (0,)].copy()
        for k in range(1, s):
            total += blocks[lead + (k,)]
        g = total
    if g is dy:  # every factor 1
        g = g.copy()
    return narrow(g, dy.dtype)


def bilinear_matrix(n, s, dtype=np.float64):
    """(n * s, n) interpolation weights along one axis (half-pixel centres, clamped taps).

    Computed in ``dtype`` with the kernels' operation order, so float32 weights are the
    kernels' float32 weights.
    """
    i0, i1, frac = bilinear_taps(n, s, dtype)
    m = np.zeros((n * s, n), dtype)
    rows = np.arange(n * s)
    np.add.at(m, (rows, i0), dtype(1) - frac)
    np.add.at(m, (rows, i1), frac)
    return m


def bilinear_taps(n, s, dtype=np.float64):
    """(i0, i1, frac) of each output along an axis of input size n and factor s: the output
    reads input i0 with weight 1 - frac and i1 with weight frac (src = (o + 0.5) / s - 0.5,
    i0 = floor(src), i1 = i0 + 1, both clamped into [0, n - 1]), computed in ``dtype`` with
    the kernels' operation order."""
    dtype = np.dtype(dtype).type
    o = np.arange(n * s, dtype=dtype)
    src = (o + dtype(0.5)) / dtype(s) - dtype(0.5)
    fl = np.floor(src)
    frac = src - fl
    i0 = np.clip(fl.astype(np.int64), 0, n - 1)
    i1 = np.clip(fl.astype(np.int64) + 1, 0, n - 1)
    return i0, i1, frac


def _along(ndim, axis, index):
    full = [slice(None)] * ndim
    full[axis] = index
    return tuple(full)


def _runs(index, weight):
    """Maximal runs (a, b, d, w) of positions j in [a, b) with index[j] == j + d and the same
    non-zero weight w: a gather by ``index`` as a few slices times a scalar (the interior and
    the clamped ends). Positions of weight 0 are left out: such a tap is not read."""
    runs = []
    for j in range(len(index)):
        d, w = int(index[j]) - j, weight[j]
        if w == 0:
            continue
        if runs and runs[-1][1] == j and runs[-1][2] == d and runs[-1][3] == w:
            runs[-1][1] = j + 1
        else:
            runs.append([j, j + 1, d, w])
    return runs


def _phases(n, s, dtype):
    """Per phase k in [0, s) (the outputs o = i * s + k): the runs of its two taps."""
    i0, i1, frac = bilinear_taps(n, s, dtype)
    for k in range(s):
        yield k, _runs(i0[k::s], (1 - frac)[k::s]), _runs(i1[k::s], frac[k::s])


def _interpolate(v, axis, s):
    """Linear interpolation of v along one axis by the integer factor s:
    out[o] = v[i0] * (1 - frac) + v[i1] * frac, a tap of weight 0 not read."""
    n, nd = v.shape[axis], v.ndim
    out = np.empty(v.shape[:axis] + (n * s,) + v.shape[axis + 1:], v.dtype)
    scratch = np.empty(v.size, v.dtype)  # one phase's products
    for k, runs0, runs1 in _phases(n, s, v.dtype):
        phase = out[_along(nd, axis, slice(k, None, s))]  # a view: the outputs of this phase
        for a, b, d, w in runs0:  # every output reads its first tap (weight 1 - frac > 0)
            np.multiply(v[_along(nd, axis, slice(a + d, b + d))], w, out=phase[_along(nd, axis, slice(a, b))])
        for a, b, d, w in runs1:
            target = phase[_along(nd, axis, slice(a, b))]
            product = np.multiply(v[_along(nd, axis, slice(a + d, b + d))], w, out=_scratch(scratch, target))
            target += product
    return out


def _scratch(buffer, like):
    """A view of the flat scratch ``buffer`` shaped like ``like`` (reused: no fresh pages per product)."""
    return buffer[:like.size].reshape(like.shape)


def _interpolate_transposed(g, axis, s):
    """The transpose of :func:`_interpolate`: the gradient of v from the gradient g of its output."""
    nd = g.ndim
    n = g.shape[axis] // s
    dv = np.zeros(g.shape[:axis] + (n,) + g.shape[axis + 1:], g.dtype)
    scratch = np.empty(dv.size, g.dtype)
    groups = {}  # contributions with the same target slice and weight: summed before one multiply
    for k, runs0, runs1 in _phases(n, s, g.dtype):
        for a, b, d, w in runs0 + runs1:
            groups.setdefault((a, b, d, w), []).append(k)
    for (a, b, d, w), phases in groups.items():
        target = dv[_along(nd, axis, slice(a + d, b + d))]
        parts = [g[_along(nd, axis, slice(k + a * s, k + (b - 1) * s + 1, s))] for k in phases]
        total = _scratch(scratch, target)
        if len(parts) == 1:
            np.multiply(parts[0], w, out=total)
        else:
            np.add(parts[0], parts[1], out=total)
            for part in parts[2:]:
                total += part
            total *= w
        target += total
    return dv


def upsample_bilinear(x, size, data_format="channels_last"):
    """Bilinear upsampling of a 4-D input by integer factors (size_h, size_w).

    Per output: top = x[h0, w0] (1 - fw) + x[h0, w1] fw, bottom likewise on row h1,
    y = top (1 - fh) + bottom fh, in float32 (float64 for float64): columns first, then
    rows, as the kernel. An output reads only its taps of non-zero weight, so a NaN or inf
    reaches only the outputs whose interpolation footprint holds it.
    """
    h_axis, w_axis = _spatial_axes(x.ndim, data_format)
    y = _interpolate(_interpolate(widen(x), w_axis, size[1]), h_axis, size[0])
    return narrow(y, x.dtype)


def upsample_bilinear_backward(dy, size, data_format="channels_last"):
    """d(loss)/dx of bilinear upsampling (the transposed interpolation, taps of weight 0 skipped)."""
    h_axis, w_axis = _spatial_axes(dy.ndim, data_format)
    dx = _interpolate_transposed(_interpolate_transposed(widen(dy), w_axis, size[1]), h_axis, size[0])
    return narrow(dx, dy.dtype)


# ----------------------------------------------------------------------------- kernel path

@functools.lru_cache(maxsize=512)
def _kernel_args(in_shape, size, data_format):
    """The 8 int32 arguments (N, C, D, H, W, SD, SH, SW) of the upsampling kernels."""
    return _geometry_5d(in_shape, data_format) + _int32_args(*_as_3d(size))


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
    cl = data_format == "channels_last"
    if interpolation == "nearest" and ROW_KERNELS and data_format == "channels_first":
        # a warp per 32 words of input columns of a row: loaded once, repeated into the output rows
        per_warp = 32 * max(1, 4 // x.dtype.itemsize)
        warps = math.prod(x.shape[:-1]) * kernels.ceil_div(x.shape[-1], per_warp)
        NEAREST_FORWARD_ROWS.launch(x.dtype, kernels.grid_1d(32 * warps, BLOCK), BLOCK, (x, y, *args))
    elif interpolation == "nearest":
        vec = _vector_width((x, y), int(args[1]), data_format, x.dtype.itemsize)
        NEAREST_FORWARD.launch(x.dtype, kernels.grid_1d(y.size // vec, BLOCK), BLOCK, (x, y, *args),
                               channels_last=cl, vec=vec)
    else:
        BILINEAR_FORWARD.launch(x.dtype, kernels.grid_1d(y.size, BLOCK), BLOCK, (x, y, *args), channels_last=cl)
    return y


def upsample_backward_kernel(dy, x_shape, size, data_format, interpolation="nearest"):
    """Kernel path of the backward pass (a gather per input element)."""
    xp = kernels.array_module(dy)
    dy = xp.ascontiguousarray(dy)
    dx = xp.empty(x_shape, dy.dtype)
    args = _kernel_args(tuple(x_shape), size, data_format)
    cl = data_format == "channels_last"
    factor = size[-1]  # along the contiguous axis of channels_first rows
    span = 32 * factor if interpolation == "nearest" else 34 * factor
    if ROW_KERNELS and data_format == "channels_first" and span + 3 <= 32 * ROW_SEGMENTS:
        # a warp per 32 input columns of a row: the dy columns it reads are loaded once, coalesced
        warps = math.prod(x_shape[:-1]) * kernels.ceil_div(x_shape[-1], 32)
        BACKWARD_ROWS[interpolation].launch(dy.dtype, kernels.grid_1d(32 * warps, BLOCK), BLOCK, (dy, dx, *args))
        return dx
    if interpolation == "nearest":
        vec = _vector_width((dy, dx), int(args[1]), data_format, dy.dtype.itemsize)
        NEAREST_BACKWARD.launch(dy.dtype, kernels.grid_1d(dx.size // vec, BLOCK), BLOCK, (dy, dx, *args),
                                channels_last=cl, vec=vec)
    else:
        BILINEAR_BACKWARD.launch(dy.dtype, kernels.grid_1d(dx.size, BLOCK), BLOCK, (dy, dx, *args),
                                 channels_last=cl)
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


# inspect.signature lists every argument (Keras's UpSampling1D/3D have no data_format/interpolation)
with_signature(UpSampling1D, exclude=("data_format", "interpolation"))
with_signature(UpSampling2D)
with_signature(UpSampling3D, exclude=("interpolation",))
