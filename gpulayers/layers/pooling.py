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

from .. import kernels, validation
from ._float16 import narrow as _cast
from ._float16 import widen as _work
from ._signature import with_signature
from ._common import acc_dtype as _acc_dtype
from ._common import as_3d as _as_3d
from ._common import geometry_5d as _geometry_5d
from ._common import int32_args as _int32_args
from ._common import split_channels as _split_channels
from ._common import from_channels_last as _from_channels_last
from ._common import to_channels_last as _to_channels_last
from .base import Layer

SOURCE = "pooling.cu"
BLOCK = 256
MAX_SAVED_WINDOW = 256  # windows up to this many cells keep a one-byte argmax for backward

# (CL: channels_last; IS_MAX: max rather than average pooling)
MAX_POOL_FORWARD = kernels.Kernel(SOURCE, "max_pool_forward", channels_last=bool)
MAX_POOL_BACKWARD = kernels.Kernel(SOURCE, "max_pool_backward", channels_last=bool)
AVG_POOL_FORWARD = kernels.Kernel(SOURCE, "avg_pool_forward", channels_last=bool)
AVG_POOL_BACKWARD = kernels.Kernel(SOURCE, "avg_pool_backward", channels_last=bool)
POOL_FORWARD_ROWS = kernels.Kernel(SOURCE, "pool_forward_rows", is_max=bool)
POOL_BACKWARD_ROWS = kernels.Kernel(SOURCE, "pool_backward_rows", is_max=bool)
GLOBAL_FORWARD_ROWS = kernels.Kernel(SOURCE, "global_pool_forward_rows", is_max=bool)
GLOBAL_FORWARD_COLS = kernels.Kernel(SOURCE, "global_pool_forward_cols", is_max=bool)
GLOBAL_AVG_BACKWARD = kernels.Kernel(SOURCE, "global_avg_backward", channels_last=bool)
GLOBAL_MAX_BACKWARD = kernels.Kernel(SOURCE, "global_max_backward", channels_last=bool)
# read from pooling.cu: the rows kernels' block size, and how many 32-element segments of a row a
# warp loads in pool_forward_rows and in pool_backward_rows
ROWS_BLOCK = kernels.cuda_constant(SOURCE, "kRowsBlock")
FORWARD_ROW_SEGMENTS = kernels.cuda_constant(SOURCE, "kMaxSegments")
BACKWARD_ROW_SEGMENTS = kernels.cuda_constant(SOURCE, "kRowSegments")
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





def _spatial_axes(ndim, data_format):
    return tuple(range(2, ndim)) if data_format == "channels_first" else tuple(range(1, ndim - 1))


def _out_shape(shape, axes, out):
    shape = list(shape)
    for axis, o in zip(axes, out):
        shape[axis] = o
    return tuple(shape)


