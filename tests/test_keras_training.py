"""Keras 3 (jax backend) as the oracle for training: Dense/Activation/Flatten layers, losses
(value and gradient), one optimizer step, and Conv2D/Conv2DTranspose through set_weights.

Runs where the `oracle` extra is installed (CI installs it); skipped elsewhere.
"""

import numpy as np
import pytest

import gpulayers as gl
from gpulayers.testing import assert_close

from conftest import import_keras_oracle

keras = import_keras_oracle()
if keras.backend.backend() != "jax":
    pytest.skip("the training oracle uses jax's vjp", allow_module_level=True)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def keras_layer_vjp(layer, x, dy_fn):
    """(y, dx, [weight gradients in get_weights() order], dy) of a built Keras layer."""
    tv = [v.value for v in layer.trainable_variables]
    ntv = [v.value for v in layer.non_trainable_variables]
    y, vjp = jax.vjp(lambda t, xv: layer.stateless_call(t, ntv, xv)[0], tv, x)
    dy = dy_fn(y.shape).astype(y.dtype)  # (some Keras activations compute float64 in float32)
    dtv, dx = vjp(dy)
    return np.asarray(y), np.asarray(dx), [np.asarray(g) for g in dtv], dy


def check_layer(ours, theirs, x, seed):
    rng = np.random.default_rng(seed)
    theirs.build(x.shape)
    weights = [rng.standard_normal(w.shape) * 0.4 for w in theirs.get_weights()]
    theirs.set_weights(weights)
    y_k, dx_k, dw_k, dy = keras_layer_vjp(theirs, x, rng.standard_normal)
    tol = None if y_k.dtype == np.float64 else np.float32
    dy = dy.astype(np.float64)
    for path in ("reference", "simulator"):
        layer = ours()
        if path == "simulator":
            with gl.simulate():
                layer(x)
                layer.set_weights(weights)
                y, dx = layer(x), layer.backward(dy)
        else:
            layer(x)
            layer.set_weights(weights)
            y, dx = layer(x), layer.backward(dy)
        assert_close(y, y_k.astype(np.float64), tol, what=f"{path} output vs Keras")
        assert_close(dx, dx_k.astype(np.float64), tol, what=f"{path} input gradient vs Keras")
        for name, g in zip([n for n in layer.weight_names if n in layer.params], dw_k):
            assert_close(layer.grads[name], g.astype(np.float64), tol, what=f"{path} d{name} vs Keras")


@pytest.mark.parametrize("activation", ["linear", "relu", "sigmoid", "tanh", "softmax", "gelu", "silu"])
def test_dense_matches_keras(activation):
    x = np.random.default_rng(1).standard_normal((3, 4, 7))
    check_layer(lambda: gl.Dense(5, activation=activation),
                keras.layers.Dense(5, activation=activation, dtype="float64"), x, 2)


def test_flatten_channels_first_matches_keras():
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 5))
    check_layer(lambda: gl.Flatten(data_format="channels_first"),
                keras.layers.Flatten(data_format="channels_first", dtype="float64"), x, 4)


CONV_CASES = [
    dict(filters=4, kernel_size=3),
    dict(filters=3, kernel_size=(3, 2), strides=(2, 1), padding="same"),
    dict(filters=2, kernel_size=3, strides=2, padding="same"),
    dict(filters=3, kernel_size=(2, 3), dilation_rate=(2, 1), padding="same", activation="relu"),
    dict(filters=2, kernel_size=4, strides=3, use_bias=False),
    dict(filters=3, kernel_size=2, activation="softmax"),  # over the last axis, whatever the layout
]


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("kw", CONV_CASES)
def test_conv2d_matches_keras(kw, data_format):
    shape = (2, 9, 8, 3) if data_format == "channels_last" else (2, 3, 9, 8)
    x = np.random.default_rng(5).standard_normal(shape)
    kw = dict(kw, data_format=data_format)
    check_layer(lambda: gl.Conv2D(**kw), keras.layers.Conv2D(dtype="float64", **kw), x, 6)


CONV_T_CASES = [
    dict(filters=4, kernel_size=3),
    dict(filters=3, kernel_size=3, strides=2, padding="same"),
    dict(filters=2, kernel_size=(2, 3), strides=(2, 3)),
    dict(filters=2, kernel_size=4, strides=2, padding="same"),
    dict(filters=3, kernel_size=3, strides=2, padding="valid", output_padding=1),
    dict(filters=3, kernel_size=3, strides=2, padding="same", output_padding=1),
    dict(filters=2, kernel_size=3, strides=1, dilation_rate=2, padding="same", activation="sigmoid"),
    dict(filters=2, kernel_size=2, strides=3, use_bias=False),
]


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("kw", CONV_T_CASES)
def test_conv2d_transpose_matches_keras(kw, data_format):
    shape = (2, 5, 4, 3) if data_format == "channels_last" else (2, 3, 5, 4)
    x = np.random.default_rng(7).standard_normal(shape)
    kw = dict(kw, data_format=data_format)
    check_layer(lambda: gl.Conv2DTranspose(**kw), keras.layers.Conv2DTranspose(dtype="float64", **kw), x, 8)


# ----------------------------------------------------------------------------- losses

def _labels(rng, shape, classes):
    return rng.integers(0, classes, shape)


