"""BatchNormalization: reference vs direct formulas and numerical gradients; kernels vs reference."""
import numpy as np
import pytest

import gpulayers as gl
from gpulayers import kernels
from gpulayers.layers import normalization as bn
from gpulayers.testing import assert_close, numerical_gradient, to_numpy

from conftest import DTYPES


def direct_statistics(x, axes):
    """Per-channel mean and biased variance by looping over the channels."""
    others = [a for a in range(x.ndim) if a not in axes]
    moved = np.transpose(x, list(axes) + others).astype(np.float64)
    flat = moved.reshape(int(np.prod([x.shape[a] for a in axes])), -1)
    mean = np.array([sum(row) / len(row) for row in flat])
    var = np.array([sum((v - m) ** 2 for v in row) / len(row) for row, m in zip(flat, mean)])
    shape = tuple(x.shape[a] for a in axes)
    return mean.reshape(shape), var.reshape(shape)


def set_weights_random(layer, x, rng):
    layer(x, training=False)  # builds
    ws = [rng.standard_normal(w.shape).astype(w.dtype) for w in layer.get_weights()]
    ws[-1] = np.abs(ws[-1]) + 0.5
    layer.set_weights(ws)
    return ws


AXES = [(-1, (4, 5, 3, 6)), (1, (3, 4, 5, 2)), ([1, 3], (3, 4, 5, 2)), (0, (9, 3)), (2, (2, 3, 4, 5, 2))]


@pytest.mark.parametrize("axis,shape", AXES)
def test_statistics_and_forward_against_direct_formulas(axis, shape, rng):
    x = rng.standard_normal(shape) * 3 + 1
    axes = tuple(sorted(a % len(shape) for a in (axis if isinstance(axis, list) else [axis])))
    mean, var = bn.batch_norm_statistics(x, axes)
    dmean, dvar = direct_statistics(x, axes)
    assert_close(mean, dmean)
    assert_close(var, dvar)
    layer = gl.BatchNormalization(axis=axis, epsilon=0.01)
    gamma, beta = rng.standard_normal(mean.shape), rng.standard_normal(mean.shape)
    layer(x)
    layer.set_weights([gamma, beta, np.zeros(mean.shape), np.ones(mean.shape)])
    y = layer(x, training=True)
    b = tuple(x.shape[a] if a in axes else 1 for a in range(x.ndim))
    expected = (x - dmean.reshape(b)) / np.sqrt(dvar.reshape(b) + 0.01) * gamma.reshape(b) + beta.reshape(b)
    assert_close(y, expected)
    y_inf = layer(x, training=False)  # moving statistics now: 0.99 * (0, 1) + 0.01 * batch
    mm, mv = 0.01 * dmean, 0.99 + 0.01 * dvar
    assert_close(y_inf, (x - mm.reshape(b)) / np.sqrt(mv.reshape(b) + 0.01) * gamma.reshape(b) + beta.reshape(b))


def numerical_grads(layer_factory, x, dy, training):
    """Central differences of sum(y * dy) w.r.t. x, gamma and beta (weights held fixed)."""
    def loss(xv, ws):
        layer = layer_factory()
        layer(xv, training=False)
        layer.set_weights(ws)
        return float(np.sum(layer(xv, training=training) * dy))

    layer = layer_factory()
    layer(x, training=False)
    ws0 = layer.get_weights()
    grads = [numerical_gradient(lambda v: loss(v, ws0), x)]
    for k in range(len(ws0) - 2):  # the trainable weights (the last two are moving statistics)
        grads.append(numerical_gradient(lambda v: loss(x, [v if i == k else w for i, w in enumerate(ws0)]), ws0[k]))
    return grads


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False), (False, False)])
@pytest.mark.parametrize("axis,shape", [(-1, (3, 2, 4)), (1, (2, 3, 2, 2)), ([0, 2], (2, 3, 2))])
def test_backward_matches_numerical_gradients(axis, shape, center, scale, training, rng):
    x = rng.standard_normal(shape) * 2 + 0.5
    ws = None

    def factory():
        return gl.BatchNormalization(axis=axis, center=center, scale=scale, epsilon=0.05)

    layer = factory()
    layer(x)
    ws = [rng.standard_normal(w.shape) for w in layer.get_weights()]
    ws[-1] = np.abs(ws[-1]) + 0.5
    layer.set_weights(ws)
    y = layer(x, training=training)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)

    def seeded():
        fresh = factory()
        fresh(x, training=False)
        fresh.set_weights(ws)
        fresh.built = True
        return fresh

    num = numerical_grads(seeded, x, dy, training)
    assert_close(dx, num[0], np.float32, what="dx")
    names = [n for n in layer.weight_names if not n.startswith("moving")]
    for name, g in zip(names, num[1:]):
        assert_close(layer.grads[name], g, np.float32, what=f"d{name}")
    assert set(layer.grads) == set(names)