def _cell_slices(ndim, axes, in_sizes, out, pool_size, strides, pad_before):
    """Per window cell, in row-major order: (cell index, output slices, input slices).

    Output o reads input i = o * stride + cell - pad_before along each axis; the output
    slices keep only the outputs for which that input is real (not padding), and cells that
    no output reads as a real cell are skipped. Nothing of window size is ever allocated.
    """
    for j, cell in enumerate(np.ndindex(*pool_size)):
        out_idx, in_idx = [slice(None)] * ndim, [slice(None)] * ndim
        for axis, n, o, s, b, c in zip(axes, in_sizes, out, strides, pad_before, cell):
            lo = max(0, -(-(b - c) // s))  # first output whose cell c is real: ceil((b - c) / s)
            hi = min(o, (n - 1 + b - c) // s + 1)  # one past the last
            if hi <= lo:
                break
            start = lo * s + c - b
            out_idx[axis] = slice(lo, hi)
            in_idx[axis] = slice(start, start + (hi - lo - 1) * s + 1, s)
        else:
            yield j, tuple(out_idx), tuple(in_idx)


def _real_counts(ndim, axes, in_sizes, out, pool_size, strides, pad_before, dtype):
    """Real (unpadded) cells per window, broadcastable against the output."""
    count = np.ones((1,) * ndim, dtype)
    for axis, n, o, k, s, b in zip(axes, in_sizes, out, pool_size, strides, pad_before):
        start = np.arange(o) * s - b
        along = (np.minimum(start + k, n) - np.maximum(start, 0)).astype(dtype)
        shape = [1] * ndim
        shape[axis] = o
        count = count * along.reshape(shape)
    return count


def _half_keys(h):
    """int16 keys ordered as the float16 values of h (-0 and +0 share key 0), or None if h
    holds a NaN. Lets max pooling compare float16 exactly without converting it."""
    v = h.view(np.int16)
    m = v & np.int16(0x7FFF)  # magnitude bits
    if (m > 0x7C00).any():
        return None
    s = v >> 15  # 0 for +, -1 for -
    m ^= s
    m -= s  # two's complement negation of the negative ones
    return m


def _half_from_keys(k):
    s = k >> 15
    m = k ^ s
    m -= s  # |key|: the magnitude bits
    m |= s & np.int16(-0x8000)  # the sign bit
    return m.view(np.float16)


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

def _geometry(x_shape, pool_size, strides, padding, data_format):
    """(spatial axes, input sizes, output sizes, padding before) of a windowed pooling."""
    axes = _spatial_axes(len(x_shape), data_format)
    in_sizes = tuple(x_shape[a] for a in axes)
    out, pads = pool_geometry(in_sizes, pool_size, strides, padding)
    return axes, in_sizes, out, pads


def max_pool_forward(x, pool_size, strides=None, padding="valid", data_format="channels_last"):
    """Max pooling of x (N, *spatial, C) or (N, C, *spatial) with -inf padding.

    A running maximum over the window cells (one whole-array ``np.maximum`` per cell, padded
    cells skipped); NaN propagates, so a window holding a NaN gives NaN.
    """
    k = x.ndim - 2
    pool_size, strides, padding, data_format = _normalize(pool_size, strides, padding, data_format, k)
    keys = _half_keys(x) if x.dtype == np.float16 else None
    if keys is not None:  # float16 without NaN: the same running maximum on order-preserving keys
        return _half_from_keys(_max_pool_values(keys, pool_size, strides, padding, data_format))
    return _cast(_max_pool_values(_work(x), pool_size, strides, padding, data_format), x.dtype)


def _max_pool_values(xw, pool_size, strides, padding, data_format):
    axes, in_sizes, out, pads = _geometry(xw.shape, pool_size, strides, padding, data_format)
    lowest = -np.inf if xw.dtype.kind == "f" else np.iinfo(xw.dtype).min
    y = np.full(_out_shape(xw.shape, axes, out), lowest, xw.dtype)
    for _, o, i in _cell_slices(xw.ndim, axes, in_sizes, out, pool_size, strides, pads):
        np.maximum(y[o], xw[i], out=y[o])
    return y


def max_pool_backward(x, dy, pool_size, strides=None, padding="valid", data_format="channels_last", y=None):
    """d(loss)/dx of max pooling: each window's gradient goes to its first maximum.

    "First" is row-major window order; NaN counts as the maximum (the first NaN wins); a
    window whose real cells are all -inf sends its gradient to its first real cell. ``y``:
    the forward's output for this ``x`` when the caller kept it (else the window maxima are
    computed again).
    """
    k = x.ndim - 2
    pool_size, strides, padding, data_format = _normalize(pool_size, strides, padding, data_format, k)
    acc = _acc_dtype(x.dtype)
    axes, in_sizes, out, pads = _geometry(x.shape, pool_size, strides, padding, data_format)
    keys = _half_keys(x) if x.dtype == np.float16 else None
    if keys is not None and dy.dtype == np.float16 and all(s >= p for s, p in zip(strides, pool_size)):
        # float16, windows that do not overlap: each input cell gets at most one window's
        # gradient, so it is moved bit for bit (no sum, hence no float32 accumulation needed)
        y = _max_pool_values(keys, pool_size, strides, padding, data_format) if y is None else _half_keys(y)
        g = np.ascontiguousarray(dy).view(np.uint16)
        dx = np.zeros(x.shape, np.uint16)
        taken = np.zeros(y.shape, bool)
        for _, o, i in _cell_slices(x.ndim, axes, in_sizes, out, pool_size, strides, pads):
            hit = np.equal(keys[i], y[o])
            np.greater(hit, taken[o], out=hit)
            taken[o] |= hit
            np.multiply(g[o], hit, out=dx[i])
        return dx.view(np.float16)
    if keys is not None:  # float16 without NaN, overlapping windows: compare keys, sum in float32
        xw, has_nan = keys, False
        y = _max_pool_values(keys, pool_size, strides, padding, data_format) if y is None else _half_keys(y)
    else:
        xw = _work(x)
        y = _max_pool_values(xw, pool_size, strides, padding, data_format) if y is None else _work(y)
        has_nan = bool(np.isnan(y).any())
    g = _work(dy).astype(acc, copy=False)
    overlap = any(s < p for s, p in zip(strides, pool_size))  # else each input cell is in one window
    dx = np.zeros(x.shape, acc)
    cells = _cell_slices(x.ndim, axes, in_sizes, out, pool_size, strides, pads)
    if not np.isfinite(g).all():  # inf or NaN in dy must reach only the maxima (inf * 0 would be NaN)
        taken = np.zeros(y.shape, bool)  # the window's maximum has been found at an earlier cell
        for _, o, i in cells:
            hit = _hits(xw[i], y[o], has_nan)
            np.greater(hit, taken[o], out=hit)  # hit and not taken
            taken[o] |= hit
            np.add(dx[i], g[o], out=dx[i], where=hit)
        return _cast(dx, x.dtype)
    # The gradient not yet delivered: a window's first hit takes all of it (r * 1), and leaves
    # exactly 0 (r - r) for any later tie, so every gradient lands once, on the first maximum.
    remaining = g.copy()
    share = np.empty(y.shape, acc)
    for _, o, i in cells:
        hit = _hits(xw[i], y[o], has_nan)
        if overlap:
            dx[i] += np.multiply(remaining[o], hit, out=share[o])
            remaining[o] -= share[o]
        else:  # dx[i] holds only zeros so far
            np.multiply(remaining[o], hit, out=dx[i])
            remaining[o] -= dx[i]
    return _cast(dx, x.dtype)


def _hits(xs, ys, has_nan):
    """Where the cell holds its window's maximum (NaN matching NaN when there is one)."""
    hit = np.equal(xs, ys)
    if has_nan:
        hit |= np.isnan(xs) & np.isnan(ys)
    return hit


def avg_pool_forward(x, pool_size, strides=None, padding="valid", data_format="channels_last"):
    """Average pooling; each window's sum is divided by its number of real (unpadded) cells.

    Sums in float32 (float64 for float64), cell by cell in row-major window order.
    """
    k = x.ndim - 2
    pool_size, strides, padding, data_format = _normalize(pool_size, strides, padding, data_format, k)
    acc = _acc_dtype(x.dtype)
    xa = _work(x)
    axes, in_sizes, out, pads = _geometry(x.shape, pool_size, strides, padding, data_format)
    total = np.zeros(_out_shape(x.shape, axes, out), acc)
    for _, o, i in _cell_slices(x.ndim, axes, in_sizes, out, pool_size, strides, pads):
        np.add(total[o], xa[i], out=total[o])
    total /= _real_counts(x.ndim, axes, in_sizes, out, pool_size, strides, pads, acc)
    return _cast(total, x.dtype)


def avg_pool_backward(x_shape, dy, pool_size, strides=None, padding="valid", data_format="channels_last"):
    """d(loss)/dx of average pooling for an input of shape x_shape."""
    k = len(x_shape) - 2
    pool_size, strides, padding, data_format = _normalize(pool_size, strides, padding, data_format, k)
    acc = _acc_dtype(dy.dtype)
    axes, in_sizes, out, pads = _geometry(tuple(x_shape), pool_size, strides, padding, data_format)
    share = _work(dy) / _real_counts(dy.ndim, axes, in_sizes, out, pool_size, strides, pads, acc)
    if all(s >= p for s, p in zip(strides, pool_size)):
        # windows that do not overlap: each input cell gets at most one share, so the shares are
        # rounded to the output dtype once and copied (no sum, no conversion of the whole input)
        share = _cast(share, dy.dtype)
        dx = np.zeros(tuple(x_shape), dy.dtype)
        for _, o, i in _cell_slices(dy.ndim, axes, in_sizes, out, pool_size, strides, pads):
            dx[i] = share[o]
        return dx
    dx = np.zeros(tuple(x_shape), acc)
    for _, o, i in _cell_slices(dy.ndim, axes, in_sizes, out, pool_size, strides, pads):
        np.add(dx[i], share[o], out=dx[i])
    return _cast(dx, dy.dtype)


def global_pool_forward(x, op, data_format="channels_last", keepdims=False):
    """Global "max" or "avg" pooling over every spatial axis (sums in float32, float64 for float64)."""
    axes = _spatial_axes(x.ndim, data_format)
    if op == "max":
        keys = _half_keys(x) if x.dtype == np.float16 else None
        if keys is not None:
            return _half_from_keys(keys.max(axis=axes, keepdims=keepdims))
        return _cast(_work(x).max(axis=axes, keepdims=keepdims), x.dtype)  # NaN propagates
    # the mean as a matrix-vector product per sample (BLAS), summing in float32 (float64 for float64)
    xw = np.ascontiguousarray(_work(x))
    n, c = x.shape[0], x.shape[1] if data_format == "channels_first" else x.shape[-1]
    length = int(np.prod([x.shape[a] for a in axes]))
    ones = np.ones(length, xw.dtype)
    if data_format == "channels_first":
        total = xw.reshape(n, c, length) @ ones
    else:
        total = ones @ xw.reshape(n, length, c)
    y = total / xw.dtype.type(length)
    if keepdims:
        y = y.reshape(_out_shape(x.shape, axes, (1,) * len(axes)))
    return _cast(y, x.dtype)


def global_pool_backward(x, dy, op, data_format="channels_last"):
    """d(loss)/dx of global pooling; dy is (N, C) or keepdims-shaped."""
    n = x.shape[0]
    c = x.shape[1] if data_format == "channels_first" else x.shape[-1]
    acc = _acc_dtype(x.dtype)
    g = dy.astype(acc, copy=False).reshape(n, c)
    if op == "max":
        keys = _half_keys(x) if x.dtype == np.float16 else None
        rows = _to_channels_last(x if keys is None else keys, data_format).reshape(n, -1, c)  # (N, L, C)
        first = np.argmax(rows, axis=1)  # first maximum, NaN counts as the maximum
        dx = np.zeros(rows.shape, x.dtype)
        np.put_along_axis(dx, first[:, None, :], g[:, None, :].astype(x.dtype), axis=1)
        return _from_channels_last(dx.reshape(_to_channels_last(x, data_format).shape), data_format)
    share = (g / (x.size // (n * c))).astype(x.dtype)  # the gradient share of each cell
    keep = (n, c) + (1,) * (x.ndim - 2) if data_format == "channels_first" else (n,) + (1,) * (x.ndim - 2) + (c,)
    dx = np.empty(x.shape, x.dtype)
    dx[...] = share.reshape(keep)
    return dx


# ----------------------------------------------------------------------------- kernel path

@functools.lru_cache(maxsize=512)
def _kernel_geometry(x_shape, pool_size, strides, padding, data_format):
    """(output shape, the 17 int32 geometry arguments) of a windowed pooling kernel: N, C, then
    per spatial axis of the 5-D view the input size, output size, window, stride and padding
    before (POOL_GEOM_PARAMS in pooling.cu). Memoised: a layer called again on the same shape
    does no shape arithmetic."""
    n, c, spatial = _split_channels(x_shape, data_format)
    out, pads = pool_geometry(spatial, pool_size, strides, padding)
    y_shape = (n, c, *out) if data_format == "channels_first" else (n, *out, c)
    return y_shape, _geometry_5d(x_shape, data_format) + _int32_args(
        *_as_3d(out), *_as_3d(pool_size), *_as_3d(strides), *_as_3d(pads, fill=0))


def _rows_kernel(x_shape, pool_size, strides, data_format):
    """Whether the forward pass takes pool_forward_rows: channels_first with a column stride
    above 1, when a warp's input columns fit in FORWARD_ROW_SEGMENTS segments of 32."""
    return (ROW_KERNELS and data_format == "channels_first" and strides[-1] > 1
            and 31 * strides[-1] + pool_size[-1] <= 32 * FORWARD_ROW_SEGMENTS)


def _rows_backward(pool_size, strides, data_format):
    """Whether backward takes pool_backward_rows: channels_first, when the dy columns a warp of
    32 input columns reads fit in BACKWARD_ROW_SEGMENTS segments."""
    return (ROW_KERNELS and data_format == "channels_first"
            and (31 + pool_size[-1]) // strides[-1] + 2 <= 32 * BACKWARD_ROW_SEGMENTS)


def _launch_backward_rows(is_max, dy, argmax, dx, x_shape, geom):
    warps = math.prod(x_shape[:-1]) * kernels.ceil_div(x_shape[-1], 32)
    POOL_BACKWARD_ROWS.launch(dy.dtype, kernels.grid_1d(32 * warps, ROWS_BLOCK), ROWS_BLOCK,
                              (dy, argmax, dx, *geom), is_max=is_max)


def max_pool_forward_kernel(x, pool_size, strides, padding, data_format):
    """Kernel path of max pooling: (y, one-byte window argmax or None when recomputed)."""
    xp = kernels.array_module(x)
    x = xp.ascontiguousarray(x)
    y_shape, geom = _kernel_geometry(tuple(x.shape), pool_size, strides, padding, data_format)
    y = xp.empty(y_shape, x.dtype)
    save = math.prod(pool_size) <= MAX_SAVED_WINDOW
    argmax = xp.empty(y_shape if save else (1,), np.uint8)
    _launch_forward(True, x, y, (argmax, np.int32(save)), y_shape, pool_size, strides, data_format, geom)
    return y, (argmax if save else None)


def _launch_forward(is_max, x, y, extra, y_shape, pool_size, strides, data_format, geom):
    """Launch the row kernel (channels_first, strided columns) or the direct one."""
    if _rows_kernel(x.shape, pool_size, strides, data_format):
        # a warp per output row chunk of 32 (rows of up to 32 outputs: a block per 8 rows)
        warps = math.prod(y_shape[:-1]) * kernels.ceil_div(y_shape[-1], 32)
        POOL_FORWARD_ROWS.launch(x.dtype, kernels.grid_1d(32 * warps, ROWS_BLOCK), ROWS_BLOCK,
                                 (x, y, *extra, *geom), is_max=is_max)
    else:
        direct = MAX_POOL_FORWARD if is_max else AVG_POOL_FORWARD
        direct.launch(x.dtype, kernels.grid_1d(y.size, BLOCK), BLOCK, (x, y, *(extra if is_max else ()), *geom),
                      channels_last=data_format == "channels_last")


def max_pool_backward_kernel(x, argmax, dy, pool_size, strides, padding, data_format):
    xp = kernels.array_module(x)
    x, dy = xp.ascontiguousarray(x), xp.ascontiguousarray(dy)
    _, geom = _kernel_geometry(tuple(x.shape), pool_size, strides, padding, data_format)
    dx = xp.empty(x.shape, x.dtype)
    saved = argmax is not None
    if saved and _rows_backward(pool_size, strides, data_format):
        _launch_backward_rows(True, dy, argmax, dx, x.shape, geom)
        return dx
    MAX_POOL_BACKWARD.launch(x.dtype, kernels.grid_1d(x.size, BLOCK), BLOCK,
                             (x, argmax if saved else xp.empty((1,), np.uint8), np.int32(saved), dy, dx, *geom),
                             channels_last=data_format == "channels_last")
    return dx


def avg_pool_forward_kernel(x, pool_size, strides, padding, data_format):
    xp = kernels.array_module(x)
    x = xp.ascontiguousarray(x)
    y_shape, geom = _kernel_geometry(tuple(x.shape), pool_size, strides, padding, data_format)
    y = xp.empty(y_shape, x.dtype)
    no_argmax = (xp.empty((1,), np.uint8), np.int32(0)) if _rows_kernel(x.shape, pool_size, strides, data_format) \
        else ()
    _launch_forward(False, x, y, no_argmax, y_shape, pool_size, strides, data_format, geom)
    return y


def avg_pool_backward_kernel(x_shape, dy, pool_size, strides, padding, data_format):
    xp = kernels.array_module(dy)
    dy = xp.ascontiguousarray(dy)
    _, geom = _kernel_geometry(tuple(x_shape), pool_size, strides, padding, data_format)
    dx = xp.empty(x_shape, dy.dtype)
    if _rows_backward(pool_size, strides, data_format):
        _launch_backward_rows(False, dy, xp.empty((1,), np.uint8), dx, x_shape, geom)
        return dx
    AVG_POOL_BACKWARD.launch(dy.dtype, kernels.grid_1d(dx.size, BLOCK), BLOCK, (dy, dx, *geom),
                             channels_last=data_format == "channels_last")
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
    is_max = op == "max"
    if data_format == "channels_first":
        GLOBAL_FORWARD_ROWS.launch(x.dtype, min(n * c, 2**20), _rows_block(length),
                                   (x, y, argmax, np.int64(n * c), np.int64(length)), is_max=is_max)
    else:
        threads, per_block = _cols_block(length, c)
        state = (8 if x.dtype == np.float64 else 4) + (4 if op == "max" else 0)  # bytes per thread
        GLOBAL_FORWARD_COLS.launch(x.dtype, n * kernels.ceil_div(c, per_block), threads,
                                   (x, y, argmax, np.int32(n), np.int32(c), np.int64(length), np.int32(per_block)),
                                   shared_mem=threads * state, is_max=is_max)
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
    arrays = (dy, dx) if op == "avg" else (dy, argmax, dx)
    (GLOBAL_AVG_BACKWARD if op == "avg" else GLOBAL_MAX_BACKWARD).launch(
        dy.dtype, kernels.grid_1d(dx.size, BLOCK), BLOCK, (*arrays, *geometry),
        channels_last=data_format == "channels_last")
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
                # backward reads x only to recompute the window maxima (no saved argmax): keep a copy
                # then; with a saved argmax the kernels read only x's shape
                self._saved = (self._keep(x) if argmax is None else x, tuple(x.shape), argmax)
            else:  # the reference's backward compares x with the maxima: keep both (y is the caller's)
                y = max_pool_forward(x, *args)
                self._saved = (self._keep(x), tuple(x.shape), y.copy())
            return y
        y = avg_pool_forward_kernel(x, *args) if on_kernels else avg_pool_forward(x, *args)
        self._saved = (None, tuple(x.shape), None)  # average pooling's backward needs only the shape
        return y

    def backward_impl(self, dy):
        x, x_shape, kept = self._saved  # kept: the kernels' argmax, or the reference's maxima
        if dy.size == 0:
            return self._xp.zeros(x_shape, dy.dtype)
        args = (self.pool_size, self.strides, self.padding, self.data_format)
        if self.op == "max":
            if self._on_kernels:
                return max_pool_backward_kernel(x, kept, dy, *args)
            return max_pool_backward(x, dy, *args, y=kept)
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
        with_signature(cls, defaults={"pool_size": 2 if rank == 1 else (2,) * rank})
    else:
        name = f"Global{'Max' if op == 'max' else 'Average'}Pooling{rank}D"
        doc = _GLOBAL_DOC.format(op="max" if op == "max" else "average", rank=rank, name=name,
                                 dims=dims, ones=", ".join(["1"] * rank))
        cls = type(name, (_GlobalPooling,), {"rank": rank, "op": op, "__doc__": doc})
        with_signature(cls)
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
