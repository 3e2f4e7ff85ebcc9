"""Validation classes across every layer and path: `training` is a bool, unknown call keywords,
a layer built in one float dtype and called with another, zero-size batches (no kernel launch),
and sizes beyond the kernels' 32-bit geometry."""
import numpy as np
import pytest

import gpulayers as gl
from gpulayers import kernels

from layer_cases import CASES, Path, assert_same, path, random_like, weights_of  # noqa: F401


def no_kernels(monkeypatch):
    """Make any raw-kernel launch or element-wise snippet call fail the test."""
    def launch(*args, **kwargs):
        raise AssertionError("a kernel was launched")

    monkeypatch.setattr(kernels, "launch", launch)
    monkeypatch.setattr(kernels._Snippet, "__call__", launch)


# ----------------------------------------------------------------------------- training

@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("bad", ["False", 0, 1, None, 1.0, np.array(True), np.array([True, False])],
                         ids=["str", "0", "1", "None", "float", "0-d-array", "array"])
def test_training_must_be_a_bool(case, bad, rng):
    layer = case.make()
    x = rng.standard_normal(case.shape).astype(np.float32)
    with pytest.raises(TypeError, match=rf"{type(layer).__name__}: `training` must be a bool. Received: training="):
        layer(x, training=bad, **case.extra(rng, case.shape[0]))
    assert not layer.built


@pytest.mark.parametrize("case", [c for c in CASES if c.name.startswith(("BatchNormalization", "MaxPooling1D",
                                                                          "GRU", "Bidirectional"))], ids=repr)
def test_numpy_bool_training_is_a_bool(case, rng):
    x = rng.standard_normal(case.shape).astype(np.float32)
    kw = case.extra(rng, case.shape[0])
    a, b = case.make(), case.make()
    assert_same(a(x, training=np.bool_(case.training), **kw), b(x, training=case.training, **kw))
    assert_same({k: v for k, v in a.state.items()}, {k: v for k, v in b.state.items()})


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_unknown_call_keywords_are_refused(case, rng):
    layer = case.make()
    x = rng.standard_normal(case.shape).astype(np.float32)
    with pytest.raises(TypeError, match=rf"{type(layer).__name__}: unknown call argument\(s\) trainig. "
                                        r"Received: trainig=True"):
        layer(x, trainig=True)
    assert not layer.built


# ----------------------------------------------------------------------------- dtypes

MIXED = [(np.float64, np.float32), (np.float32, np.float64), (np.float64, np.float16), (np.float16, np.float64)]


def _weight_dtype(dtype):
    return np.float64 if dtype == np.float64 else np.float32


@pytest.mark.parametrize("built,called", MIXED, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", [c for c in CASES if c.name in ("BatchNormalization-training",
                                                                 "BatchNormalization-inference", "LSTM", "GRU",
                                                                 "SimpleRNN", "Bidirectional")], ids=repr)
def test_a_layer_built_in_one_dtype_works_in_another(case, built, called, path, rng):
    """The result equals that of a layer built in the called dtype with the same weights (the
    weights and statistics cast to the call's accumulate type), on every path."""
    x = rng.standard_normal(case.shape)
    kw = case.extra(rng, case.shape[0])
    mixed, same = case.make(), case.make()
    with path.ctx():  # build: mixed in `built`, same in `called`
        mixed(path.arr(x.astype(built)), training=case.training,
              **path.arr({k: (v if k == "mask" else [s.astype(built) for s in v]) for k, v in kw.items()}))
        same(path.arr(x.astype(called)), training=case.training,
             **path.arr({k: (v if k == "mask" else [s.astype(called) for s in v]) for k, v in kw.items()}))
    weights = [rng.standard_normal(w.shape) * 0.5 for w in mixed.get_weights()]
    if case.name.startswith("BatchNormalization"):
        weights[-1] = np.abs(weights[-1]) + 0.5  # a positive moving variance
    weights = [w.astype(_weight_dtype(built)).astype(_weight_dtype(called)) for w in weights]
    mixed.set_weights(weights)
    same.set_weights(weights)
    assert mixed.get_weights()[0].dtype == _weight_dtype(built)
    x2 = rng.standard_normal(case.shape).astype(called) * 2 + 0.5
    kw2 = {k: (v if k == "mask" else [s.astype(called) for s in v]) for k, v in case.extra(rng, case.shape[0]).items()}
    with path.ctx():
        y = mixed(path.arr(x2), training=case.training, **path.arr(kw2))
        y_same = same(path.arr(x2), training=case.training, **path.arr(kw2))
    assert_same(y, y_same, "output")
    dy = random_like(rng, Path.numpy(y))
    with path.ctx():
        dx, dx_same = mixed.backward(path.arr(dy)), same.backward(path.arr(dy))
    assert_same(dx, dx_same, "input gradient")
    for k, g in mixed.grads.items():
        assert g.dtype == _weight_dtype(built), f"grads[{k!r}] must have its weight's dtype"
        assert_same(Path.numpy(g), Path.numpy(same.grads[k]).astype(_weight_dtype(built)), f"grads[{k!r}]")
    for k, v in mixed.state.items():  # the moving statistics stay in their own dtype
        assert v.dtype == _weight_dtype(built)
        np.testing.assert_allclose(Path.numpy(v), Path.numpy(same.state[k]), rtol=2e-3 if np.float16 in (built, called)
                                   else 1e-6)


