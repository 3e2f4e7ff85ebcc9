"""Pooling: MaxPooling/AveragePooling 1D/2D/3D and GlobalMax/GlobalAverage pooling 1D/2D/3D.

Three parts, as everywhere in gpulayers:
- the NumPy reference (``max_pool_forward`` ... ``global_pool_backward``): the
  specification, vectorised, callable on its own;
- the kernel path (``*_kernel``), running ``cuda/pooling.cu`` on the GPU or the simulator;
- the Keras 3 layer classes, which pick one of the two by the input's array module.

Output size (Keras/TF): ``padding="valid"``: out = floor((in - pool) / stride) + 1;
``padding="same"``: out = ceil(in / stride), pad_total = max((out - 1) * stride + pool - in, 0),
pad_before = pad_total // 2. Max pooling pads with -inf; average pooling divides by the
number of real cells in each window.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import kernels, validation
from .base import Layer

SOURCE = "pooling.cu"
BLOCK = 256
MAX_SAVED_WINDOW = 256  # windows up to this many cells keep a one-byte argmax for backward

kernels.declare(SOURCE, [
    f"{name}<{{T}}, {cl}>"
    for name in ("max_pool_forward", "max_pool_backward", "avg_pool_forward", "avg_pool_backward",
                 "global_pool_forward_rows", "global_pool_forward_cols", "global_avg_backward",
                 "global_max_backward")
    for cl in ("true", "false")
] + [f"pool_{direction}_rows<{{T}}, {is_max}>" for direction in ("forward", "backward")
       for is_max in ("true", "false")])
ROW_SEGMENTS = 4  # pool_*_rows load up to this many 32-element segments per row (kRowSegments)
ROW_KERNELS = True  # channels_first takes the warp-per-row kernels where they fit (tests switch it off)


# ----------------------------------------------------------------------------- geometry

def pool_geometry(in_sizes, pool_size, strides, padding):
    """(output sizes, padding before each axis) per spatial axis, Keras's formulas."""
    out, pad_before = [], []
    for n, k, s in zip(in_sizes, pool_size, strides):
        if padding == "valid":
            o = (n - k) // s + 1 if n >= k else 0
            out.append(o)
            pad_before.append(0)
        else:
            o = -(-n // s)
            out.append(o)
            pad_before.append(max((o - 1) * s + k - n, 0) // 2)
    return tuple(out), tuple(pad_before)


def _acc_dtype(dtype):
    """Accumulate type: float32 for float16 and float32, float64 for float64."""
    return np.float64 if dtype == np.float64 else np.float32


def _to_channels_last(x, data_format):
    return np.moveaxis(x, 1, -1) if data_format == "channels_first" else x


def _from_channels_last(x, data_format):
    return np.moveaxis(x, -1, 1) if data_format == "channels_first" else x


def _padded_windows(xcl, pool_size, strides, out, pad_before, fill):
    """Windows (N, *out, C, prod(pool)) of channels-last xcl padded with ``fill``."""
    k = len(pool_size)
    pad_after = [max((o - 1) * s + p - n - b, 0)
                 for o, s, p, n, b in zip(out, strides, pool_size, xcl.shape[1:-1], pad_before)]
    padded = np.pad(xcl, [(0, 0)] + list(zip(pad_before, pad_after)) + [(0, 0)], constant_values=fill)
    win = sliding_window_view(padded, pool_size, axis=tuple(range(1, k + 1)))
    win = win[(slice(None),) + tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out, strides))]
    return win.reshape(win.shape[: k + 2] + (-1,))


def _scatter_windows(values_per_offset, in_shape_cl, pool_size, strides, out, pad_before, dtype):
    """Sum, into a channels-last array of in_shape_cl, values_per_offset(j) placed at window cell j."""
    padded_sizes = [max((o - 1) * s + p, n + b) for o, s, p, n, b in
                    zip(out, strides, pool_size, in_shape_cl[1:-1], pad_before)]
    grad = np.zeros((in_shape_cl[0], *padded_sizes, in_shape_cl[-1]), dtype)
    for j, cell in enumerate(np.ndindex(*pool_size)):  # loop over window cells, not outputs
        sl = tuple(slice(c, c + (o - 1) * s + 1, s) for c, o, s in zip(cell, out, strides))
        grad[(slice(None),) + sl] += values_per_offset(j)
    crop = tuple(slice(b, b + n) for b, n in zip(pad_before, in_shape_cl[1:-1]))
    return grad[(slice(None),) + crop]


