"""Core layers: Dense, Activation, Flatten, Dropout (Keras 3), and the activation functions.

- Activation functions (``activation_forward`` / ``activation_backward``): written once with
  the array module ``xp``, so NumPy and CuPy run the same formulas (CuPy's own elementwise
  kernels on the GPU); computed in float32 for float16 inputs (float64 for float64).
- ``Dense``: y = act(x @ kernel + bias) over the last axis, one GEMM through the array
  module (BLAS on the CPU, cuBLAS on the GPU); backward is two GEMMs and a column sum.
- ``Flatten``, ``Dropout`` (inverted dropout, the mask kept as bits), ``Activation``.

Weights are float32 for float16 inputs (float64 for float64), as Keras's mixed precision.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import kernels, validation
from ._signature import with_signature
from ._common import INITIALIZERS, acc_dtype, glorot_uniform, he_normal  # noqa: F401  (re-exported)
from .base import Layer

ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax", "gelu", "silu")



def activation_name(layer, arg, value):
    """A supported activation name (None means "linear")."""
    if value is None:
        return "linear"
    if value == "swish":
        return "silu"
    return validation.choice(layer, arg, value, ACTIVATIONS)


# ----------------------------------------------------------------------------- activations

_TAYLOR_TERMS = 60
_CF_TERMS = 120


def erf(z):
    """The error function, vectorised: Taylor series for |z| < 2.5, the continued fraction of
    erfc beyond (both to about 1e-14 in float64). CuPy arrays use CuPy's erf."""
    if kernels.is_gpu_array(z):
        import cupyx.scipy.special

        return cupyx.scipy.special.erf(z)
    z = np.asarray(z, np.float64)
    a = np.abs(z)
    small = np.minimum(a, 2.5)
    # Taylor: 2/sqrt(pi) * sum (-1)^n z^(2n+1) / (n! (2n+1))
    term = small.copy()
    total = small.copy()
    z2 = small * small
    for n in range(1, _TAYLOR_TERMS):
        term = term * (-z2) / n
        total = total + term / (2 * n + 1)
    series = total * (2 / math.sqrt(math.pi))
    # erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))), for x >= 2.5
    big = np.maximum(a, 2.5)
    frac = big.copy()
    for k in range(_CF_TERMS, 0, -1):
        frac = big + (k / 2) / frac
    erfc = np.exp(-big * big) / math.sqrt(math.pi) / frac
    return np.sign(z) * np.where(a < 2.5, series, 1.0 - erfc)


def _sigmoid(xp, z):
    return xp.exp(-xp.logaddexp(0, -z))


def activation_forward(name, z):
    """act(z) in z's dtype (z is already in the compute dtype)."""
    xp = kernels.array_module(z)
    if name == "linear":
        return z
    if name == "relu":
        return xp.maximum(z, 0)
    if name == "sigmoid":
        return _sigmoid(xp, z)
    if name == "tanh":
        return xp.tanh(z)
    if name == "softmax":
        e = xp.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if name == "gelu":  # Keras's default, approximate=False: x * Phi(x)
        return (0.5 * z * (1 + erf(z.astype(np.float64) / math.sqrt(2)))).astype(z.dtype)
    if name == "silu":
        return z * _sigmoid(xp, z)
    raise ValueError(f"unknown activation {name!r}")


def activation_backward(name, dy, z, y):
    """d(loss)/dz from dy = d(loss)/dy, with z the pre-activation and y = act(z)."""
    xp = kernels.array_module(dy)
    if name == "linear":
        return dy
    if name == "relu":
        return xp.where(z > 0, dy, 0).astype(dy.dtype)
    if name == "sigmoid":
        return dy * y * (1 - y)
    if name == "tanh":
        return dy * (1 - y * y)
    if name == "softmax":
        return y * (dy - (dy * y).sum(axis=-1, keepdims=True))
    if name == "gelu":
        z64 = z.astype(np.float64)
        d = 0.5 * (1 + erf(z64 / math.sqrt(2))) + z64 * xp.exp(-0.5 * z64 * z64) / math.sqrt(2 * math.pi)
        return (dy * d).astype(dy.dtype)
    if name == "silu":
        s = _sigmoid(xp, z)
        return dy * (s + z * s * (1 - s))
    raise ValueError(f"unknown activation {name!r}")


# ----------------------------------------------------------------------------- initializers

def initializer(layer, arg, value):
    """An initializer name from INITIALIZERS or a callable (shape, dtype) -> array."""
    if callable(value) or value in INITIALIZERS:
        return value
    raise ValueError(f"{layer}: `{arg}` must be one of {', '.join(map(repr, INITIALIZERS))} or a callable "
                     f"(shape, dtype) -> array. Received: {arg}={value!r}")