def test_moving_statistics_follow_keras_recurrence(rng):
    layer = gl.BatchNormalization(axis=1, momentum=0.8)
    mm, mv = np.zeros(3), np.ones(3)
    for step in range(4):
        x = rng.standard_normal((6, 3, 5)) * (step + 1) + step
        layer(x, training=True)
        flat = np.moveaxis(x, 1, 0).reshape(3, -1)
        mm = mm * 0.8 + flat.mean(1) * 0.2
        mv = mv * 0.8 + flat.var(1) * 0.2  # biased variance, as Keras
    assert_close(layer.state["moving_mean"], mm)
    assert_close(layer.state["moving_variance"], mv)
    _, _, moving_mean, moving_variance = layer.get_weights()
    assert_close(moving_variance, mv)


def test_one_element_per_channel_gives_zero_variance(kernel_path, rng):
    x = rng.standard_normal((1, 5)).astype(np.float32)
    layer = gl.BatchNormalization()
    y = kernel_path(lambda a: layer(a, training=True), x)
    assert np.all(y == 0)
    assert np.all(to_numpy(layer.state["moving_variance"]) == np.float32(0.99))  # 0.99 * 1 + 0.01 * 0


def test_reference_statistics_are_stable_in_float32(rng):
    big = (rng.standard_normal((4096, 3)) + 1e4).astype(np.float32)  # mean 1e4, std 1
    _, var = bn.batch_norm_statistics(big, (1,))
    assert var.dtype == np.float32
    assert np.max(np.abs(var / big.astype(np.float64).var(0) - 1)) < 1e-3


@pytest.mark.parametrize("axis,shape", AXES + [(-1, (1, 1, 1, 300)), (1, (2, 300, 1, 1))])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_match_reference(kernel_path, axis, shape, training, dtype, rng):
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    ref = gl.BatchNormalization(axis=axis)
    ws = set_weights_random(ref, x, rng)
    y_ref = ref(x, training=training)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    dx_ref = ref.backward(dy)
    layer = gl.BatchNormalization(axis=axis)

    def run(a, b):
        layer(a, training=False)
        if kernels.is_gpu_array(a):
            layer.to("gpu")
        layer.set_weights(ws)
        y = layer(a, training=training)
        return y, layer.backward(b), layer.grads["gamma"], layer.grads["beta"], \
            layer.state["moving_mean"], layer.state["moving_variance"]

    y, dx, dgamma, dbeta, mm, mv = kernel_path(run, x, dy)
    assert_close(y, y_ref, what="output")
    assert_close(dx, dx_ref, what="dx", normwise=training)  # training dx cancels nearly equal terms
    wtol = np.float32 if dtype == np.float16 else None  # float16 inputs keep float32 weights
    assert_close(dgamma, ref.grads["gamma"], wtol, what="d gamma")
    assert_close(dbeta, ref.grads["beta"], wtol, what="d beta")
    assert_close(mm, ref.state["moving_mean"], wtol, what="moving mean")
    assert_close(mv, ref.state["moving_variance"], wtol, what="moving variance")


@pytest.mark.parametrize("axis,shape", [(-1, (40, 12, 300)), (1, (3, 300, 210))])
def test_kernels_with_several_rows_per_thread(kernel_path, axis, shape, rng):
    """Many channels leave few splits: each thread then walks several rows or plane chunks.

    The float32 results are compared normwise with a float64 reference: the input gradient
    subtracts nearly equal terms, so elementwise relative error is meaningless near zero.
    """
    x = (rng.standard_normal(shape) + 3).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    ref = gl.BatchNormalization(axis=axis)
    y_ref = ref(x.astype(np.float64), training=True)
    dx_ref = ref.backward(dy.astype(np.float64))
    layer = gl.BatchNormalization(axis=axis)
    y, dx, dgamma = kernel_path(lambda a, b: (layer(a, training=True), layer.backward(b), layer.grads["gamma"]),
                                x, dy)
    for ours, theirs in ((y, y_ref), (dx, dx_ref), (dgamma, ref.grads["gamma"])):
        assert np.max(np.abs(ours - theirs)) <= 2e-6 * np.max(np.abs(theirs))


