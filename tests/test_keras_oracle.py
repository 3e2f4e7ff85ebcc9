"""Keras 3 as an oracle: outputs and input gradients of the pooling and upsampling layers.

Runs where Keras 3 is installed with the jax (preferred: its pooling is TF's) or torch
backend: the `oracle` extra, which CI installs. The NumPy reference is also checked against
direct formulas and numerical gradients, which need no Keras.
"""

import numpy as np
import pytest

import gpulayers as gl
from gpulayers.testing import assert_close

from conftest import import_keras_oracle

keras = import_keras_oracle()
BACKEND = keras.backend.backend()
if BACKEND not in ("jax", "torch"):
    pytest.skip(f"Keras oracle needs the jax or torch backend, not {BACKEND}", allow_module_level=True)


def keras_forward_backward(layer, x, dy_fn):
    """(y, dx) of a Keras layer for float64 x, with dy = dy_fn(y.shape)."""
    if BACKEND == "jax":
        import jax

        y, vjp = jax.vjp(lambda t: layer(t), x)
        dy = dy_fn(y.shape)
        return np.asarray(y), np.asarray(vjp(dy)[0]), dy
    import torch

    xt = torch.tensor(x, requires_grad=True)
    yt = layer(xt)
    dy = dy_fn(tuple(yt.shape))
    (yt * torch.tensor(dy)).sum().backward()
    return yt.detach().numpy(), xt.grad.numpy(), dy

CASES = [
    ("MaxPooling1D", dict(pool_size=3, strides=2, padding="same"), (2, 10, 3)),
    ("AveragePooling1D", dict(pool_size=4, strides=3, padding="same"), (2, 11, 3)),
    ("MaxPooling2D", dict(pool_size=3, strides=2, padding="same"), (2, 8, 7, 3)),
    ("MaxPooling2D", dict(pool_size=(2, 3), strides=(1, 2), padding="valid"), (2, 8, 7, 3)),
    ("AveragePooling2D", dict(pool_size=3, strides=2, padding="same"), (2, 8, 7, 3)),
    ("AveragePooling2D", dict(pool_size=(2, 2), padding="valid"), (2, 9, 7, 3)),
    ("MaxPooling3D", dict(pool_size=2, strides=(1, 2, 2), padding="same"), (1, 5, 6, 7, 2)),
    ("AveragePooling3D", dict(pool_size=(2, 3, 2), padding="same"), (1, 5, 6, 7, 2)),
    ("GlobalMaxPooling2D", dict(keepdims=True), (2, 8, 7, 3)),
    ("GlobalAveragePooling1D", dict(), (2, 11, 3)),
    ("GlobalAveragePooling3D", dict(), (1, 5, 6, 7, 2)),
    ("UpSampling2D", dict(size=(2, 3)), (2, 5, 4, 3)),
    ("UpSampling2D", dict(size=(2, 2), interpolation="bilinear"), (2, 5, 4, 3)),
    ("UpSampling2D", dict(size=(3, 2), interpolation="bilinear"), (2, 5, 4, 3)),
    ("UpSampling2D", dict(size=(1, 4), interpolation="bilinear"), (2, 3, 5, 2)),
    ("UpSampling3D", dict(size=(2, 1, 3)), (1, 3, 4, 2, 2)),
]
CASES_1D = [("UpSampling1D", dict(size=3), (2, 7, 4))]


def check_against_keras(name, kw, x, rng):
    """Our reference and our simulated kernels against Keras, output and input gradient."""
    theirs = getattr(keras.layers, name)(dtype="float64", **kw)
    y_k, dx_k, dy = keras_forward_backward(theirs, x, rng.standard_normal)
    # keras.ops.mean computes float64 means with float32 precision: compare those as float32.
    tol = np.float32 if name.startswith("GlobalAverage") else None
    ours = getattr(gl, name)(**kw)
    assert_close(ours(x), y_k, tol, what=f"{name} output vs Keras")
    assert_close(ours.backward(dy), dx_k, tol, what=f"{name} gradient vs Keras")
    with gl.simulate():
        sim_layer = getattr(gl, name)(**kw)
        assert_close(sim_layer(x), y_k, tol, what=f"{name} kernel output vs Keras")
        assert_close(sim_layer.backward(dy), dx_k, tol, what=f"{name} kernel gradient vs Keras")


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("name,kw,shape", CASES)
def test_matches_keras(name, kw, shape, data_format, rng):
    if BACKEND == "torch" and (name.startswith("Average") and kw.get("padding") == "same"
                               or kw.get("interpolation") == "bilinear"):
        pytest.skip("Keras's torch backend differs from its TF/jax semantics here (replicated "
                    "edges in asymmetric 'same' average pooling; torch's bilinear resize)")
    if data_format == "channels_first":
        shape = (shape[0], shape[-1], *shape[1:-1])
    check_against_keras(name, dict(kw, data_format=data_format), rng.standard_normal(shape), rng)