LOSS_CASES = [
    ("SparseCategoricalCrossentropy", dict(from_logits=True), "sparse"),
    ("SparseCategoricalCrossentropy", dict(from_logits=False), "sparse"),
    ("CategoricalCrossentropy", dict(from_logits=True), "onehot"),
    ("CategoricalCrossentropy", dict(from_logits=False, label_smoothing=0.1), "onehot"),
    ("BinaryCrossentropy", dict(from_logits=True), "binary"),
    ("BinaryCrossentropy", dict(from_logits=False), "binary"),
    ("MeanSquaredError", dict(), "real"),
    ("MeanAbsoluteError", dict(), "real"),
]


@pytest.mark.parametrize("name,kw,kind", LOSS_CASES)
def test_loss_value_and_gradient_match_keras(name, kw, kind):
    rng = np.random.default_rng(9)
    shape = (6, 3, 5)
    if kind == "sparse":
        y_true = _labels(rng, shape[:-1], shape[-1])
    elif kind == "onehot":
        y_true = np.eye(shape[-1])[_labels(rng, shape[:-1], shape[-1])]
    elif kind == "binary":
        y_true = rng.integers(0, 2, shape).astype(np.float64)
    else:
        y_true = rng.standard_normal(shape)
    y_pred = rng.standard_normal(shape)
    if not kw.get("from_logits", True) and kind != "real":
        y_pred = rng.uniform(0.05, 1.0, shape)
        if kind == "binary":
            y_pred = y_pred * 0.9
    y_pred = y_pred.astype(np.float32)  # Keras losses compute in float32 (its dtype policy)
    theirs = getattr(keras.losses, name)(**kw)
    value_k, grad_k = jax.value_and_grad(lambda p: theirs(jnp.asarray(y_true), p))(jnp.asarray(y_pred))
    for path in ("reference", "simulator"):
        ours = getattr(gl.losses, name)(**kw)
        if path == "simulator":
            with gl.simulate():
                value, grad = ours(y_true, y_pred), ours.backward()
        else:
            value, grad = ours(y_true, y_pred), ours.backward()
        assert_close(np.asarray(value), np.asarray(value_k), what=f"{name} value vs Keras")
        assert_close(grad, np.asarray(grad_k), what=f"{name} gradient vs Keras")


# ----------------------------------------------------------------------------- optimizers

OPT_CASES = [
    ("SGD", dict(learning_rate=0.1)),
    ("SGD", dict(learning_rate=0.1, momentum=0.9)),
    ("SGD", dict(learning_rate=0.1, momentum=0.8, nesterov=True, weight_decay=0.05)),
    ("Adam", dict(learning_rate=0.01)),
    ("Adam", dict(learning_rate=0.01, amsgrad=True, clipnorm=0.5)),
    ("AdamW", dict(learning_rate=0.01, weight_decay=0.1)),
    ("AdamW", dict(learning_rate=0.02, global_clipnorm=1.0)),
    ("RMSprop", dict(learning_rate=0.01)),
    ("RMSprop", dict(learning_rate=0.01, momentum=0.9, centered=True, clipvalue=0.3)),
    ("RMSprop", dict(learning_rate=0.01, centered=True)),
    ("RMSprop", dict(learning_rate=0.01, momentum=0.5)),
]


@pytest.mark.parametrize("path", ["reference", "simulator"])
@pytest.mark.parametrize("name,kw", OPT_CASES)
def test_optimizer_steps_match_keras(name, kw, path):
    rng = np.random.default_rng(13)
    shapes = {"kernel": (7, 5), "bias": (5,)}
    init = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    steps = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(3)]
    variables = [keras.Variable(init[k], dtype="float32") for k in shapes]
    theirs = getattr(keras.optimizers, name)(**kw)
    theirs.build(variables)
    layer = gl.Dense(5)
    layer(np.zeros((1, 7), np.float32))
    layer.set_weights([init["kernel"], init["bias"]])
    ours = getattr(gl.optimizers, name)(**kw)
    kernel_before = layer.params["kernel"]
    for grads in steps:
        theirs.apply([grads[k] for k in shapes], variables)
        layer.grads = dict(grads)
        if path == "simulator":
            with gl.simulate():
                ours.apply(layer)
        else:
            ours.apply(layer)
    assert layer.params["kernel"] is kernel_before  # updated in place
    for k, v in zip(shapes, variables):
        assert_close(layer.params[k], np.asarray(v.value), what=f"{name} {k} after 3 steps vs Keras")


@pytest.mark.parametrize("opt,kw", [("SGD", dict(learning_rate=0.1, momentum=0.9)), ("Adam", dict(learning_rate=0.01))])
def test_short_fit_matches_keras_fit(opt, kw):
    """Same weights, same batches (no shuffling): per-epoch losses and final weights as Keras's fit."""
    rng = np.random.default_rng(17)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    theirs = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
    ours = gl.Sequential([gl.Dense(8, activation="tanh", seed=0), gl.Dense(3, seed=1)])
    ours.build((None, 6))
    theirs.set_weights(ours.get_weights())
    theirs.compile(optimizer=getattr(keras.optimizers, opt)(**kw),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ours.compile(optimizer=getattr(gl.optimizers, opt)(**kw),
                 loss=gl.losses.SparseCategoricalCrossentropy(from_logits=True))
    h_k = theirs.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0).history["loss"]
    h = ours.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)["loss"]
    assert_close(np.array(h, np.float32), np.array(h_k, np.float32), what="per-epoch losses vs Keras fit")
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        assert_close(a, b, what="weights after fit vs Keras")
    assert h[-1] < h[0]
