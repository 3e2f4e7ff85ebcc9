"""A failed call changes nothing; set_weights is all or nothing; Bidirectional never changes or
shares the layer it wraps; backward follows its forward's path; in-place edits of the input
after a call do not reach backward; get_weights before build; initializers checked and copied.
Every layer class, on the NumPy reference, the simulator and (with a device) the GPU."""
import threading

import numpy as np
import pytest

import gpulayers as gl
from gpulayers import kernels
from gpulayers.layers import normalization

from layer_cases import CASES, WEIGHTED, Path, assert_same, path, random_like, weights_of  # noqa: F401


def call(layer, case, p, x, kw):
    with p.ctx():
        return layer(p.arr(x), training=case.training, **p.arr(kw))


def backward(layer, p, dy):
    with p.ctx():
        return Path.numpy(layer.backward(p.arr(dy)))


def bad_calls(case, x, kw):
    """(description, x, keyword arguments) of calls that must raise, for this layer."""
    out = [("wrong rank", x[0], kw), ("0-D input", x.reshape(-1)[:1].reshape(()), kw), ("training='False'", x, dict(kw, training="False")),
           ("unknown keyword", x, dict(kw, bogus=1)), ("integer input", x.astype(np.int32), kw)]
    if case.name.startswith(("BatchNormalization", "SimpleRNN", "LSTM", "GRU", "Bidirectional")):
        wider = np.concatenate([x, x[..., :1]], axis=-1) if not case.name.endswith("inference") \
            else np.concatenate([x, x[:, :1]], axis=1)
        out.append(("wrong channel count", wider, kw))
    if case.mask:
        out.append(("mask of the wrong shape", x, dict(kw, mask=np.ones((x.shape[0], x.shape[1] + 1), bool))))
        out.append(("integer mask", x, dict(kw, mask=np.ones(x.shape[:2], np.int8))))
    if case.states:
        out.append(("initial state of the wrong shape", x,
                    dict(kw, initial_state=[np.ones((x.shape[0], 5), np.float32)] * case.states)))
        out.append(("too few initial states", x, dict(kw, initial_state=kw["initial_state"][:-1])))
    return out


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_a_failed_call_changes_nothing(case, path, rng):
    x = rng.standard_normal(case.shape).astype(np.float32)
    kw = case.extra(rng, case.shape[0])
    layer = case.make()
    y = call(layer, case, path, x, kw)
    dy = random_like(rng, Path.numpy(y))
    weights, state = weights_of(layer), {k: Path.numpy(v) for k, v in layer.state.items()}
    dx = backward(layer, path, dy)
    grads = {k: Path.numpy(v) for k, v in layer.grads.items()}
    for what, bad_x, bad_kw in bad_calls(case, x, kw):
        training = bad_kw.pop("training", case.training)
        with pytest.raises((ValueError, TypeError)), path.ctx():
            layer(path.arr(bad_x), training=training, **path.arr(bad_kw))
        assert_same(weights_of(layer), weights, f"weights after {what}")
        assert_same({k: Path.numpy(v) for k, v in layer.state.items()}, state, f"moving statistics after {what}")
        # the saved forward of the last good call is intact: backward gives the same gradients
        assert_same(backward(layer, path, dy), dx, f"backward after {what}")
        assert_same({k: Path.numpy(v) for k, v in layer.grads.items()}, grads, f"grads after {what}")
    bad_dys = [("dy of the wrong shape", [d[:, :1] if d.ndim > 1 else d[:1] for d in dy] if isinstance(dy, list)
                else dy[..., :1] if dy.shape[-1] > 1 else dy[:1]),
               ("dy of another dtype", [d.astype(np.float64) for d in dy] if isinstance(dy, list)
                else dy.astype(np.float64))]
    for what, bad in bad_dys:
        with pytest.raises((ValueError, TypeError)), path.ctx():
            layer.backward(path.arr(bad))
        assert_same(backward(layer, path, dy), dx, f"backward after {what}")


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_a_failed_first_call_leaves_the_layer_unbuilt(case, path, rng):
    x = rng.standard_normal(case.shape).astype(np.float32)
    kw = case.extra(rng, case.shape[0])
    layer, fresh = case.make(), case.make()
    for what, bad_x, bad_kw in bad_calls(case, x, kw):
        if what in ("wrong channel count", "integer input") or (what == "wrong rank" and
                                                                 case.name.startswith("BatchNormalization")):
            continue  # a first call may have any channel count (and batch norm any rank)
        training = bad_kw.pop("training", case.training)
        with pytest.raises((ValueError, TypeError)), path.ctx():
            layer(path.arr(bad_x), training=training, **path.arr(bad_kw))
        assert not layer.built and layer.get_weights() == [] and dict(layer.params) == {}, what
        assert layer.state == {} and layer._saved is None
    # and it builds on the next good call exactly as a fresh layer does
    assert_same(Path.numpy(call(layer, case, path, x, kw)), Path.numpy(call(fresh, case, path, x, kw)))
    assert_same(weights_of(layer), weights_of(fresh))