@pytest.mark.parametrize("layout", ["rows", "planes"])
def test_kernel_statistics_are_stable_and_deterministic(kernel_path, layout, rng):
    c = 7
    base = rng.standard_normal((64, 37, c) if layout == "rows" else (6, c, 700)).astype(np.float32)
    x = base + np.float32(1e4)
    axis = -1 if layout == "rows" else 1

    def run(a):
        out = [bn.batch_norm_statistics_kernel(a, (a.ndim - 1,) if axis == -1 else (1,), 1e-3) for _ in range(2)]
        return out[0][1], out[1][1]

    v1, v2 = kernel_path(run, x)
    exact = np.moveaxis(x.astype(np.float64), axis, 0).reshape(c, -1).var(1)
    assert np.max(np.abs(v1 / exact - 1)) < 1e-3
    assert np.array_equal(v1, v2)


def test_float16_inputs_of_magnitude_1e3_do_not_overflow(kernel_path, rng):
    x = (rng.standard_normal((8, 6, 5, 4)) * 1e3).astype(np.float16)
    layer = gl.BatchNormalization()
    y = kernel_path(lambda a: layer(a, training=True), x)
    assert y.dtype == np.float16 and np.isfinite(y).all()
    assert_close(y, gl.BatchNormalization()(x, training=True))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(momentum=1.5), ValueError, r"BatchNormalization: `momentum` must be a number in \[0, 1\]. Received: momentum=1.5"),
    (dict(epsilon=0), ValueError, r"`epsilon` must be a positive number. Received: epsilon=0"),
    (dict(epsilon=-1e-3), ValueError, r"Received: epsilon=-0.001"),
    (dict(axis=1.5), TypeError, r"`axis` must be an int or a list of ints. Received: axis=1.5"),
    (dict(center="yes"), TypeError, r"`center` must be a bool"),
    (dict(gamma_initializer="glorot"), ValueError, r"`gamma_initializer`.*Received: gamma_initializer='glorot'"),
    (dict(synchronized="yes"), TypeError, r"`synchronized` must be a bool. Received: synchronized=.yes."),
    (dict(renorm=True), NotImplementedError, r"`renorm=True` is not supported"),
    (dict(beta_regularizer="l2"), NotImplementedError, r"`beta_regularizer='l2'`"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        gl.BatchNormalization(**kwargs)


@pytest.mark.parametrize("simulated", [False, True])
def test_bad_inputs_leave_moving_statistics_untouched(simulated, monkeypatch, rng):
    layer = gl.BatchNormalization(axis=1)
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    layer(x, training=True)
    before = [w.copy() for w in layer.get_weights()]

    def no_launch(*a, **k):
        raise AssertionError("a kernel was launched for bad input")

    monkeypatch.setattr(kernels, "launch", no_launch)
    with (kernels.simulate() if simulated else _Null()):
        with pytest.raises(ValueError, match=r"BatchNormalization: `axis` 3 is out of range for 2-D inputs"):
            gl.BatchNormalization(axis=3)(x[:, :, 0], training=True)
        with pytest.raises(ValueError, match=r"BatchNormalization: `inputs` must have sizes \(3,\) on axis \[1\]"):
            layer(rng.standard_normal((4, 4, 5)).astype(np.float32), training=True)
        with pytest.raises(ValueError, match=r"`inputs` must be 3-D like the first call"):
            layer(rng.standard_normal((4, 3)).astype(np.float32), training=True)
        with pytest.raises(TypeError, match=r"`inputs` must have dtype float16, float32 or float64. Received: inputs.dtype=int32"):
            layer(x.astype(np.int32), training=True)
        with pytest.raises(NotImplementedError, match=r"`mask=array of shape \(4, 3\)`"):
            layer(x, training=True, mask=np.ones((4, 3), bool))
    for a, b in zip(before, layer.get_weights()):
        assert np.array_equal(a, b)
    layer(x, training=True)
    with pytest.raises(ValueError, match=r"`dy` must have shape \(4, 3, 5\).*Received: dy.shape=\(4, 3\)"):
        layer.backward(np.ones((4, 3), np.float32))


def test_weights_in_keras_order_and_initializers():
    layer = gl.BatchNormalization(center=False, moving_variance_initializer=lambda s, d: np.full(s, 2.0, d))
    layer(np.ones((2, 4), np.float16))
    assert layer.weight_names == ("gamma", "moving_mean", "moving_variance")
    gamma, mm, mv = layer.get_weights()
    assert gamma.dtype == np.float32 and np.all(gamma == 1) and np.all(mm == 0) and np.all(mv == 2)
    with pytest.raises(ValueError, match=r"weight `gamma` must have shape \(4,\)"):
        layer.set_weights([np.ones(3), mm, mv])


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