def make_weight(init, rng, shape, dtype):
    if callable(init):
        value = np.asarray(init(shape, dtype), dtype=dtype)
        if value.shape != tuple(shape):
            raise ValueError(f"initializer returned shape {value.shape}, expected {tuple(shape)}")
        return value
    return INITIALIZERS[init](rng, shape, dtype)


def positive_int(layer, arg, value):
    if not isinstance(value, (numbers.Integral, np.integer)) or isinstance(value, (bool, np.bool_)) or value <= 0:
        raise ValueError(f"{layer}: `{arg}` must be a positive int. Received: {arg}={value!r}")
    return int(value)


# ----------------------------------------------------------------------------- layers

class Activation(Layer):
    """Applies an activation function, as Keras 3's ``Activation``.

    Args:
        activation: "linear", "relu", "sigmoid", "tanh", "softmax" (over the last axis),
            "gelu" (exact, with erf, as Keras's default), "silu" (alias "swish").

    Input: any shape; output: same shape and dtype (computed in float32 for float16).
    """

    def __init__(self, activation, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.activation = activation_name(type(self).__name__, "activation", activation)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def forward(self, x, training=False):
        if self.activation == "softmax" and x.ndim == 0:
            raise ValueError(f"Activation: softmax needs at least 1-D inputs. Received: inputs.shape={x.shape}")
        z = x.astype(acc_dtype(x.dtype))
        y = activation_forward(self.activation, z)
        self._saved = (x, y)
        return y.astype(x.dtype)

    def backward_impl(self, dy):
        x, y = self._saved
        acc = acc_dtype(x.dtype)
        return activation_backward(self.activation, dy.astype(acc), x.astype(acc), y).astype(dy.dtype)


class Flatten(Layer):
    """Flattens every axis but the batch axis, as Keras 3's ``Flatten``.

    Args:
        data_format: "channels_last" (default, None) or "channels_first"; with
            "channels_first" the channel axis is moved last before flattening (as Keras), so
            a model's Dense weights do not depend on the layout.

    Input: (batch, ...); output: (batch, prod(...)).
    """

    def __init__(self, data_format=None, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.data_format = validation.data_format(type(self).__name__, data_format)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], math.prod(input_shape[1:]))

    def forward(self, x, training=False):
        if x.ndim < 1:
            raise ValueError(f"Flatten: `inputs` must have a batch axis. Received: inputs.shape={tuple(x.shape)}")
        xp = kernels.array_module(x)
        self._saved = (x,)
        if self.data_format == "channels_first" and x.ndim > 2:
            x = xp.moveaxis(x, 1, -1)
        return xp.ascontiguousarray(x).reshape(x.shape[0], math.prod(x.shape[1:]))  # also for batch 0

    def backward_impl(self, dy):
        x = self._saved[0]
        xp = kernels.array_module(dy)
        if self.data_format == "channels_first" and x.ndim > 2:
            shape = (x.shape[0], *x.shape[2:], x.shape[1])
            return xp.ascontiguousarray(xp.moveaxis(dy.reshape(shape), -1, 1))
        return dy.reshape(x.shape)


class Dropout(Layer):
    """Inverted dropout, as Keras 3's ``Dropout``.

    Args:
        rate: fraction of inputs set to zero in training, in [0, 1); the others are scaled
            by 1 / (1 - rate). Identity at inference (``training=False``).
        seed: int seed of the masks (each training call draws a new mask).

    Input: any shape; output: same shape and dtype. The mask is kept as bits for backward.
    """

    def __init__(self, rate, noise_shape=None, seed=None, name=None, **kwargs):
        super().__init__(name=name, seed=seed, **kwargs)
        if not isinstance(rate, numbers.Real) or isinstance(rate, bool) or not 0 <= rate < 1:
            raise ValueError(f"Dropout: `rate` must be a number in [0, 1). Received: rate={rate!r}")
        validation.unsupported("Dropout", noise_shape=(noise_shape, None))
        self.rate = float(rate)
        self._rng = None

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def _random(self, xp, shape):
        if self._rng is None or self._rng[0] is not xp:
            self._rng = (xp, xp.random.RandomState(self.seed) if xp is not np else np.random.default_rng(self.seed))
        gen = self._rng[1]
        return gen.random_sample(shape, dtype=np.float32) if xp is not np else gen.random(shape, dtype=np.float32)

    def forward(self, x, training=False):
        training = validation.boolean("Dropout", "training", training)
        xp = kernels.array_module(x)
        if not training or self.rate == 0:
            self._saved = (x, None)
            return x
        keep = self._random(xp, x.shape) >= self.rate
        self._saved = (x, xp.packbits(keep.ravel()))
        scale = acc_dtype(x.dtype).type(1 / (1 - self.rate))
        return (x * keep * scale).astype(x.dtype)

    def _mask(self):
        x, bits = self._saved
        xp = kernels.array_module(x)
        return xp.unpackbits(bits)[:x.size].reshape(x.shape).astype(bool)

    def backward_impl(self, dy):
        x, bits = self._saved
        if bits is None:
            return dy
        scale = acc_dtype(dy.dtype).type(1 / (1 - self.rate))
        return (dy * self._mask() * scale).astype(dy.dtype)