def _fail(*args, **kwargs):
    raise RuntimeError("planted failure in the middle of a call")


@pytest.mark.parametrize("training", [True, False])
def test_a_failure_after_the_statistics_leaves_batch_norm_unchanged(path, training, monkeypatch, rng):
    """The moving statistics are computed before the normalisation: a failure there must undo them."""
    x = rng.standard_normal((6, 4)).astype(np.float32)
    layer = gl.BatchNormalization(momentum=0.5)
    call(layer, type("C", (), {"training": True}), path, x, {})
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx, state = backward(layer, path, dy), {k: Path.numpy(v) for k, v in layer.state.items()}
    targets = ("_normalize", "_normalize_keep") if path.name != "numpy" else ("batch_norm_forward",)
    for target in targets:
        monkeypatch.setattr(normalization, target, _fail)
    with pytest.raises(RuntimeError, match="planted"), path.ctx():
        layer(path.arr(x * 2 + 1), training=training)
    monkeypatch.undo()
    assert_same({k: Path.numpy(v) for k, v in layer.state.items()}, state)
    assert_same(backward(layer, path, dy), dx)


def test_a_failure_in_one_direction_leaves_bidirectional_unchanged(path, rng):
    x = rng.standard_normal((3, 5, 2)).astype(np.float32)
    bi = gl.Bidirectional(gl.LSTM(4, return_sequences=True, seed=3))
    with path.ctx():
        y = bi(path.arr(x))
    dy = random_like(rng, Path.numpy(y))
    dx = backward(bi, path, dy)
    bi.backward_layer.forward = _fail  # the forward direction succeeds, then the backward one fails
    with pytest.raises(RuntimeError, match="planted"), path.ctx():
        bi(path.arr(x[:2] * 3))
    del bi.backward_layer.forward
    assert_same(backward(bi, path, dy), dx)  # both directions still hold the first call
    bi.backward_layer.backward_impl = _fail  # backward: forward direction done, backward one fails
    grads = {k: Path.numpy(v) for k, v in bi.grads.items()}
    bi.forward_layer.grads = {}
    with pytest.raises(RuntimeError, match="planted"), path.ctx():
        bi.backward(path.arr(dy))
    assert bi.forward_layer.grads == {}, "the forward direction's grads changed by a failed backward"
    del bi.backward_layer.backward_impl
    assert_same(backward(bi, path, dy), dx)
    assert_same({k: Path.numpy(v) for k, v in bi.grads.items()}, grads)


# ----------------------------------------------------------------------------- set_weights

def _bad_weight_lists(good):
    """(description, weights, error) lists that differ from ``good`` in their last array only."""
    last = good[-1]
    return [
        ("one array too few", good[:-1], ValueError),
        ("one array too many", good + [last], ValueError),
        ("wrong shape", good[:-1] + [np.ones(last.shape + (1,), last.dtype)], ValueError),
        ("complex", good[:-1] + [last.astype(np.complex64)], TypeError),
        ("object", good[:-1] + [np.array(last, dtype=object)], TypeError),
        ("None", good[:-1] + [None], TypeError),
        ("strings", good[:-1] + [np.full(last.shape, "1")], TypeError),
        ("ragged list", good[:-1] + [[[1.0], [1.0, 2.0]]], ValueError),
        ("integers the dtype rounds", good[:-1] + [np.full(last.shape, 2**24 + 1, np.int64)], ValueError),
        ("float overflow", good[:-1] + [np.full(last.shape, 1e300)], ValueError),
        ("not a list", np.stack([last, last]), TypeError),
    ]


