"""BatchNormalization (Keras 3), training and inference, forward and backward.

- NumPy reference (``batch_norm_statistics``, ``batch_norm_forward``,
  ``batch_norm_backward``): vectorised; every per-channel sum accumulates in float64, and
  the variance is taken about the mean (two passes), so a large mean costs no accuracy.
- Kernel path: per-channel reductions from ``cuda/batchnorm.cu`` (the reduced extent split
  across blocks, partials merged in a fixed order), and the element-wise steps as
  ``cupy.ElementwiseKernel`` snippets (run by the simulator on NumPy arrays).
- The ``BatchNormalization`` layer.

Training: y = (x - mean) / sqrt(var + epsilon) * gamma + beta with the batch mean and biased
variance over every axis but ``axis``; moving = moving * momentum + batch * (1 - momentum).
Inference uses the moving statistics. Backward keeps only per-channel mean and 1/std.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import distributed, kernels, validation
from ._float16 import narrow, widen
from ._signature import with_signature
from ._common import acc_dtype as _acc_dtype
from .base import Layer

SOURCE = "batchnorm.cu"
BLOCK = 256

ROWS = 32  # bn_reduce_rows: a block of ROWS x 32 threads (the template argument ties the two)
# bn_*_finalize: a block of rows of splits x FINALIZE_CHANNELS channels (read from batchnorm.cu)
FINALIZE_CHANNELS = kernels.cuda_constant(SOURCE, "FINALIZE_CHANNELS")
FINALIZE_BLOCK = kernels.cuda_constant(SOURCE, "FINALIZE_THREADS")

# The accumulator a reduction carries: (count, mean, M2) for the statistics; (sum dy, sum dy * xhat)
# for the gradient, optionally also writing dx = dy * scale in the same pass.
ACCUMULATORS = {name: f"{name}<{{T}}>" for name in ("StatsAcc", "GradAcc", "GradScaleAcc")}
REDUCE_ROWS = kernels.Kernel(SOURCE, "bn_reduce_rows", acc=ACCUMULATORS, rows=(ROWS,))
REDUCE_PLANES = kernels.Kernel(SOURCE, "bn_reduce_planes", acc=ACCUMULATORS)
STATS_FINALIZE = kernels.Kernel(SOURCE, "bn_stats_finalize")
GRAD_FINALIZE = kernels.Kernel(SOURCE, "bn_grad_finalize")

_normalize = kernels.elementwise_kernel(
    "T x, S mean, S inv_std, S gamma, S beta", "T y",
    "y = (T)((((S)x) - mean) * inv_std * gamma + beta)", "gpulayers_bn_normalize")
# The same, also writing the copy of x that backward reads (so that the caller may change x in
# place after the call): one read of x instead of two.
_normalize_keep = kernels.elementwise_kernel(
    "T x, S mean, S inv_std, S gamma, S beta", "T y, T kept",
    "kept = x; y = (T)((((S)x) - mean) * inv_std * gamma + beta)", "gpulayers_bn_normalize_keep")
_train_input_grad = kernels.elementwise_kernel(
    "T x, T dy, S mean, S inv_std, S gamma, S mean_dy, S mean_dy_xhat", "T dx",
    "const S xhat = (((S)x) - mean) * inv_std;"
    "dx = (T)(gamma * inv_std * (((S)dy) - mean_dy - xhat * mean_dy_xhat))", "gpulayers_bn_train_grad")
_scale = kernels.elementwise_kernel("T dy, S scale", "T dx", "dx = (T)(((S)dy) * scale)", "gpulayers_bn_scale")



def _reduced_axes(ndim, axes):
    return tuple(a for a in range(ndim) if a not in axes)


def _broadcast_shape(shape, axes):
    return tuple(shape[a] if a in axes else 1 for a in range(len(shape)))


# ----------------------------------------------------------------------------- NumPy reference

SUM_BLOCK = 1024  # values summed in the input's float type before the sums go on in float64


def _channel_sums(v, red):
    """Sums of v over the axes ``red`` (keepdims), as float64.

    Blocks of at most SUM_BLOCK values are summed in v's float type by a matrix-vector
    product (BLAS), and the block sums are added in float64: the error is that of a
    SUM_BLOCK-term sum, however many values there are.
    """
    keep = tuple(a for a in range(v.ndim) if a not in red)
    out_shape = tuple(1 if a in red else n for a, n in enumerate(v.shape))
    if not keep or keep != tuple(range(keep[0], keep[-1] + 1)) or v.size == 0:
        return v.sum(axis=red, keepdims=True, dtype=np.float64)
    v = np.ascontiguousarray(v)
    r1, c = math.prod(v.shape[:keep[0]]), math.prod(v.shape[keep[0]:keep[-1] + 1])
    r2 = math.prod(v.shape[keep[-1] + 1:])
    if r2 == 1:  # (R1, C): blocks of rows
        rows = v.reshape(r1, c)
        k = r1 // SUM_BLOCK
        total = np.zeros(c, np.float64)
        if k:
            total += (np.ones(SUM_BLOCK, v.dtype) @ rows[:k * SUM_BLOCK].reshape(k, SUM_BLOCK, c)).sum(
                0, dtype=np.float64)
        if r1 > k * SUM_BLOCK:
            total += np.ones(r1 - k * SUM_BLOCK, v.dtype) @ rows[k * SUM_BLOCK:]
    else:  # (R1, C, R2): blocks of each row's R2 values
        planes = v.reshape(r1, c, r2)
        k = r2 // SUM_BLOCK
        total = np.zeros(c, np.float64)
        if k:
            blocks = planes[:, :, :k * SUM_BLOCK].reshape(r1, c, k, SUM_BLOCK) @ np.ones(SUM_BLOCK, v.dtype)
            total += blocks.sum(axis=(0, 2), dtype=np.float64)
        if r2 > k * SUM_BLOCK:
            total += (planes[:, :, k * SUM_BLOCK:] @ np.ones(r2 - k * SUM_BLOCK, v.dtype)).sum(0, dtype=np.float64)
    return total.reshape(out_shape)


def batch_norm_statistics(x, axes):
    """Per-channel (mean, biased variance) over every axis not in ``axes``.

    Two passes: a first mean, then the mean and variance of the differences from it (so a
    large mean costs no digits of the variance), every sum finished in float64 (see
    ``_channel_sums``). Returned in float32 (float64 for float64 inputs). A channel holding
    inf or NaN gets NaN mean and variance; a variance beyond the float32 range is inf.
    """
    acc = _acc_dtype(x.dtype)
    red = _reduced_axes(x.ndim, axes)
    xw = widen(x)
    m = x.size // max(1, math.prod(x.shape[a] for a in axes))
    with np.errstate(invalid="ignore", over="ignore"):
        first = _channel_sums(xw, red) / m
        if not np.isfinite(first).all():  # block sums overflowed (values near the limit), or inf/NaN data
            first = xw.sum(axis=red, keepdims=True, dtype=np.float64) / m
        finite = np.isfinite(first)
        for work in (xw.dtype, np.dtype(np.float64)):  # float64 when float32 differences or squares overflow
            base = first.astype(work)
            xv, per_channel = _elementwise_view(xw.astype(work, copy=False), axes)
            d = (xv - per_channel(base)).reshape(x.shape)  # small, and exact while within a factor 2
            shift = _channel_sums(d, red) / m  # what the first mean missed
            np.square(d, out=d)
            square = _channel_sums(d, red) / m
            if np.isfinite(shift[finite]).all() and np.isfinite(square[finite]).all():
                break
        var = np.maximum(square - np.square(shift), 0)
        var[np.isnan(shift)] = np.nan  # inf - inf in the data
        mean = base.astype(np.float64) + shift
    mean[np.isnan(var)] = np.nan  # a channel holding inf or NaN: NaN statistics, as a running (Welford) merge
    param_shape = tuple(x.shape[a] for a in axes)
    return mean.reshape(param_shape).astype(acc), var.reshape(param_shape).astype(acc)


def _elementwise_view(x, axes):
    """(x as an array for per-channel element-wise math, per-channel vector -> broadcastable).

    When the channel axes are the last ones (channels_last) and x is contiguous, x is viewed as
    rows of several whole channel vectors, so that NumPy's inner loops run long, not C short.
    """
    b = _broadcast_shape(x.shape, axes)
    c = math.prod(x.shape[a] for a in axes)
    last = tuple(range(x.ndim - len(axes), x.ndim)) == tuple(axes)
    if not last or not x.flags.c_contiguous or c >= 1024 or x.size == 0:
        return x, lambda v: v.reshape(b)
    rows = x.size // c
    k = max((d for d in range(1, min(rows, 4096 // c) + 1) if rows % d == 0), default=1)
    return x.reshape(rows // k, k * c), lambda v: np.tile(v.reshape(-1), k)


def batch_norm_forward(x, mean, var, gamma, beta, epsilon, axes):
    """(x - mean) / sqrt(var + epsilon) * gamma + beta; per-channel arrays of the param shape."""
    acc = _acc_dtype(x.dtype)
    inv_std = 1 / np.sqrt(var.astype(acc) + acc.type(epsilon))
    xv, per_channel = _elementwise_view(widen(x), axes)
    y = xv - per_channel(mean.astype(acc))  # a new array in the accumulate type
    y *= per_channel(inv_std * gamma.astype(acc))
    y += per_channel(beta.astype(acc))
    return narrow(y.reshape(x.shape), x.dtype)


def batch_norm_backward(x, dy, mean, inv_std, gamma, axes, training):
    """(dx, d gamma, d beta), with inv_std = 1 / sqrt(var + epsilon). ``training``: mean and
    inv_std come from the batch statistics of x and the gradient flows through them;
    otherwise they are constants (the moving statistics). The sums are finished in float64."""
    acc = _acc_dtype(x.dtype)
    red = _reduced_axes(x.ndim, axes)
    shape = tuple(x.shape[a] for a in axes)
    inv_std, gamma = inv_std.astype(acc).reshape(shape), gamma.astype(acc).reshape(shape)
    xv, per_channel = _elementwise_view(widen(x), axes)
    gv = widen(dy).reshape(xv.shape)
    d = xv - per_channel(mean.astype(acc))  # x - mean; xhat = d * inv_std
    dbeta = _channel_sums(gv.reshape(x.shape), red).reshape(shape)
    dgamma = _channel_sums((gv * d).reshape(x.shape), red).reshape(shape) * inv_std
    k = gamma * inv_std
    if training:
        m = x.size // math.prod(shape)
        # dx = k * (g - dbeta / m - xhat * dgamma / m), one pass per term
        d *= per_channel((-k * inv_std * dgamma / m).astype(acc))
        d += gv * per_channel(k)
        d -= per_channel((k * dbeta / m).astype(acc))
        dx = d
    else:
        dx = gv * per_channel(k)
    return narrow(dx.reshape(x.shape), x.dtype), dgamma.astype(acc), dbeta.astype(acc)


# ----------------------------------------------------------------------------- kernel path

def _channel_view(x, axes):
    """(x as (R1, C, R2) contiguous, R1, C, R2): transposes when ``axes`` are not adjacent."""
    xp = kernels.array_module(x)
    first, last = min(axes), max(axes)
    if last - first + 1 != len(axes):
        perm = _reduced_axes(x.ndim, axes) + tuple(sorted(axes))
        x = xp.ascontiguousarray(xp.transpose(x, perm))
        first, last = x.ndim - len(axes), x.ndim - 1
    else:
        x = xp.ascontiguousarray(x)
    r1 = math.prod(x.shape[:first])
    c = math.prod(x.shape[first:last + 1])
    r2 = math.prod(x.shape[last + 1:])
    return x, r1, c, r2


def _splits(nbytes, blocks_per_split, warps_per_block, limit):
    """Splits of the reduced extent: enough blocks to give the device min(4096, bytes / 512)
    warps, and no more (more splits only make the partial states bigger)."""
    warps = min(4096, max(1, nbytes // 512))
    return max(1, min(kernels.ceil_div(kernels.ceil_div(warps, warps_per_block), blocks_per_split), limit, 65535))


def _reduce(acc_name, x, dy, mean, axes, scale=None):
    """Launch the split reduction; returns (partial states, splits S, C, dx or None).

    ``acc_name == "GradScaleAcc"`` also writes dx = dy * scale (inference backward; the axes
    must be adjacent, so that dx has x's layout)."""
    xp = kernels.array_module(x)
    acc = _acc_dtype(x.dtype)
    xv, r1, c, r2 = _channel_view(x, axes)
    dyv = _channel_view(dy, axes)[0] if dy is not None else xv
    fields = 3 if acc_name == "StatsAcc" else 2
    read = xv.nbytes * (1 if dy is None else 2)
    if r2 == 1:
        groups = kernels.ceil_div(c, 32)
        splits = _splits(read, groups, ROWS, kernels.ceil_div(r1, ROWS))
        grid, block, kernel, rows = (groups, splits), ROWS * 32, REDUCE_ROWS, {"rows": ROWS}
        shape_args = (np.int64(r1), np.int32(c))
    else:
        splits = _splits(read, c, BLOCK // 32, kernels.ceil_div(r1 * r2, BLOCK))
        grid, block, kernel, rows = (c, splits), BLOCK, REDUCE_PLANES, {}
        shape_args = (np.int64(r1), np.int32(c), np.int64(r2))
    partial = xp.empty((fields, splits, c), acc)
    unused = xp.empty((1,), acc)
    dx = xp.empty(xv.shape, x.dtype) if scale is not None else xp.empty((1,), x.dtype)
    kernel.launch(x.dtype, grid, block,
                  (xv, dyv, mean if mean is not None else unused, scale if scale is not None else unused, dx,
                   partial, *shape_args), acc=acc_name, **rows)
    return partial, splits, c, (dx if scale is not None else None)


def batch_norm_statistics_kernel(x, axes, epsilon):
    """Kernel path: per-channel (mean, biased variance, 1/sqrt(var + epsilon)), flat (C,)."""
    xp = kernels.array_module(x)
    acc = _acc_dtype(x.dtype)
    partial, splits, c, _ = _reduce("StatsAcc", x, None, None, axes)
    mean, var, inv_std = (xp.empty((c,), acc) for _ in range(3))
    STATS_FINALIZE.launch(x.dtype, kernels.ceil_div(c, FINALIZE_CHANNELS), FINALIZE_BLOCK,
                          (partial, np.int32(splits), np.int32(c), acc.type(epsilon), mean, var, inv_std))
    return mean, var, inv_std


def batch_norm_grad_sums_kernel(x, dy, mean, inv_std, axes, scale=None):
    """Kernel path: per-channel (sum dy, sum dy * xhat), flat (C,), and with ``scale`` (flat,
    adjacent axes only) also dx = dy * scale from the same pass: (sum dy, sum dy * xhat, dx)."""
    xp = kernels.array_module(x)
    acc = _acc_dtype(x.dtype)
    partial, splits, c, dx = _reduce("GradAcc" if scale is None else "GradScaleAcc", x, dy, mean, axes, scale)
    sum_dy, sum_dy_xhat = xp.empty((c,), acc), xp.empty((c,), acc)
    GRAD_FINALIZE.launch(x.dtype, kernels.ceil_div(c, FINALIZE_CHANNELS), FINALIZE_BLOCK,
                         (partial, np.int32(splits), np.int32(c), inv_std, sum_dy, sum_dy_xhat))
    return (sum_dy, sum_dy_xhat) if scale is None else (sum_dy, sum_dy_xhat, dx.reshape(x.shape))


def _adjacent(axes):
    return max(axes) - min(axes) + 1 == len(axes)


# ----------------------------------------------------------------------------- layer

def _initializer(layer, arg, value):
    if callable(value):
        return value
    if value in ("zeros", "ones"):
        return value
    raise ValueError(f"{layer}: `{arg}` must be 'zeros', 'ones' or a callable (shape, dtype) -> array. "
                     f"Received: {arg}={value!r}")


class BatchNormalization(Layer):
    """Batch normalization, as Keras 3's ``BatchNormalization``.

    Args:
        axis: int or list of ints, the axes that keep their own statistics and weights
            (default -1: channels_last; 1 for channels_first).
        momentum: moving = moving * momentum + batch * (1 - momentum), in [0, 1].
        epsilon: added to the variance, > 0.
        center, scale: use ``beta`` / ``gamma``.
        beta_initializer, gamma_initializer, moving_mean_initializer,
        moving_variance_initializer: "zeros", "ones" or a callable (shape, dtype) -> array.
        synchronized: in training, merge the batch statistics (count, mean, M2) of every
            process of a ``torch.distributed`` process group, as ``torch.nn.SyncBatchNorm``;
            the input gradient uses the summed gradient statistics, the parameter gradients
            stay this process's own (sum or average them across processes, as DDP does).
            Without an initialised process group: one process, with a warning once.
        process_group: the ``torch.distributed`` group to synchronise over (None: the default).

    Input: any rank; output: same shape and dtype. Weights (Keras order): gamma, beta,
    moving_mean, moving_variance, each of shape [input.shape[a] for a in axis], float32 for
    float16 inputs. ``layer(x, training=True)`` normalises with the batch statistics and
    updates the moving ones; ``training=False`` uses the moving statistics.
    """

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones", moving_mean_initializer="zeros",
                 moving_variance_initializer="ones", beta_regularizer=None, gamma_regularizer=None,
                 beta_constraint=None, gamma_constraint=None, synchronized=False, renorm=False,
                 renorm_clipping=None, renorm_momentum=0.99, process_group=None, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        layer = type(self).__name__
        axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
        if not axes or not all(isinstance(a, (numbers.Integral, np.integer)) and not isinstance(a, bool)
                               for a in axes):
            raise TypeError(f"{layer}: `axis` must be an int or a list of ints. Received: axis={axis!r}")
        self.axis = [int(a) for a in axes]
        if not isinstance(momentum, numbers.Real) or not 0 <= momentum <= 1:
            raise ValueError(f"{layer}: `momentum` must be a number in [0, 1]. Received: momentum={momentum!r}")
        if not isinstance(epsilon, numbers.Real) or not epsilon > 0:
            raise ValueError(f"{layer}: `epsilon` must be a positive number. Received: epsilon={epsilon!r}")
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.center = validation.boolean(layer, "center", center)
        self.scale = validation.boolean(layer, "scale", scale)
        self.initializers = {
            "gamma": _initializer(layer, "gamma_initializer", gamma_initializer),
            "beta": _initializer(layer, "beta_initializer", beta_initializer),
            "moving_mean": _initializer(layer, "moving_mean_initializer", moving_mean_initializer),
            "moving_variance": _initializer(layer, "moving_variance_initializer", moving_variance_initializer),
        }
        self.synchronized = validation.boolean(layer, "synchronized", synchronized)
        self.process_group = process_group
        self._sync_count = None  # total count over processes of the last synchronized training call
        validation.unsupported(layer, renorm=(renorm, False),
                               renorm_clipping=(renorm_clipping, None), renorm_momentum=(renorm_momentum, 0.99),
                               beta_regularizer=(beta_regularizer, None), gamma_regularizer=(gamma_regularizer, None),
                               beta_constraint=(beta_constraint, None), gamma_constraint=(gamma_constraint, None))
        self.weight_names = tuple((["gamma"] if self.scale else []) + (["beta"] if self.center else [])
                                  + ["moving_mean", "moving_variance"])
        self._axes = None  # positive axes, set at build

    def _positive_axes(self, ndim):
        layer = type(self).__name__
        axes = []
        for a in self.axis:
            if not -ndim <= a < ndim:
                raise ValueError(f"{layer}: `axis` {a} is out of range for {ndim}-D inputs. Received: axis={self.axis}")
            axes.append(a % ndim)
        if len(set(axes)) != len(axes):
            raise ValueError(f"{layer}: `axis` names an axis twice. Received: axis={self.axis}")
        return tuple(sorted(axes))

    def build(self, input_shape, xp, dtype):
        self._axes = self._positive_axes(len(input_shape))
        self._input_rank = len(input_shape)
        shape = tuple(input_shape[a] for a in self._axes)
        wdtype = _acc_dtype(dtype)
        for name in self.weight_names:
            init = self.initializers[name]
            if callable(init):  # checked and copied: never the initializer's own array
                value = self._checked_weight(f"`{name}_initializer` (for weight `{name}`)", init(shape, wdtype),
                                             shape, wdtype)
            else:
                value = (np.zeros if init == "zeros" else np.ones)(shape, wdtype)
            (self.state if name.startswith("moving") else self.params)[name] = xp.asarray(value)

    def forward(self, x, training=False, mask=None):
        layer = type(self).__name__
        validation.unsupported(layer, mask=(mask, None))
        if x.ndim != self._input_rank:
            raise ValueError(f"{layer}: `inputs` must be {self._input_rank}-D like the first call. "
                             f"Received: inputs.shape={tuple(x.shape)}")
        shape = tuple(x.shape[a] for a in self._axes)
        if shape != tuple(self.state["moving_mean"].shape):
            raise ValueError(f"{layer}: `inputs` must have sizes {tuple(self.state['moving_mean'].shape)} on "
                             f"axis {self.axis}. Received: inputs.shape={tuple(x.shape)}")
        xp, on_kernels = kernels.array_module(x), self._on_kernels
        if on_kernels and math.prod(shape) >= validation.INT32_LIMIT:
            raise ValueError(f"{layer}: the number of channels must be below 2**31 on the kernel path (the "
                             f"kernels use 32-bit sizes). Received: inputs.shape={tuple(x.shape)}")
        if x.size == 0:  # a zero-size batch: empty output, moving statistics unchanged, no kernel launch
            self._sync_count = None
            if training and self.synchronized:  # ... but this process takes part in the merge the others wait for
                self._merge_empty(shape, _acc_dtype(x.dtype), xp)
            self._saved = (None, tuple(x.shape), None, None, training)
            return xp.zeros(x.shape, x.dtype)
        acc = _acc_dtype(x.dtype)
        # Weights and statistics in this input's accumulate type (the layer may have been built
        # with another float dtype): the kernels read them as that type.
        gamma = self.params["gamma"].astype(acc, copy=False) if self.scale else xp.ones(shape, acc)
        beta = self.params["beta"].astype(acc, copy=False) if self.center else xp.zeros(shape, acc)
        b = _broadcast_shape(x.shape, self._axes)
        moving_mean, moving_var = self.state["moving_mean"], self.state["moving_variance"]
        if training:
            if on_kernels:
                mean, var, inv_std = batch_norm_statistics_kernel(x, self._axes, self.epsilon)
                mean, var, inv_std = mean.reshape(shape), var.reshape(shape), inv_std.reshape(shape)
            else:
                mean, var = batch_norm_statistics(x, self._axes)
                inv_std = 1 / np.sqrt(var + acc.type(self.epsilon))
            if self.synchronized:  # merge (count, mean, M2) of every process: one all-reduce
                count, mean, var = distributed.merge_moments(x.size // math.prod(shape), mean, var,
                                                             self.process_group)
                inv_std = 1 / xp.sqrt(var + acc.type(self.epsilon))
            m = self.momentum
            new_mean = (moving_mean * m + mean * (1 - m)).astype(moving_mean.dtype, copy=False)
            new_var = (moving_var * m + var * (1 - m)).astype(moving_var.dtype, copy=False)
        else:
            mean, var = moving_mean.astype(acc, copy=False), moving_var.astype(acc, copy=False)
            inv_std = 1 / xp.sqrt(var + acc.type(self.epsilon))
        if on_kernels and not self._input_is_private:  # one pass writes y and the copy backward reads
            y, kept = _normalize_keep(x, mean.reshape(b), inv_std.reshape(b), gamma.reshape(b), beta.reshape(b))
        elif on_kernels:
            y, kept = _normalize(x, mean.reshape(b), inv_std.reshape(b), gamma.reshape(b), beta.reshape(b)), x
        else:
            y, kept = batch_norm_forward(x, mean, var, gamma, beta, self.epsilon, self._axes), self._keep(x)
        if training:
            self.state["moving_mean"], self.state["moving_variance"] = new_mean, new_var
        self._saved = (kept, tuple(x.shape), mean, inv_std, training)
        self._sync_count = count if training and self.synchronized else None
        return y

    def _merge_empty(self, shape, acc, xp):
        """Synchronized training on an empty local batch: merge a zero count, and move the
        statistics like every other process (unchanged when every batch is empty)."""
        zeros = xp.zeros(shape, acc)
        count, mean, var = distributed.merge_moments(0, zeros, zeros, self.process_group)
        m, some = self.momentum, count[0] > 0
        for name, batch in (("moving_mean", mean), ("moving_variance", var)):
            old = self.state[name]
            self.state[name] = xp.where(some, old * m + batch * (1 - m), old).astype(old.dtype, copy=False)
        self._sync_count = count

    def backward_impl(self, dy):
        x, x_shape, mean, inv_std, training = self._saved
        xp, on_kernels = self._xp, self._on_kernels
        shape = tuple(x_shape[a] for a in self._axes)
        acc = _acc_dtype(dy.dtype)
        synced = training and self._sync_count is not None
        if dy.size == 0:
            dx, sum_dy, sum_dy_xhat = xp.zeros(x_shape, dy.dtype), xp.zeros(shape, acc), xp.zeros(shape, acc)
            if synced:  # this process takes part in the all-reduce the others wait for (adding zeros)
                distributed.sum_gradients(sum_dy, sum_dy_xhat, self.process_group)
        else:
            gamma = self.params["gamma"].astype(acc, copy=False) if self.scale else xp.ones(shape, acc)
            b = _broadcast_shape(x_shape, self._axes)
            if on_kernels and not training and _adjacent(self._axes):  # one pass: sums and dx = dy * scale
                sum_dy, sum_dy_xhat, dx = batch_norm_grad_sums_kernel(
                    x, dy, mean.reshape(-1), inv_std.reshape(-1), self._axes, scale=(gamma * inv_std).reshape(-1))
                sum_dy, sum_dy_xhat = sum_dy.reshape(shape), sum_dy_xhat.reshape(shape)
            elif on_kernels:
                sum_dy, sum_dy_xhat = batch_norm_grad_sums_kernel(x, dy, mean.reshape(-1), inv_std.reshape(-1),
                                                                  self._axes)
                sum_dy, sum_dy_xhat = sum_dy.reshape(shape), sum_dy_xhat.reshape(shape)
                if training:
                    m = acc.type(x.size // math.prod(shape))
                    g_dy, g_dy_xhat = sum_dy, sum_dy_xhat
                    if synced:  # the gradient statistics of every process: one all-reduce
                        g_dy, g_dy_xhat = distributed.sum_gradients(sum_dy, sum_dy_xhat, self.process_group)
                        m = self._sync_count.astype(acc)
                    dx = _train_input_grad(x, dy, mean.reshape(b), inv_std.reshape(b), gamma.reshape(b),
                                           (g_dy / m).reshape(b), (g_dy_xhat / m).reshape(b))
                else:
                    dx = _scale(dy, (gamma * inv_std).reshape(b))
            elif synced:  # this process's sums, then dx from the sums of every process (one all-reduce)
                _, sum_dy_xhat, sum_dy = batch_norm_backward(x, dy, mean, inv_std, gamma, self._axes, False)
                g_dy, g_dy_xhat = distributed.sum_gradients(sum_dy, sum_dy_xhat, self.process_group)
                m = self._sync_count.astype(acc)
                xhat = (x.astype(acc) - mean.reshape(b)) * inv_std.reshape(b)
                dx = (gamma.reshape(b) * inv_std.reshape(b) * (dy.astype(acc) - (g_dy / m).reshape(b)
                                                               - xhat * (g_dy_xhat / m).reshape(b))).astype(x.dtype)
            else:
                dx, sum_dy_xhat, sum_dy = batch_norm_backward(x, dy, mean, inv_std, gamma, self._axes, training)
        self.grads = {}  # in each weight's own dtype
        if self.scale:
            self.grads["gamma"] = sum_dy_xhat.astype(self.params["gamma"].dtype, copy=False)
        if self.center:
            self.grads["beta"] = sum_dy.astype(self.params["beta"].dtype, copy=False)
        return dx


with_signature(BatchNormalization)  # inspect.signature lists every argument (dtype, seed, ...)