@pytest.mark.parametrize("name,kw,shape", CASES_1D)
def test_matches_keras_without_data_format(name, kw, shape, rng):
    check_against_keras(name, kw, rng.standard_normal(shape), rng)


def keras_batchnorm(layer, x, training, dy_fn):
    """(y, dx, d gamma, d beta, new moving mean, new moving variance, dy) from Keras (jax)."""
    import jax

    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def f(tv, xv):
        y, new_nt = layer.stateless_call(tv, non_trainable, xv, training=training)
        return y, new_nt

    (y, new_nt), vjp = jax.vjp(f, trainable, x)
    dy = dy_fn(y.shape)
    dtv, dx = vjp((dy, [np.zeros_like(v) for v in new_nt]))
    grads = {v.name: np.asarray(g) for v, g in zip(layer.trainable_variables, dtv)}
    return np.asarray(y), np.asarray(dx), grads, [np.asarray(v) for v in new_nt], dy


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("axis,shape,center,scale", [
    (-1, (4, 5, 3, 6), True, True),
    (1, (3, 4, 5, 2), True, True),
    (2, (3, 4, 5, 2), False, True),  # (Keras 3 takes one int axis; lists are checked elsewhere)
    (0, (7, 3), True, False),
])
def test_batch_normalization_matches_keras(axis, shape, center, scale, training, rng):
    if BACKEND != "jax":
        pytest.skip("the BatchNormalization oracle uses jax's functional stateless_call")
    x = rng.standard_normal(shape) * 2 + 0.5
    kw = dict(axis=axis, momentum=0.9, epsilon=1e-3, center=center, scale=scale)
    theirs = getattr(keras.layers, "BatchNormalization")(dtype="float64", **kw)
    theirs.build(shape)
    # non-trivial weights and moving statistics, set through Keras's own get/set_weights order
    weights = [rng.standard_normal(w.shape) * 0.5 + (1.0 if i % 2 == 0 else 0.0)
               for i, w in enumerate(theirs.get_weights())]
    weights[-1] = np.abs(weights[-1]) + 0.5  # moving variance > 0
    theirs.set_weights(weights)
    y_k, dx_k, grads_k, moving_k, dy = keras_batchnorm(theirs, x, training, rng.standard_normal)
    # Keras's moments go through keras.ops.mean, float32-precise even for float64: compare as float32.
    for path in ("reference", "simulator"):
        ours = gl.BatchNormalization(**kw)
        ours.build(x.shape, np, x.dtype)
        ours.built = True
        ours.set_weights(theirs.get_weights())
        if path == "simulator":
            with gl.simulate():
                y, dx = ours(x, training=training), ours.backward(dy)
        else:
            y, dx = ours(x, training=training), ours.backward(dy)
        assert_close(y, y_k, np.float32, what=f"{path} output vs Keras")
        assert_close(dx, dx_k, np.float32, what=f"{path} input gradient vs Keras")
        for name in ("gamma", "beta"):
            if name in grads_k:
                assert_close(ours.grads[name], grads_k[name], np.float32, what=f"{path} d{name} vs Keras")
        if training:
            assert_close(ours.state["moving_mean"], moving_k[0], np.float32, what=f"{path} moving mean vs Keras")
            assert_close(ours.state["moving_variance"], moving_k[1], np.float32, what=f"{path} moving variance vs Keras")