@pytest.mark.parametrize("case", WEIGHTED, ids=repr)
def test_set_weights_is_all_or_nothing(case, path, rng):
    x = rng.standard_normal(case.shape).astype(np.float32)
    kw = case.extra(rng, case.shape[0])
    layer = case.make()
    call(layer, case, path, x, kw)
    before = weights_of(layer)
    new = [rng.standard_normal(w.shape).astype(w.dtype) + 2 for w in before]
    for what, ws, error in _bad_weight_lists(new):
        with pytest.raises(error, match=rf"{type(layer).__name__}: "):
            layer.set_weights(ws)
        assert_same(weights_of(layer), before, f"weights after set_weights with {what}")
    # accepted: float64 lists for float32 weights, exact integers; the arrays are copied
    ws = [w.astype(np.float64).tolist() for w in new[:-1]] + [np.full(new[-1].shape, 3, np.int16)]
    layer.set_weights(ws)
    assert_same(weights_of(layer), new[:-1] + [np.full(new[-1].shape, 3, new[-1].dtype)])
    mine = [w.copy() for w in new]
    layer.set_weights(mine)
    for w in mine:
        w += 100
    assert_same(weights_of(layer), new, "set_weights must copy the arrays it is given")


# ----------------------------------------------------------------------------- Bidirectional

HOLES = np.array([[1, 1, 0, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 0, 0]], bool)


@pytest.mark.parametrize("kind", ["GRU", "LSTM", "SimpleRNN"])
def test_bidirectional_neither_changes_nor_shares_the_wrapped_layer(kind, rng):
    x = rng.standard_normal((3, 5, 2)).astype(np.float32)
    layer = getattr(gl, kind)(4, return_sequences=True, seed=7)
    alone = layer(x, mask=HOLES)  # masked steps repeat the carried state (zero_output_for_mask=False)
    spec, weights = layer.spec, weights_of(layer)
    one, two = gl.Bidirectional(layer), gl.Bidirectional(layer, merge_mode="sum")
    back = getattr(gl, kind)(4, return_sequences=True, go_backwards=True, seed=9)
    three = gl.Bidirectional(layer, backward_layer=back)
    assert layer.spec == spec and not layer.zero_output_for_mask and not back.zero_output_for_mask
    assert not back.built and back.spec.zero_output_for_mask is False
    assert_same(layer(x, mask=HOLES), alone, "the wrapped layer's own output changed by wrapping it")
    assert_same(weights_of(layer), weights)
    for bi in (one, two, three):
        bi(x, mask=HOLES)
        for sub in bi._sublayers():
            assert sub is not layer and sub is not back and sub.zero_output_for_mask
    assert one.forward_layer is not two.forward_layer and one.backward_layer is not two.backward_layer
    one.params["forward_kernel"][...] += 1  # an update of one wrapper reaches no other layer
    assert not np.array_equal(one.get_weights()[0], two.get_weights()[0])
    assert_same(weights_of(layer), weights)
    dy = rng.standard_normal((3, 5, 8)).astype(np.float32)
    dx_one = one.backward(dy)
    two(x[:2])  # another wrapper's call does not touch one's saved forward
    layer(x[:1])
    assert_same(one.backward(dy), dx_one)
    # as Keras: the forward direction is the layer's config, so with its seed its weights
    fresh = getattr(gl, kind)(4, return_sequences=True, seed=7)
    fresh(x)
    assert_same(three.forward_layer.get_weights(), weights_of(fresh))


def test_bidirectional_params_updates_reach_the_directions(rng):
    x = rng.standard_normal((3, 5, 2)).astype(np.float32)
    bi = gl.Bidirectional(gl.GRU(4, return_sequences=True, seed=1))
    y0 = bi(x)
    assert set(bi.params) == set(bi.weight_names) and len(bi.params) == 6
    bi.backward(np.ones_like(y0))
    for k, p in bi.params.items():  # an optimizer step, in place
        p[...] -= 0.1 * bi.grads[k]
    assert bi.params["forward_kernel"] is bi.forward_layer.params["kernel"]
    expected = [w for w in weights_of(bi)]
    assert_same(bi.forward_layer.get_weights() + bi.backward_layer.get_weights(), expected)
    y1 = bi(x)
    assert not np.allclose(y0, y1)
    new = rng.standard_normal(bi.backward_layer.params["bias"].shape).astype(np.float32)
    bi.params["backward_bias"] = new
    assert bi.backward_layer.params["bias"] is new
    with pytest.raises(KeyError, match=r"Bidirectional: no parameter 'kernel'"):
        bi.params["kernel"] = new
    with pytest.raises(TypeError, match=r"Bidirectional: parameters cannot be removed"):
        del bi.params["forward_bias"]
    with pytest.raises(AttributeError, match=r"Bidirectional: `params` cannot be replaced"):
        bi.params = {"forward_bias": new}


