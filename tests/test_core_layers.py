"""Dense, Activation, Flatten, Dropout: direct formulas, numerical gradients, kernels path
(simulator / GPU), dtypes and errors."""
import math

import numpy as np
import pytest

import gpulayers as gl
from gpulayers.layers.core import erf
from gpulayers.testing import assert_close, numerical_gradient

SCALAR = {
    "linear": lambda v: v,
    "relu": lambda v: max(v, 0.0),
    "sigmoid": lambda v: 1 / (1 + math.exp(-v)),
    "tanh": math.tanh,
    "gelu": lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))),
    "silu": lambda v: v / (1 + math.exp(-v)),
}


def direct_activation(name, z):
    """Element by element with the math module (softmax row by row)."""
    if name == "softmax":
        out = np.empty_like(z)
        for idx in np.ndindex(*z.shape[:-1]):
            e = [math.exp(v - max(z[idx])) for v in z[idx]]
            out[idx] = [v / sum(e) for v in e]
        return out
    return np.vectorize(SCALAR[name])(z)


def test_erf_matches_math_erf():
    z = np.linspace(-7, 7, 2001)
    assert_close(erf(z), np.array([math.erf(v) for v in z]), what="erf")


@pytest.mark.parametrize("name", ["linear", "relu", "sigmoid", "tanh", "softmax", "gelu", "silu"])
def test_activation_formula_and_gradient(name):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 6)) * 2
    layer = gl.Activation(name)
    y = layer(x)
    assert_close(y, direct_activation(name, x), what=f"{name} forward")
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    if name == "relu":
        x = np.where(np.abs(x) < 1e-3, 0.5, x)  # keep away from the kink for central differences
        layer(x)
        dx = layer.backward(dy)
    num = numerical_gradient(lambda v: gl.Activation(name)(v), x, dy)
    assert_close(dx, num, np.float32, what=f"{name} backward vs numerical")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_activation_low_precision_follows_float64(dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 33)).astype(dtype)
    for name in ("gelu", "softmax", "silu"):
        layer = gl.Activation(name)
        y = layer(x)
        assert y.dtype == dtype
        assert_close(y, direct_activation(name, x.astype(np.float64)).astype(dtype), dtype, what=name)


def direct_dense(x, kernel, bias):
    out = np.zeros((*x.shape[:-1], kernel.shape[1]))
    for idx in np.ndindex(*x.shape[:-1]):
        for u in range(kernel.shape[1]):
            out[idx + (u,)] = sum(x[idx + (i,)] * kernel[i, u] for i in range(kernel.shape[0])) + bias[u]
    return out


@pytest.mark.parametrize("activation", [None, "tanh", "softmax"])
def test_dense_formula_and_gradients(activation):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 5))
    layer = gl.Dense(4, activation=activation, seed=0)
    layer(x)
    kernel, bias = rng.standard_normal((5, 4)), rng.standard_normal(4)
    layer.set_weights([kernel, bias])
    y = layer(x)
    assert y.shape == (2, 3, 4)
    assert_close(y, direct_activation(activation or "linear", direct_dense(x, kernel, bias)), what="Dense forward")
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)

    def with_weights(k, b):
        other = gl.Dense(4, activation=activation)
        other(x)
        other.set_weights([k, b])
        return other

    assert_close(dx, numerical_gradient(lambda v: with_weights(kernel, bias)(v), x, dy), np.float32, what="dx")
    assert_close(layer.grads["kernel"], numerical_gradient(lambda k: with_weights(k, bias)(x), kernel, dy),
                 np.float32, what="d kernel")
    assert_close(layer.grads["bias"], numerical_gradient(lambda b: with_weights(kernel, b)(x), bias, dy),
                 np.float32, what="d bias")