def _check_geometry(layer, x_shape, pool_size, strides, padding, data_format, on_kernels=False):
    """Validate the input shape (a zero-size batch or channel axis is fine, empty spatial axes
    are not) and, on the kernel path, the kernels' 32-bit geometry."""
    spatial = x_shape[2:] if data_format == "channels_first" else x_shape[1:-1]
    out, pads = pool_geometry(spatial, pool_size, strides, padding)
    if min(out) <= 0 or 0 in spatial:
        raise ValueError(f"{layer}: the output would be empty: input spatial size {tuple(spatial)} with "
                         f"pool_size={pool_size}, strides={strides}, padding={padding!r}. "
                         f"Received: inputs.shape={tuple(x_shape)}")
    if on_kernels:
        validation.int32_sizes(layer, pool_size=pool_size, strides=strides, **{"inputs.shape": tuple(x_shape)})
    return spatial, out, pads


def _normalize(pool_size, strides, padding, data_format, k, layer="pooling"):
    pool_size = validation.int_tuple(layer, "pool_size", pool_size, k)
    strides = validation.int_tuple(layer, "strides", strides, k, allow_none=True) or pool_size
    padding = validation.choice(layer, "padding", padding, ("valid", "same"))
    return pool_size, strides, padding, validation.data_format(layer, data_format)


# ----------------------------------------------------------------------------- NumPy reference

def max_pool_forward(x, pool_size, strides=None, padding="valid", data_format="channels_last"):
    """Max pooling of x (N, *spatial, C) or (N, C, *spatial) with -inf padding."""
    k = x.ndim - 2
    pool_size, strides, padding, data_format = _normalize(pool_size, strides, padding, data_format, k)
    y, _ = _max_pool_argmax(x, pool_size, strides, padding, data_format)
    return y


def _max_pool_argmax(x, pool_size, strides, padding, data_format):
    """(y, window offset of the first maximum) in channels-last order for the offsets."""
    acc = _acc_dtype(x.dtype)
    xcl = _to_channels_last(x, data_format).astype(acc)
    out, pads = pool_geometry(xcl.shape[1:-1], pool_size, strides, padding)
    win = _padded_windows(xcl, pool_size, strides, out, pads, -np.inf)
    idx = np.argmax(win, axis=-1)  # first maximum; NaN counts as the maximum
    # A padding cell wins only if every real cell is -inf: take the first real cell instead.
    real = _padded_windows(np.ones(xcl.shape, bool), pool_size, strides, out, pads, False)
    chosen_real = np.take_along_axis(real, idx[..., None], -1)[..., 0]
    idx = np.where(chosen_real, idx, np.argmax(real, axis=-1))
    y = np.take_along_axis(win, idx[..., None], -1)[..., 0]
    return _from_channels_last(y, data_format).astype(x.dtype), idx


def max_pool_backward(x, dy, pool_size, strides=None, padding="valid", data_format="channels_last"):
    """d(loss)/dx of max pooling: each window's gradient goes to its first maximum."""
    k = x.ndim - 2
    pool_size, strides, padding, data_format = _normalize(pool_size, strides, padding, data_format, k)
    acc = _acc_dtype(x.dtype)
    _, idx = _max_pool_argmax(x, pool_size, strides, padding, data_format)
    dycl = _to_channels_last(dy, data_format).astype(acc)
    out = dycl.shape[1:-1]
    _, pads = pool_geometry(_to_channels_last(x, data_format).shape[1:-1], pool_size, strides, padding)
    dx = _scatter_windows(lambda j: np.where(idx == j, dycl, 0), _to_channels_last(x, data_format).shape,
                          pool_size, strides, out, pads, acc)
    return _from_channels_last(dx, data_format).astype(x.dtype)


def _window_counts(in_shape_cl, pool_size, strides, out, pads):
    """Real cells per window, shaped (1, *out, 1)."""
    ones = np.ones((1, *in_shape_cl[1:-1], 1), np.int64)
    return _padded_windows(ones, pool_size, strides, out, pads, 0).sum(-1)


