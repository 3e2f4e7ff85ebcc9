"""Losses with Keras 3's formulas and reduction, and a fused gradient.

Protocol (as layers): ``value = loss(y_true, y_pred)`` returns the mean loss as a 0-d array
of the predictions' array module (``float(value)`` gives a Python number), and
``dy = loss.backward()`` returns d(value)/d(y_pred), shaped and typed like ``y_pred``.

Reduction: Keras's "sum_over_batch_size": the per-sample losses (cross-entropies over the
class axis, squared/absolute errors averaged over the last axis) are averaged over every
remaining element. Computation is in float32 (float64 for float64 predictions).
Probability inputs (``from_logits=False``) are clipped to [1e-7, 1 - 1e-7] as Keras does;
the gradient is zero where the clip is active.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import kernels, validation
from .layers._common import acc_dtype

EPSILON = 1e-7  # keras.config.epsilon()



def _xp_types():
    cp = kernels.cupy_module()
    return (np.ndarray,) if cp is None else (np.ndarray, cp.ndarray)


class Loss:
    """Base of the losses: validates, computes value and gradient together, keeps the gradient."""

    def __init__(self, name=None, reduction="sum_over_batch_size", dtype=None):
        validation.unsupported(type(self).__name__, reduction=(reduction, "sum_over_batch_size"),
                               dtype=(dtype, None))
        self.name = name or _snake(type(self).__name__)
        self._grad = None

    def __call__(self, y_true, y_pred):
        me = type(self).__name__
        validation.float_array(me, "y_pred", y_pred, _xp_types())
        if not isinstance(y_true, _xp_types()):
            raise TypeError(f"{me}: `y_true` must be a numpy.ndarray or cupy.ndarray. "
                            f"Received: y_true of type {type(y_true).__name__}")
        xp = kernels.array_module(y_pred)
        if kernels.array_module(y_true) is not xp:
            raise ValueError(f"{me}: `y_true` and `y_pred` must be on the same device. Received: y_true of type "
                             f"{type(y_true).__name__}, y_pred of type {type(y_pred).__name__}")
        if y_pred.size == 0:
            raise ValueError(f"{me}: `y_pred` must not be empty. Received: y_pred.shape={tuple(y_pred.shape)}")
        y_true = self._check_true(y_true, y_pred)
        acc = acc_dtype(y_pred.dtype)
        value, grad = self.compute(xp, y_true, y_pred.astype(acc))
        self._grad = grad.astype(y_pred.dtype)
        return value

    def backward(self):
        """d(loss)/d(y_pred) of the most recent call."""
        if self._grad is None:
            raise ValueError(f"{type(self).__name__}: backward() needs a call first. Received: backward before "
                             f"any call of the loss")
        return self._grad

    def _check_true(self, y_true, y_pred):
        me = type(self).__name__
        if tuple(y_true.shape) != tuple(y_pred.shape):
            raise ValueError(f"{me}: `y_true` must have the shape of `y_pred` {tuple(y_pred.shape)}. "
                             f"Received: y_true.shape={tuple(y_true.shape)}")
        if y_true.dtype.kind not in "fiub":
            raise TypeError(f"{me}: `y_true` must be numeric. Received: y_true.dtype={y_true.dtype}")
        return y_true.astype(acc_dtype(y_pred.dtype))

    def compute(self, xp, y_true, y_pred):  # pragma: no cover - abstract
        """(mean loss as a 0-d array, d mean / d y_pred) in the compute dtype."""
        raise NotImplementedError

    def __repr__(self):
        return f"<{type(self).__name__}>"


def _snake(name):
    return "".join(("_" + c.lower()) if c.isupper() else c for c in name).lstrip("_")


def _log_softmax(xp, z):
    m = z.max(axis=-1, keepdims=True)
    s = z - m
    return s - xp.log(xp.exp(s).sum(axis=-1, keepdims=True))


def _probability_log(xp, p):
    """Keras's from_logits=False path: normalise over the last axis, clip, log.
    Returns (log of the clipped probabilities, normaliser S, clip mask)."""
    s = p.sum(axis=-1, keepdims=True)
    q = p / s
    inside = (q > EPSILON) & (q < 1 - EPSILON)
    return xp.log(xp.clip(q, EPSILON, 1 - EPSILON)), s, q, inside


def _cross_entropy(xp, target, y_pred, from_logits):
    """Mean over samples of -sum(target * log p) over the last axis, and its gradient."""
    count = y_pred.size // y_pred.shape[-1]
    if from_logits:
        logp = _log_softmax(xp, y_pred)
        value = -(target * logp).sum() / count
        p = xp.exp(logp)
        grad = (p * target.sum(axis=-1, keepdims=True) - target) / count
        return value, grad
    logq, s, q, inside = _probability_log(xp, y_pred)
    value = -(target * logq).sum() / count
    g = xp.where(inside, -target / xp.clip(q, EPSILON, 1 - EPSILON), 0)  # d value / d q (times count)
    grad = (g - (g * q).sum(axis=-1, keepdims=True)) / s / count
    return value, grad


class SparseCategoricalCrossentropy(Loss):
    """Cross-entropy with integer labels, as ``keras.losses.SparseCategoricalCrossentropy``.

    Args:
        from_logits: y_pred are logits (a stable log-softmax is used) rather than probabilities.
        ignore_class: not supported (NotImplementedError when set).

    y_true: integer labels of shape y_pred.shape[:-1] (or with a trailing axis of 1), each
    in [0, classes); y_pred: (..., classes). A label out of range is a ValueError naming it.
    """

    def __init__(self, from_logits=False, ignore_class=None, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.from_logits = validation.boolean(type(self).__name__, "from_logits", from_logits)
        validation.unsupported(type(self).__name__, ignore_class=(ignore_class, None))

    def _check_true(self, y_true, y_pred):
        me = type(self).__name__
        shape = tuple(y_pred.shape[:-1])
        if tuple(y_true.shape) not in (shape, shape + (1,)):
            raise ValueError(f"{me}: `y_true` must hold one label per prediction, shape {shape}. "
                             f"Received: y_true.shape={tuple(y_true.shape)} for y_pred.shape={tuple(y_pred.shape)}")
        xp = kernels.array_module(y_true)
        labels = y_true.reshape(shape)
        if labels.dtype.kind == "f":
            if bool(xp.any(labels != xp.floor(labels))):
                bad = labels.ravel()[int(xp.argmax((labels != xp.floor(labels)).ravel()))]
                raise ValueError(f"{me}: `y_true` must hold integer class labels. Received: label {float(bad)!r}")
        elif labels.dtype.kind not in "iu":
            raise TypeError(f"{me}: `y_true` must hold integer class labels. Received: y_true.dtype={y_true.dtype}")
        classes = y_pred.shape[-1]
        bad = (labels < 0) | (labels >= classes)
        if bool(xp.any(bad)):
            first = int(xp.argmax(bad.ravel()))
            value = labels.ravel()[first]
            shown = float(value) if labels.dtype.kind == "f" else int(value)
            raise ValueError(f"{me}: labels must be in [0, {classes}) for {classes} classes. Received: label "
                             f"{shown!r} at flat position {first} of y_true")
        return labels.astype(np.int64)

    def compute(self, xp, labels, y_pred):
        target = (labels[..., None] == xp.arange(y_pred.shape[-1])).astype(y_pred.dtype)
        return _cross_entropy(xp, target, y_pred, self.from_logits)


def _smoothing_arguments(loss, from_logits, label_smoothing, axis):
    """Checks and keeps the arguments the cross-entropies with label smoothing share."""
    me = type(loss).__name__
    loss.from_logits = validation.boolean(me, "from_logits", from_logits)
    if not isinstance(label_smoothing, numbers.Real) or not 0 <= label_smoothing <= 1:
        raise ValueError(f"{me}: `label_smoothing` must be a number in [0, 1]. "
                         f"Received: label_smoothing={label_smoothing!r}")
    loss.label_smoothing = float(label_smoothing)
    validation.unsupported(me, axis=(axis, -1))


class CategoricalCrossentropy(Loss):
    """Cross-entropy with one-hot (or soft) targets, as ``keras.losses.CategoricalCrossentropy``.

    Args:
        from_logits: y_pred are logits rather than probabilities.
        label_smoothing: in [0, 1]; targets become t * (1 - s) + s / classes.
        axis: must be -1 (the class axis is last).

    y_true and y_pred: (..., classes).
    """

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        _smoothing_arguments(self, from_logits, label_smoothing, axis)

    def compute(self, xp, y_true, y_pred):
        if self.label_smoothing:
            y_true = y_true * (1 - self.label_smoothing) + self.label_smoothing / y_pred.shape[-1]
        return _cross_entropy(xp, y_true, y_pred, self.from_logits)


class BinaryCrossentropy(Loss):
    """Binary cross-entropy, as ``keras.losses.BinaryCrossentropy``.

    Args:
        from_logits: y_pred are logits (stable log-sigmoid) rather than probabilities.
        label_smoothing: in [0, 1]; targets become t * (1 - s) + s / 2.

    y_true and y_pred: the same shape; the loss averages over the last axis, then the batch.
    """

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        _smoothing_arguments(self, from_logits, label_smoothing, axis)

    def compute(self, xp, t, y):
        if self.label_smoothing:
            t = t * (1 - self.label_smoothing) + self.label_smoothing / 2
        n = y.size
        if self.from_logits:
            # -t log sigmoid(y) - (1 - t) log sigmoid(-y); log sigmoid(y) = -logaddexp(0, -y)
            value = (t * xp.logaddexp(0, -y) + (1 - t) * xp.logaddexp(0, y)).sum() / n
            sig = xp.exp(-xp.logaddexp(0, -y))
            return value, (sig - t) / n
        p = xp.clip(y, EPSILON, 1 - EPSILON)
        value = -(t * xp.log(p) + (1 - t) * xp.log(1 - p)).sum() / n
        inside = (y > EPSILON) & (y < 1 - EPSILON)
        return value, xp.where(inside, (-t / p + (1 - t) / (1 - p)) / n, 0)


class MeanSquaredError(Loss):
    """mean((y_pred - y_true)^2), as ``keras.losses.MeanSquaredError``."""

    def compute(self, xp, t, y):
        d = y - t
        return (d * d).sum() / d.size, d * (2 / d.size)


class MeanAbsoluteError(Loss):
    """mean(|y_pred - y_true|), as ``keras.losses.MeanAbsoluteError`` (gradient sign(d), 0 at 0)."""

    def compute(self, xp, t, y):
        d = y - t
        return xp.abs(d).sum() / d.size, xp.sign(d) / d.size


ALIASES = {
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mean_squared_error": MeanSquaredError, "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError, "mae": MeanAbsoluteError,
}


def get(identifier) -> Loss:
    """A Loss instance from an instance or a Keras name ("sparse_categorical_crossentropy", "mse", ...)."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in ALIASES:
        return ALIASES[identifier.lower()]()
    raise ValueError(f"compile: `loss` must be a gpulayers.losses.Loss or one of "
                     f"{', '.join(map(repr, ALIASES))}. Received: loss={identifier!r}")