# ----------------------------------------------------------------------------- paths

@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("forward_in_simulator", [True, False], ids=["sim-then-numpy", "numpy-then-sim"])
def test_backward_runs_on_the_path_of_its_forward(case, forward_in_simulator, rng):
    """Forward inside simulate() and backward outside (or the reverse) gives exactly the
    gradient of the forward's path."""
    sim, ref = Path("simulator"), Path("numpy")
    first, second = (sim, ref) if forward_in_simulator else (ref, sim)
    x = rng.standard_normal(case.shape).astype(np.float32)
    kw = case.extra(rng, case.shape[0])
    mixed, same = case.make(), case.make()
    y = call(mixed, case, first, x, kw)
    dy = random_like(rng, Path.numpy(y))
    call(same, case, first, x, kw)
    assert_same(backward(mixed, second, dy), backward(same, first, dy))
    assert_same({k: Path.numpy(v) for k, v in mixed.grads.items()},
                {k: Path.numpy(v) for k, v in same.grads.items()})


@pytest.mark.gpu
def test_a_gradient_on_another_device_is_a_clear_error(rng):
    if not kernels.gpu_available():
        pytest.skip("no CUDA GPU available (CuPy missing or no device)")
    gpu = Path("gpu")
    for case in CASES:
        layer = case.make()
        x = rng.standard_normal(case.shape).astype(np.float32)
        y = layer(x, training=case.training, **case.extra(rng, case.shape[0]))
        with pytest.raises(ValueError, match=r"must be on the same device as the forward input"):
            layer.backward(gpu.arr(random_like(rng, y)))  # NumPy forward, CuPy dy
        layer.to("gpu")
        y = layer(gpu.arr(x), training=case.training, **gpu.arr(case.extra(rng, case.shape[0])))
        with pytest.raises(ValueError, match=r"must be on the same device as the forward input"):
            layer.backward(random_like(rng, Path.numpy(y)))  # CuPy forward, NumPy dy


def test_simulate_is_per_thread():
    """As documented: a thread started inside simulate() runs the NumPy reference."""
    seen = []
    with gl.simulate():
        t = threading.Thread(target=lambda: seen.append(kernels.simulating()))
        t.start()
        t.join()
        seen.append(kernels.simulating())
    assert seen == [False, True]


# ----------------------------------------------------------------------------- in-place input edits

@pytest.mark.parametrize("case", CASES, ids=repr)
def test_editing_the_input_in_place_after_a_call_does_not_change_backward(case, path, rng):
    x = rng.standard_normal(case.shape).astype(np.float32)
    kw = case.extra(rng, case.shape[0])
    edited, clean = case.make(), case.make()
    xa, kwa = path.arr(x.copy()), path.arr({k: ([s.copy() for s in v] if isinstance(v, list) else v.copy())
                                            for k, v in kw.items()})
    with path.ctx():
        y = edited(xa, training=case.training, **kwa)
    dy = random_like(rng, Path.numpy(y))
    xa[...] = path.arr(rng.standard_normal(case.shape).astype(np.float32))  # the caller reuses its buffers
    if "mask" in kwa:
        kwa["mask"][...] = path.arr(~kw["mask"] | np.eye(*kw["mask"].shape, dtype=bool))
    for s in kwa.get("initial_state", []):
        s[...] = 7
    call(clean, case, path, x, kw)
    assert_same(backward(edited, path, dy), backward(clean, path, dy))
    assert_same({k: Path.numpy(v) for k, v in edited.grads.items()},
                {k: Path.numpy(v) for k, v in clean.grads.items()})


# ----------------------------------------------------------------------------- weights before build, initializers

@pytest.mark.parametrize("case", CASES, ids=repr)
def test_get_weights_before_build_is_empty(case):
    layer = case.make()
    assert layer.get_weights() == []
    with pytest.raises(ValueError, match=r"needs the layer built"):
        layer.set_weights([np.ones(3)] * len(layer.weight_names))