def test_dense_initialisation_as_keras():
    layer = gl.Dense(300, seed=4)
    layer(np.zeros((1, 200), np.float32))
    k = layer.params["kernel"]
    limit = math.sqrt(6 / 500)
    assert k.dtype == np.float32 and k.shape == (200, 300)
    assert np.abs(k).max() <= limit and np.abs(k).max() > 0.95 * limit
    assert abs(k.std() - limit / math.sqrt(3)) < 0.01 * limit
    assert not layer.params["bias"].any()
    again = gl.Dense(300, seed=4)
    again(np.zeros((1, 200), np.float32))
    assert np.array_equal(again.params["kernel"], k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_dense_kernel_path_matches_reference(kernel_path, dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((37, 70)).astype(dtype)
    dy = rng.standard_normal((37, 33)).astype(dtype)
    ref = gl.Dense(33, activation="gelu", seed=1)
    y_ref, dx_ref = ref(x), None
    dx_ref = ref.backward(dy)
    layer = gl.Dense(33, activation="gelu", seed=1)

    def run(xv, dyv):
        if kernel_path.name == "gpu":
            layer.to("gpu")
        y = layer(xv)
        return y, layer.backward(dyv), layer.grads["kernel"], layer.grads["bias"]

    y, dx, dk, db = kernel_path(run, x, dy)
    assert y.dtype == dtype and dx.dtype == dtype and dk.dtype == (np.float64 if dtype == np.float64 else np.float32)
    assert_close(y, y_ref, what="forward")
    assert_close(dx, dx_ref, what="backward")
    wtol = np.float16 if dtype == np.float16 else None
    assert_close(dk, ref.grads["kernel"], wtol, what="d kernel")
    assert_close(db, ref.grads["bias"], wtol, what="d bias")


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_flatten(data_format):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 4, 5))
    layer = gl.Flatten(data_format=data_format)
    y = layer(x)
    expected = np.stack([(np.moveaxis(s, 0, -1) if data_format == "channels_first" else s).ravel() for s in x])
    assert_close(y, expected, what="flatten")
    dy = rng.standard_normal(y.shape)
    assert_close(layer.backward(dy), numerical_gradient(lambda v: gl.Flatten(data_format=data_format)(v), x, dy),
                 np.float32, what="flatten backward")


def test_dropout_masks_scales_and_backward():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((64, 129)).astype(np.float32) + 3  # no zeros in x
    layer = gl.Dropout(0.3, seed=1)
    assert layer(x) is x  # identity at inference
    y = layer(x, training=True)
    kept = y != 0
    assert 0.65 < kept.mean() < 0.75
    assert_close(y[kept], (x / 0.7)[kept], what="kept values scaled by 1/(1-rate)")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    assert_close(dx, np.where(kept, dy / np.float32(0.7), 0).astype(np.float32), what="dropout backward")
    y2 = layer(x, training=True)
    assert not np.array_equal(y2 != 0, kept)  # a new mask per call
    again = gl.Dropout(0.3, seed=1)
    assert np.array_equal(again(x, training=True), y)  # reproducible from the seed


def test_errors_change_nothing():
    rng = np.random.default_rng(8)
    layer = gl.Dense(3, seed=0)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    y = layer(x)
    layer.backward(np.ones_like(y))
    kernel = layer.params["kernel"].copy()
    with pytest.raises(ValueError, match=r"Dense: `inputs` must have rank >= 2 and 5 features.*\(4, 6\)"):
        layer(rng.standard_normal((4, 6)).astype(np.float32))
    assert np.array_equal(layer.params["kernel"], kernel)
    with pytest.raises(ValueError, match="Dense: `units` must be a positive int. Received: units=0"):
        gl.Dense(0)
    with pytest.raises(ValueError, match="Dense: `activation` must be one of"):
        gl.Dense(3, activation="elu6")
    with pytest.raises(ValueError, match=r"Dropout: `rate` must be a number in \[0, 1\). Received: rate=1"):
        gl.Dropout(1)
    with pytest.raises(NotImplementedError, match="noise_shape"):
        gl.Dropout(0.5, noise_shape=(1, 2))
    with pytest.raises(TypeError, match="Dense: `inputs` must have dtype float16"):
        layer(np.ones((2, 5), np.int32))


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_flatten_of_an_empty_batch(data_format):
    layer = gl.Flatten(data_format=data_format)
    y = layer(np.zeros((0, 3, 4, 5), np.float32))
    assert y.shape == (0, 60)
    assert layer.backward(np.zeros((0, 60), np.float32)).shape == (0, 3, 4, 5)