def keras_functional(layer, x, states, mask, dy_fn):
    """Outputs and gradients (weights, x, initial states) of a Keras layer through jax.vjp."""
    import jax
    import jax.numpy as jnp

    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def f(tv, xv, sv):
        kwargs = {}
        if sv is not None:
            kwargs["initial_state"] = sv
        if mask is not None:
            kwargs["mask"] = jnp.asarray(mask)
        return layer.stateless_call(tv, non_trainable, xv, **kwargs)[0]

    y, vjp = jax.vjp(f, trainable, x, states)
    ys = list(y) if isinstance(y, (list, tuple)) else [y]
    dys = [dy_fn(np.shape(a)).astype(np.float32) for a in ys]
    d_w, dx, d_states = vjp(type(y)(dys) if isinstance(y, (list, tuple)) else dys[0])
    return [np.asarray(a) for a in ys], dys, [np.asarray(g) for g in d_w], np.asarray(dx), d_states


RNN_MASK = np.array([[1, 1, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], bool)


RNN_CASES = [
    ("SimpleRNN", dict(units=5, return_sequences=True, return_state=True)),
    ("SimpleRNN", dict(units=5, activation="relu", go_backwards=True)),
    ("LSTM", dict(units=5, return_sequences=True, return_state=True)),
    ("LSTM", dict(units=5, recurrent_activation="hard_sigmoid", go_backwards=True, return_sequences=True)),
    ("GRU", dict(units=5, return_sequences=True, return_state=True)),
    ("GRU", dict(units=5, reset_after=False, go_backwards=True, return_sequences=True, return_state=True)),
    ("GRU", dict(units=5, activation="linear")),
    ("LSTM", dict(units=5, use_bias=False)),
]


@pytest.mark.parametrize("masked,with_state", [(False, False), (True, True)])
@pytest.mark.parametrize("name,kw,bidirectional", [
    (name, kw, merge) for name, kw in RNN_CASES for merge in (None, "concat", "mul")
    # Keras 3 refuses Bidirectional around a go_backwards layer (its copy goes backwards too)
    if not (merge and kw.get("go_backwards"))])
def test_recurrent_layers_match_keras(name, kw, bidirectional, masked, with_state, rng):
    """float32 (Keras's RNNs keep float32 zero states even under a float64 policy)."""
    if BACKEND != "jax":
        pytest.skip("the recurrent oracle uses jax's functional stateless_call")
    x = rng.standard_normal((3, 6, 4)).astype(np.float32)
    theirs = getattr(keras.layers, name)(**kw)
    ours = getattr(gl, name)(**kw)
    if bidirectional:
        theirs = keras.layers.Bidirectional(theirs, merge_mode=bidirectional)
        ours = gl.Bidirectional(ours, merge_mode=bidirectional)
    theirs.build(x.shape)
    weights = [(rng.standard_normal(w.shape) * 0.5).astype(np.float32) for w in theirs.get_weights()]
    theirs.set_weights(weights)
    n_states = (2 if name == "LSTM" else 1) * (2 if bidirectional else 1)
    states = [rng.standard_normal((3, 5)).astype(np.float32) for _ in range(n_states)] if with_state else None
    mask = RNN_MASK if masked else None
    ys, dys, d_w, dx, d_states = keras_functional(theirs, x, states, mask, rng.standard_normal)
    for path in ("reference", "simulator"):
        layer = getattr(gl, name)(**kw) if not bidirectional else \
            gl.Bidirectional(getattr(gl, name)(**kw), merge_mode=bidirectional)
        with (gl.simulate() if path == "simulator" else _Nothing()):
            layer(x, initial_state=states, mask=mask)
            layer.set_weights(weights)
            outs = layer(x, initial_state=states, mask=mask)
            outs = outs if isinstance(outs, list) else [outs]
            grads = layer.backward(dys if len(dys) > 1 else dys[0])
        for k, (a, b) in enumerate(zip(outs, ys)):
            assert_close(a, b, what=f"{path} output {k} vs Keras")
        assert_close(grads[0] if with_state else grads, dx, what=f"{path} dx vs Keras")
        if with_state:
            for k, (a, b) in enumerate(zip(grads[1:], d_states)):
                assert_close(a, np.asarray(b), what=f"{path} d initial_state[{k}] vs Keras")
        for wname, g in zip(layer.weight_names, d_w):
            assert_close(layer.grads[wname], g, what=f"{path} d {wname} vs Keras")


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