# ----------------------------------------------------------------------------- zero-size batch

@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("first", [True, False], ids=["first-call", "after-a-call"])
def test_a_zero_size_batch_gives_empty_results_without_kernels(case, first, path, monkeypatch, rng):
    x1 = rng.standard_normal((1,) + case.shape[1:]).astype(np.float32)
    twin = case.make()  # the shapes of a batch-1 call, batch replaced by 0
    with path.ctx():
        y1 = twin(path.arr(x1), training=case.training, **path.arr(case.extra(rng, 1)))
        twin.backward(path.arr(random_like(rng, Path.numpy(y1))))
    layer = case.make()
    if not first:
        call_x = rng.standard_normal(case.shape).astype(np.float32)
        with path.ctx():
            layer(path.arr(call_x), training=case.training, **path.arr(case.extra(rng, case.shape[0])))
    state = {k: Path.numpy(v) for k, v in layer.state.items()}
    x0 = np.zeros((0,) + case.shape[1:], np.float32)
    no_kernels(monkeypatch)
    with path.ctx():
        y0 = layer(path.arr(x0), training=case.training, **path.arr(case.extra(rng, 0)))
        dy0 = path.arr(random_like(rng, Path.numpy(y0)))
        dx0 = layer.backward(dy0)
    outs, outs1 = (y0, y1) if isinstance(y0, list) else ([y0], [y1])
    for o, o1 in zip(outs, outs1):
        assert o.shape == (0,) + tuple(o1.shape[1:]) and o.dtype == o1.dtype and type(o) is type(o1)
    dxs = dx0 if isinstance(dx0, list) else [dx0]
    assert dxs[0].shape == x0.shape and dxs[0].dtype == x0.dtype and type(dxs[0]) is type(y0 if not isinstance(y0, list) else y0[0])
    assert all(d.shape[0] == 0 for d in dxs)
    assert set(layer.grads) == set(twin.grads)
    for k, g in layer.grads.items():
        assert g.shape == twin.grads[k].shape and g.dtype == twin.grads[k].dtype and not Path.numpy(g).any()
    if state:
        assert_same({k: Path.numpy(v) for k, v in layer.state.items()}, state, "moving statistics after an empty batch")


# ----------------------------------------------------------------------------- 32-bit geometry

BIG = 2**31


@pytest.mark.parametrize("make,shape,arg", [
    (lambda: gl.MaxPooling1D(pool_size=BIG, padding="same"), (1, 5, 2), "pool_size"),
    (lambda: gl.MaxPooling2D(strides=(BIG, 1), padding="same"), (1, 5, 4, 2), "strides"),
    (lambda: gl.AveragePooling3D(pool_size=(1, 1, BIG), padding="same"), (1, 2, 2, 3, 1), "pool_size"),
    (lambda: gl.AveragePooling1D(strides=BIG + 5, padding="same"), (1, 5, 2), "strides"),
    (lambda: gl.UpSampling1D(size=BIG), (1, 1, 1), "size"),
    (lambda: gl.UpSampling2D(size=(1, BIG), interpolation="bilinear"), (1, 1, 1, 1), "size"),
], ids=["max-pool", "max-strides", "avg-pool-3d", "avg-strides", "upsample", "bilinear"])
def test_sizes_beyond_32_bits_are_a_clear_error_on_the_kernel_path(make, shape, arg, monkeypatch):
    layer = make()
    no_kernels(monkeypatch)
    with pytest.raises(ValueError, match=rf"{type(layer).__name__}: `{arg}` must be below 2\*\*31 on the kernel "
                                         rf"path.*Received: {arg}="), kernels.simulate():
        layer(np.ones(shape, np.float32))
    assert not layer.built


def test_an_upsampled_size_beyond_32_bits_is_a_clear_error(monkeypatch):
    layer = gl.UpSampling2D(size=(2**30, 1))
    no_kernels(monkeypatch)
    with pytest.raises(ValueError, match=r"UpSampling2D: the output's spatial sizes must stay below 2\*\*31.*"
                                         r"Received: size=\(1073741824, 1\), inputs.shape=\(1, 2, 1, 1\)"), \
            kernels.simulate():
        layer(np.ones((1, 2, 1, 1), np.float32))


def test_the_reference_path_takes_any_stride(rng):
    """Python ints have no 32-bit limit: a stride of 2**31 works on the NumPy path, like any
    stride at least the input size."""
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    big, five = gl.MaxPooling1D(3, strides=BIG, padding="same"), gl.MaxPooling1D(3, strides=5, padding="same")
    assert_same(big(x), five(x))
    dy = rng.standard_normal((2, 1, 3)).astype(np.float32)
    assert_same(big.backward(dy), five.backward(dy))