def _initializer_cases():
    rnn = lambda **kw: gl.LSTM(3, **kw)  # noqa: E731
    return [
        ("kernel_initializer", "kernel", rnn, (4, 12), (2, 4, 4)),
        ("recurrent_initializer", "recurrent_kernel", rnn, (3, 12), (2, 4, 4)),
        ("bias_initializer", "bias", rnn, (12,), (2, 4, 4)),
        ("bias_initializer", "bias", lambda **kw: gl.GRU(3, **kw), (2, 9), (2, 4, 4)),
        ("gamma_initializer", "gamma", lambda **kw: gl.BatchNormalization(**kw), (4,), (5, 4)),
        ("moving_variance_initializer", "moving_variance", lambda **kw: gl.BatchNormalization(**kw), (4,), (5, 4)),
    ]


@pytest.mark.parametrize("arg,weight,make,shape,x_shape", _initializer_cases(),
                         ids=["LSTM-kernel", "LSTM-recurrent", "LSTM-bias", "GRU-bias", "BN-gamma", "BN-moving-var"])
def test_initializers_are_checked_and_copied(arg, weight, make, shape, x_shape, rng):
    x = rng.standard_normal(x_shape).astype(np.float32)
    bad = [(lambda s, d: np.ones((7,) + tuple(s), d), ValueError, r"must have shape"),
           (lambda s, d: np.ones(s, np.complex64), TypeError, r"must have a real floating dtype"),
           (lambda s, d: None, TypeError, r"must be an array of shape .*Received: None"),
           (lambda s, d: np.full(s, "a"), TypeError, r"must have a real floating dtype")]
    for init, error, match in bad:
        layer = make(**{arg: init})
        with pytest.raises(error, match=rf"{type(layer).__name__}: `{arg}` \(for weight `{weight}`\) {match}"):
            layer(x)
        assert not layer.built and layer.get_weights() == [] and layer.params == {} and layer.state == {}
    given = np.full(shape, 0.25, np.float32)
    one, two = make(**{arg: lambda s, d: given}), make(**{arg: lambda s, d: given})
    one(x)
    two(x)
    holder = one.params if weight in one.params else one.state
    other = two.params if weight in two.params else two.state
    assert holder[weight] is not given and not np.shares_memory(holder[weight], given)
    assert np.all(given == 0.25), "the initializer's array was changed (e.g. by LSTM's unit_forget_bias)"
    kept = other[weight].copy()
    holder[weight][...] += 1  # an optimizer step on one layer
    assert np.all(given == 0.25), "the initializer's array was changed"
    assert_same(other[weight], kept, "two layers share a weight")


# ----------------------------------------------------------------------------- user layers

class _Scale(gl.Layer):
    """A user layer written to the protocol: y = x * w, with a planted failure on request."""

    weight_names = ("w",)

    def build(self, input_shape, xp, dtype):
        self.params["w"] = xp.full(input_shape[-1:], 2.0, dtype)

    def forward(self, x, training=False, **kwargs):
        self._saved = (x * 1,)
        self.params["w"] = self.params["w"] + 1  # a state change before the planted failure
        if kwargs.get("fail"):
            raise RuntimeError("planted failure")
        return x * self.params["w"]

    def backward_impl(self, dy):
        self.grads = {"w": (dy * self._saved[0]).sum(axis=0)}
        return dy * self.params["w"]


def test_a_user_layer_gets_the_same_guarantees(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    layer = _Scale()
    with pytest.raises(RuntimeError, match="planted"):
        layer(x, fail=True)  # a forward with **kwargs takes any keyword
    assert not layer.built and layer.params == {} and layer.get_weights() == []
    y = layer(x, anything="goes")
    assert_same(y, x * np.float32(3))
    dx = layer.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="planted"):
        layer(x * 5, fail=True)
    assert_same(layer.get_weights(), [np.full(4, 3, np.float32)])
    assert_same(layer.backward(np.ones_like(y)), dx)
    with pytest.raises(TypeError, match=r"_Scale: `training` must be a bool"):
        layer(x, training="yes")


def test_recurrent_backward_uses_the_weights_of_its_forward(path):
    """An in-place update of params between forward and backward (an optimizer step) does not
    change the gradient of that forward, on every path."""
    x = np.random.default_rng(31).standard_normal((2, 4, 3)).astype(np.float32)
    layer = gl.LSTM(5, return_sequences=True, seed=4)
    with path.ctx():
        y = layer(path.arr(x))
    dy = np.random.default_rng(32).standard_normal(Path.numpy(y).shape).astype(np.float32)
    reference = gl.LSTM(5, return_sequences=True, seed=4)
    with path.ctx():
        reference(path.arr(x))
    expected = backward(reference, path, dy)
    for p in layer.params.values():
        p *= 2  # an optimizer step in place
    assert_same(backward(layer, path, dy), expected)