def avg_pool_forward(x, pool_size, strides=None, padding="valid", data_format="channels_last"):
    """Average pooling; each window's sum is divided by its number of real (unpadded) cells."""
    k = x.ndim - 2
    pool_size, strides, padding, data_format = _normalize(pool_size, strides, padding, data_format, k)
    acc = _acc_dtype(x.dtype)
    xcl = _to_channels_last(x, data_format).astype(acc)
    out, pads = pool_geometry(xcl.shape[1:-1], pool_size, strides, padding)
    total = _padded_windows(xcl, pool_size, strides, out, pads, 0).sum(-1)
    y = total / _window_counts(xcl.shape, pool_size, strides, out, pads)
    return _from_channels_last(y, data_format).astype(x.dtype)


def avg_pool_backward(x_shape, dy, pool_size, strides=None, padding="valid", data_format="channels_last"):
    """d(loss)/dx of average pooling for an input of shape x_shape."""
    k = len(x_shape) - 2
    pool_size, strides, padding, data_format = _normalize(pool_size, strides, padding, data_format, k)
    acc = _acc_dtype(dy.dtype)
    shape_cl = tuple(x_shape[:1]) + tuple(x_shape[2:]) + (x_shape[1],) \
        if data_format == "channels_first" else tuple(x_shape)
    dycl = _to_channels_last(dy, data_format).astype(acc)
    out, pads = pool_geometry(shape_cl[1:-1], pool_size, strides, padding)
    share = dycl / _window_counts(shape_cl, pool_size, strides, out, pads)
    dx = _scatter_windows(lambda j: share, shape_cl, pool_size, strides, out, pads, acc)
    return _from_channels_last(dx, data_format).astype(dy.dtype)


def global_pool_forward(x, op, data_format="channels_last", keepdims=False):
    """Global "max" or "avg" pooling over every spatial axis."""
    acc = _acc_dtype(x.dtype)
    axes = tuple(range(2, x.ndim)) if data_format == "channels_first" else tuple(range(1, x.ndim - 1))
    xa = x.astype(acc)
    y = xa.max(axis=axes, keepdims=keepdims) if op == "max" else xa.mean(axis=axes, keepdims=keepdims)
    return y.astype(x.dtype)


def global_pool_backward(x, dy, op, data_format="channels_last"):
    """d(loss)/dx of global pooling; dy is (N, C) or keepdims-shaped."""
    acc = _acc_dtype(x.dtype)
    xcl = _to_channels_last(x, data_format)
    n, c = xcl.shape[0], xcl.shape[-1]
    rows = xcl.reshape(n, -1, c)  # (N, L, C)
    g = dy.reshape(n, 1, c).astype(acc) if data_format == "channels_last" else \
        dy.reshape(n, c)[:, None, :].astype(acc)
    if op == "max":
        first = np.argmax(rows, axis=1)  # first maximum, NaN counts as the maximum
        dx = np.zeros(rows.shape, acc)
        np.put_along_axis(dx, first[:, None, :], g, axis=1)
    else:
        dx = np.broadcast_to(g / rows.shape[1], rows.shape)
    return _from_channels_last(dx.reshape(xcl.shape), data_format).astype(x.dtype)


# ----------------------------------------------------------------------------- kernel path

def _geometry_args(x_shape, data_format, pool_size, strides, out, pads):
    """The 17 int32 geometry arguments of the windowed kernels (5-D view, 3 spatial axes)."""
    k = len(pool_size)
    if data_format == "channels_first":
        n, c, spatial = x_shape[0], x_shape[1], x_shape[2:]
    else:
        n, c, spatial = x_shape[0], x_shape[-1], x_shape[1:-1]
    lead = (1,) * (3 - k)
    values = (n, c, *lead, *spatial, *lead, *out, *lead, *pool_size, *lead, *strides,
              *((0,) * (3 - k)), *pads)
    return tuple(np.int32(v) for v in values)


def _cl(data_format):
    return "true" if data_format == "channels_last" else "false"


@functools.lru_cache(maxsize=512)
def _kernel_geometry(x_shape, pool_size, strides, padding, data_format):
    """(output shape, the 17 geometry arguments) of a windowed pooling kernel; memoised, so a
    layer called again on the same shape does no shape arithmetic."""
    spatial = x_shape[2:] if data_format == "channels_first" else x_shape[1:-1]
    out, pads = pool_geometry(spatial, pool_size, strides, padding)
    y_shape = (x_shape[0], x_shape[1], *out) if data_format == "channels_first" else (x_shape[0], *out, x_shape[-1])
    return y_shape, _geometry_args(x_shape, data_format, pool_size, strides, out, pads)