class Dense(Layer):
    """Densely connected layer, as Keras 3's ``Dense``: y = activation(x @ kernel + bias).

    Args:
        units: positive int, the output size.
        activation: None/"linear", "relu", "sigmoid", "tanh", "softmax", "gelu", "silu".
        use_bias: add ``bias`` (default True).
        kernel_initializer: "glorot_uniform" (default), "he_normal", "zeros", "ones" or a
            callable (shape, dtype) -> array; bias_initializer likewise (default "zeros").
        seed: int seed of the initializers.

    Input: (batch, ..., in_features) of rank >= 2; output: (batch, ..., units), the input's
    dtype. Weights (Keras order): kernel (in_features, units), bias (units,), float32 for
    float16 inputs; the product is accumulated in float32 (float64 for float64).
    """

    weight_names = ("kernel", "bias")

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None, lora_rank=None,
                 name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        layer = type(self).__name__
        self.units = positive_int(layer, "units", units)
        self.activation = activation_name(layer, "activation", activation)
        self.use_bias = validation.boolean(layer, "use_bias", use_bias)
        self.kernel_initializer = initializer(layer, "kernel_initializer", kernel_initializer)
        self.bias_initializer = initializer(layer, "bias_initializer", bias_initializer)
        validation.unsupported(layer, kernel_regularizer=(kernel_regularizer, None),
                               bias_regularizer=(bias_regularizer, None),
                               activity_regularizer=(activity_regularizer, None),
                               kernel_constraint=(kernel_constraint, None), bias_constraint=(bias_constraint, None),
                               lora_rank=(lora_rank, None))
        self.weight_names = ("kernel", "bias") if self.use_bias else ("kernel",)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def build(self, input_shape, xp, dtype):
        if len(input_shape) < 2:
            raise ValueError(f"Dense: `inputs` must have rank >= 2 (batch, ..., features). "
                             f"Received: inputs.shape={tuple(input_shape)}")
        rng = np.random.default_rng(self.seed)
        wdtype = acc_dtype(dtype)
        params = {"kernel": make_weight(self.kernel_initializer, rng, (int(input_shape[-1]), self.units), wdtype)}
        if self.use_bias:
            params["bias"] = make_weight(self.bias_initializer, rng, (self.units,), wdtype)
        self.params = {k: xp.asarray(v) for k, v in params.items()}

    def forward(self, x, training=False):
        kernel = self.params["kernel"]
        if x.ndim < 2 or x.shape[-1] != kernel.shape[0]:
            raise ValueError(f"Dense: `inputs` must have rank >= 2 and {kernel.shape[0]} features on the last axis "
                             f"(the kernel is {tuple(kernel.shape)}). Received: inputs.shape={tuple(x.shape)}")
        acc = kernel.dtype
        z = x.reshape(-1, x.shape[-1]).astype(acc, copy=False) @ kernel
        if self.use_bias:
            z += self.params["bias"]
        y = activation_forward(self.activation, z)
        self._saved = (x, z if self.activation != "linear" else None, y if self.activation != "linear" else None)
        return y.astype(x.dtype, copy=False).reshape(*x.shape[:-1], self.units)

    def backward_impl(self, dy):
        x, z, y = self._saved
        kernel = self.params["kernel"]
        acc = kernel.dtype
        g = dy.reshape(-1, self.units).astype(acc, copy=False)
        g = activation_backward(self.activation, g, z, y)
        x2 = x.reshape(-1, x.shape[-1]).astype(acc, copy=False)
        self.grads = {"kernel": x2.T @ g}
        if self.use_bias:
            self.grads["bias"] = g.sum(axis=0)
        return (g @ kernel.T).astype(dy.dtype, copy=False).reshape(x.shape)


for _cls in (Dense, Activation, Flatten, Dropout):  # inspect.signature lists every argument
    with_signature(_cls)