def _rows_kernel(x_shape, pool_size, strides, data_format):
    """Whether the forward pass takes pool_forward_rows: channels_first with a column stride
    above 1, when a warp's input columns fit in ROW_SEGMENTS segments of 32."""
    return (ROW_KERNELS and data_format == "channels_first" and strides[-1] > 1
            and 31 * strides[-1] + pool_size[-1] <= 32 * ROW_SEGMENTS)


def _rows_backward(pool_size, strides, data_format):
    """Whether backward takes pool_backward_rows: channels_first, when the dy columns a warp of
    32 input columns reads fit in ROW_SEGMENTS segments."""
    return (ROW_KERNELS and data_format == "channels_first"
            and (31 + pool_size[-1]) // strides[-1] + 2 <= 32 * ROW_SEGMENTS)


def _launch_backward_rows(is_max, dy, argmax, dx, x_shape, geom):
    warps = math.prod(x_shape[:-1]) * kernels.ceil_div(x_shape[-1], 32)
    kernels.launch(SOURCE, f"pool_backward_rows<{{T}}, {is_max}>", dy.dtype, kernels.grid_1d(32 * warps, BLOCK),
                   BLOCK, (dy, argmax, dx, *geom))


def max_pool_forward_kernel(x, pool_size, strides, padding, data_format):
    """Kernel path of max pooling: (y, one-byte window argmax or None when recomputed)."""
    xp = kernels.array_module(x)
    x = xp.ascontiguousarray(x)
    y_shape, geom = _kernel_geometry(tuple(x.shape), pool_size, strides, padding, data_format)
    y = xp.empty(y_shape, x.dtype)
    save = math.prod(pool_size) <= MAX_SAVED_WINDOW
    argmax = xp.empty(y_shape if save else (1,), np.uint8)
    _launch_forward("true", "max_pool_forward", x, y, (argmax, np.int32(save)), y_shape, pool_size, strides,
                    data_format, geom)
    return y, (argmax if save else None)


def _launch_forward(is_max, direct, x, y, extra, y_shape, pool_size, strides, data_format, geom):
    """Launch the row kernel (channels_first, strided columns) or the direct one."""
    if _rows_kernel(x.shape, pool_size, strides, data_format):
        warps = math.prod(y_shape[:-1]) * kernels.ceil_div(y_shape[-1], 32)
        kernels.launch(SOURCE, f"pool_forward_rows<{{T}}, {is_max}>", x.dtype, kernels.grid_1d(32 * warps, BLOCK),
                       BLOCK, (x, y, *extra, *geom))
    else:
        kernels.launch(SOURCE, f"{direct}<{{T}}, {_cl(data_format)}>", x.dtype, kernels.grid_1d(y.size, BLOCK),
                       BLOCK, (x, y, *(extra if is_max == "true" else ()), *geom))


def max_pool_backward_kernel(x, argmax, dy, pool_size, strides, padding, data_format):
    xp = kernels.array_module(x)
    x, dy = xp.ascontiguousarray(x), xp.ascontiguousarray(dy)
    _, geom = _kernel_geometry(tuple(x.shape), pool_size, strides, padding, data_format)
    dx = xp.empty(x.shape, x.dtype)
    saved = argmax is not None
    if saved and _rows_backward(pool_size, strides, data_format):
        _launch_backward_rows("true", dy, argmax, dx, x.shape, geom)
        return dx
    kernels.launch(SOURCE, f"max_pool_backward<{{T}}, {_cl(data_format)}>", x.dtype,
                   kernels.grid_1d(x.size, BLOCK), BLOCK,
                   (x, argmax if saved else xp.empty((1,), np.uint8), np.int32(saved), dy, dx, *geom))
    return dx


def avg_pool_forward_kernel(x, pool_size, strides, padding, data_format):
    xp = kernels.array_module(x)
    x = xp.ascontiguousarray(x)
    y_shape, geom = _kernel_geometry(tuple(x.shape), pool_size, strides, padding, data_format)
    y = xp.empty(y_shape, x.dtype)
    no_argmax = (xp.empty((1,), np.uint8), np.int32(0)) if _rows_kernel(x.shape, pool_size, strides, data_format) \
        else ()
    _launch_forward("false", "avg_pool_forward", x, y, no_argmax, y_shape, pool_size, strides, data_format, geom)
    return y


def avg_pool_backward_kernel(x_shape, dy, pool_size, strides, padding, data_format):
    xp = kernels.array_module(dy)
    dy = xp.ascontiguousarray(dy)
    _, geom = _kernel_geometry(tuple(x_shape), pool_size, strides, padding, data_format)
    dx = xp.empty(x_shape, dy.dtype)
    if _rows_backward(pool_size, strides, data_format):
        _launch_backward_rows("false", dy, xp.empty((1,), np.uint8), dx, x_shape, geom)
        return dx
    kernels.launch(SOURCE, f"avg_pool_backward<{{T}}, {_cl(data_format)}>", dy.dtype,
                   kernels.grid_1d(dx.size, BLOCK), BLOCK, (dy, dx, *geom))
    return dx


def _rows_block(length):
    """Threads per block for a row reduction: a multiple of 32, at most 256."""
    return int(min(BLOCK, max(32, -(-length // 32) * 32)))


def _cols_block(length, channels):
    """(threads, channels per block) of the channels_last global pooling kernel: 32 channels (or
    all C when C < 32) times up to 1024 // that many rows, no more rows than positions."""
    per_block = 32 if channels >= 32 else channels
    rows = max(1, min(1024 // per_block, length))
    return -(-rows * per_block // 32) * 32, per_block


def global_pool_forward_kernel(x, op, data_format, keepdims):
    """Kernel path of global pooling: (y, int32 position of each maximum or None)."""
    xp = kernels.array_module(x)
    x = xp.ascontiguousarray(x)
    n, c = x.shape[0], (x.shape[1] if data_format == "channels_first" else x.shape[-1])
    length = math.prod(x.shape[2:] if data_format == "channels_first" else x.shape[1:-1])
    if length >= validation.INT32_LIMIT:
        raise ValueError(f"Global{'Max' if op == 'max' else 'Average'}Pooling: the spatial size must be below "
                         f"2**31 on the kernel path (positions are 32-bit). Received: inputs.shape={tuple(x.shape)}")
    y = xp.empty((n, c), x.dtype)
    argmax = xp.empty((n, c) if op == "max" else (1,), np.int32)
    is_max = "true" if op == "max" else "false"
    if data_format == "channels_first":
        kernels.launch(SOURCE, f"global_pool_forward_rows<{{T}}, {is_max}>", x.dtype,
                       min(n * c, 2**20), _rows_block(length), (x, y, argmax, np.int64(n * c), np.int64(length)))
    else:
        threads, per_block = _cols_block(length, c)
        state = (8 if x.dtype == np.float64 else 4) + (4 if op == "max" else 0)  # bytes per thread
        kernels.launch(SOURCE, f"global_pool_forward_cols<{{T}}, {is_max}>", x.dtype,
                       n * kernels.ceil_div(c, per_block), threads,
                       (x, y, argmax, np.int32(n), np.int32(c), np.int64(length), np.int32(per_block)),
                       shared_mem=threads * state)
    if keepdims:
        ones = (1,) * (x.ndim - 2)
        y = y.reshape((n, c, *ones) if data_format == "channels_first" else (n, *ones, c))
    return y, (argmax if op == "max" else None)


def global_pool_backward_kernel(x_shape, argmax, dy, op, data_format):
    """Kernel path of global pooling's backward; max pooling uses the forward's ``argmax``."""
    xp = kernels.array_module(dy)
    dy = xp.ascontiguousarray(dy)
    n, c = x_shape[0], (x_shape[1] if data_format == "channels_first" else x_shape[-1])
    length = math.prod(x_shape[2:] if data_format == "channels_first" else x_shape[1:-1])
    dx = xp.empty(x_shape, dy.dtype)
    geometry = (np.int32(n), np.int32(c), np.int64(length))
    if op == "avg":
        kernels.launch(SOURCE, f"global_avg_backward<{{T}}, {_cl(data_format)}>", dy.dtype,
                       kernels.grid_1d(dx.size, BLOCK), BLOCK, (dy, dx, *geometry))
    else:
        kernels.launch(SOURCE, f"global_max_backward<{{T}}, {_cl(data_format)}>", dy.dtype,
                       kernels.grid_1d(dx.size, BLOCK), BLOCK, (dy, argmax, dx, *geometry))
    return dx


# ----------------------------------------------------------------------------- layers

class _Pooling(Layer):
    rank = 0
    op = ""
    default_pool = 2

    def __init__(self, pool_size=None, strides=None, padding="valid", data_format=None, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        layer = type(self).__name__
        if pool_size is None:
            pool_size = (self.default_pool,) * self.rank
        self.pool_size = validation.int_tuple(layer, "pool_size", pool_size, self.rank)
        self.strides = validation.int_tuple(layer, "strides", strides, self.rank, allow_none=True) or self.pool_size
        self.padding = validation.choice(layer, "padding", padding, ("valid", "same"))
        self.data_format = validation.data_format(layer, data_format)

    def compute_output_shape(self, input_shape):
        spatial = input_shape[2:] if self.data_format == "channels_first" else input_shape[1:-1]
        out, _ = pool_geometry(spatial, self.pool_size, self.strides, self.padding)
        if self.data_format == "channels_first":
            return (input_shape[0], input_shape[1], *out)
        return (input_shape[0], *out, input_shape[-1])

    def forward(self, x, training=False):
        layer = type(self).__name__
        validation.rank(layer, "inputs", x, self.rank + 2,
                        f"(batch, {'spatial..., channels' if self.data_format == 'channels_last' else 'channels, spatial...'})")
        on_kernels = self._on_kernels
        _check_geometry(layer, x.shape, self.pool_size, self.strides, self.padding, self.data_format, on_kernels)
        args = (self.pool_size, self.strides, self.padding, self.data_format)
        if x.size == 0:  # a zero-size batch (or channel axis): empty output, no kernel launch
            self._saved = (None, tuple(x.shape), None)
            return kernels.array_module(x).zeros(self.compute_output_shape(tuple(x.shape)), x.dtype)
        if self.op == "max":
            if on_kernels:
                y, argmax = max_pool_forward_kernel(x, *args)
            else:
                y, argmax = max_pool_forward(x, *args), None
            # backward reads x only to recompute the window maxima (no saved argmax): keep a copy then;
            # with a saved argmax the kernels read only x's shape
            self._saved = (self._keep(x) if argmax is None else x, tuple(x.shape), argmax)
            return y
        y = avg_pool_forward_kernel(x, *args) if on_kernels else avg_pool_forward(x, *args)
        self._saved = (None, tuple(x.shape), None)  # average pooling's backward needs only the shape
        return y

    def backward_impl(self, dy):
        x, x_shape, argmax = self._saved
        if dy.size == 0:
            return self._xp.zeros(x_shape, dy.dtype)
        args = (self.pool_size, self.strides, self.padding, self.data_format)
        if self.op == "max":
            if self._on_kernels:
                return max_pool_backward_kernel(x, argmax, dy, *args)
            return max_pool_backward(x, dy, *args)
        if self._on_kernels:
            return avg_pool_backward_kernel(x_shape, dy, *args)
        return avg_pool_backward(x_shape, dy, *args)


class _GlobalPooling(Layer):
    rank = 0
    op = ""

    def __init__(self, data_format=None, keepdims=False, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        layer = type(self).__name__
        self.data_format = validation.data_format(layer, data_format)
        self.keepdims = validation.boolean(layer, "keepdims", keepdims)

    def compute_output_shape(self, input_shape):
        n, c = input_shape[0], (input_shape[1] if self.data_format == "channels_first" else input_shape[-1])
        if not self.keepdims:
            return (n, c)
        ones = (1,) * self.rank
        return (n, c, *ones) if self.data_format == "channels_first" else (n, *ones, c)

    def forward(self, x, training=False, mask=None):
        layer = type(self).__name__
        validation.unsupported(layer, mask=(mask, None))
        validation.rank(layer, "inputs", x, self.rank + 2,
                        f"(batch, {'spatial..., channels' if self.data_format == 'channels_last' else 'channels, spatial...'})")
        spatial = x.shape[2:] if self.data_format == "channels_first" else x.shape[1:-1]
        if 0 in spatial:
            raise ValueError(f"{layer}: `inputs` must not have an empty spatial axis. "
                             f"Received: inputs.shape={tuple(x.shape)}")
        if x.size == 0:  # a zero-size batch (or channel axis): empty output, no kernel launch
            self._saved = (None, tuple(x.shape))
            return kernels.array_module(x).zeros(self.compute_output_shape(tuple(x.shape)), x.dtype)
        if self._on_kernels:  # the kernels take N and C as 32-bit ints (the spatial extent as 64-bit)
            n, c = x.shape[0], (x.shape[1] if self.data_format == "channels_first" else x.shape[-1])
            if max(n, c) >= validation.INT32_LIMIT:
                raise ValueError(f"{layer}: the batch and channel sizes must be below 2**31 on the kernel path "
                                 f"(the kernels use 32-bit sizes). Received: inputs.shape={tuple(x.shape)}")
            y, argmax = global_pool_forward_kernel(x, self.op, self.data_format, self.keepdims)
            # max: the position of each maximum (int32 per output); average: x's shape only
            self._saved = (argmax, tuple(x.shape))
            return y
        y = global_pool_forward(x, self.op, self.data_format, self.keepdims)
        # max: the reference finds the maximum again in x, so keep a copy; average: x's shape only
        self._saved = (self._keep(x) if self.op == "max" else x, tuple(x.shape))
        return y

    def backward_impl(self, dy):
        x, x_shape = self._saved
        if dy.size == 0:
            return self._xp.zeros(x_shape, dy.dtype)
        if self._on_kernels:
            return global_pool_backward_kernel(x_shape, x, dy, self.op, self.data_format)
        return global_pool_backward(x, dy, self.op, self.data_format)


_POOL_DOC = """{op} pooling over {rank} spatial axis(es), as Keras 3's ``{name}``.

    Args:
        pool_size: int or tuple of {rank} ints, the window (default {default}).
        strides: int, tuple of {rank} ints, or None (= pool_size).
        padding: "valid" (no padding) or "same" (output = ceil(input / stride); the total
            padding max((out - 1) * stride + pool - in, 0) is split floor half before).
            {padnote}
        data_format: "channels_last" (default, None) or "channels_first".

    Input: (batch, {dims}, channels) for channels_last, (batch, channels, {dims}) for
    channels_first. Output: same layout with each spatial size
    floor((in - pool) / stride) + 1 ("valid") or ceil(in / stride) ("same").
    """

_GLOBAL_DOC = """Global {op} pooling over {rank} spatial axis(es), as Keras 3's ``{name}``.

    Args:
        data_format: "channels_last" (default, None) or "channels_first".
        keepdims: keep the spatial axes with size 1.

    Input: (batch, {dims}, channels) or (batch, channels, {dims}). Output: (batch, channels),
    or with keepdims (batch, {ones}, channels) / (batch, channels, {ones}).
    """


def _make(kind, op, rank):
    dims = ", ".join(("dim1", "dim2", "dim3")[:rank]) if rank > 1 else "steps"
    if kind == "window":
        name = f"{'Max' if op == 'max' else 'Average'}Pooling{rank}D"
        doc = _POOL_DOC.format(op="Max" if op == "max" else "Average", rank=rank, name=name,
                               default=2 if rank == 1 else (2,) * rank, dims=dims,
                               padnote="Padded cells are -inf." if op == "max"
                               else "Each window is divided by its number of real cells.")
        cls = type(name, (_Pooling,), {"rank": rank, "op": op, "__doc__": doc})
    else:
        name = f"Global{'Max' if op == 'max' else 'Average'}Pooling{rank}D"
        doc = _GLOBAL_DOC.format(op="max" if op == "max" else "average", rank=rank, name=name,
                                 dims=dims, ones=", ".join(["1"] * rank))
        cls = type(name, (_GlobalPooling,), {"rank": rank, "op": op, "__doc__": doc})
    cls.__module__ = __name__
    return cls


MaxPooling1D = _make("window", "max", 1)
MaxPooling2D = _make("window", "max", 2)
MaxPooling3D = _make("window", "max", 3)
AveragePooling1D = _make("window", "avg", 1)
AveragePooling2D = _make("window", "avg", 2)
AveragePooling3D = _make("window", "avg", 3)
GlobalMaxPooling1D = _make("global", "max", 1)
GlobalMaxPooling2D = _make("global", "max", 2)
GlobalMaxPooling3D = _make("global", "max", 3)
GlobalAveragePooling1D = _make("global", "avg", 1)
GlobalAveragePooling2D = _make("global", "avg", 2)
GlobalAveragePooling3D = _make("global", "avg", 3)
