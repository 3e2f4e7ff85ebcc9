"""Recurrent layers: reference vs a direct per-sample implementation and float64 numerical
gradients; kernels (simulator, GPU) vs reference; Bidirectional; PyTorch converters; errors."""
import numpy as np
import pytest

import gpulayers as gl
from gpulayers.layers import recurrent, torch_weights
from gpulayers.testing import assert_close, numerical_gradient, to_numpy

from conftest import DTYPES


def act(name, a):
    return {"tanh": np.tanh, "sigmoid": lambda v: 1 / (1 + np.exp(-v)), "relu": lambda v: max(v, 0.0),
            "linear": lambda v: v, "hard_sigmoid": lambda v: min(max(v / 6 + 0.5, 0.0), 1.0)}[name](a)


def direct_rnn(name, kw, weights, x, states=None, mask=None):
    """Keras's equations, one sample, one step and one unit at a time (no shared code)."""
    u = kw["units"]
    fa, ra = kw.get("activation", "tanh"), kw.get("recurrent_activation", "sigmoid")
    W, U = weights[0], weights[1]
    reset_after = kw.get("reset_after", True)
    bias = weights[2] if kw.get("use_bias", True) else None
    B, T, _ = x.shape
    seq = np.zeros((B, T, u))
    finals = []
    for b in range(B):
        h = np.zeros(u) if states is None else states[0][b].astype(np.float64)
        c = np.zeros(u) if states is None or name != "LSTM" else states[1][b].astype(np.float64)
        order = range(T - 1, -1, -1) if kw.get("go_backwards") else range(T)
        for step, t in enumerate(order):
            xt = x[b, t]
            new_h, new_c = np.zeros(u), np.zeros(u)
            for j in range(u):
                def lin(g, src, mat, unit=j):
                    return sum(src[k] * mat[k, g * u + unit] for k in range(len(src)))
                if name == "SimpleRNN":
                    new_h[j] = act(fa, lin(0, xt, W) + lin(0, h, U) + (bias[j] if bias is not None else 0))
                elif name == "LSTM":
                    pre = [lin(g, xt, W) + lin(g, h, U) + (bias[g * u + j] if bias is not None else 0) for g in range(4)]
                    new_c[j] = act(ra, pre[1]) * c[j] + act(ra, pre[0]) * act(fa, pre[2])
                    new_h[j] = act(ra, pre[3]) * act(fa, new_c[j])
                else:
                    if reset_after:
                        bi = bias[0] if bias is not None else np.zeros(3 * u)
                        br = bias[1] if bias is not None else np.zeros(3 * u)
                        z = act(ra, lin(0, xt, W) + bi[j] + lin(0, h, U) + br[j])
                        r = act(ra, lin(1, xt, W) + bi[u + j] + lin(1, h, U) + br[u + j])
                        hh = act(fa, lin(2, xt, W) + bi[2 * u + j] + r * (lin(2, h, U) + br[2 * u + j]))
                    else:
                        bb = bias if bias is not None else np.zeros(3 * u)
                        z = act(ra, lin(0, xt, W) + lin(0, h, U) + bb[j])
                        r_all = [act(ra, lin(1, xt, W, k) + lin(1, h, U, k) + bb[u + k]) for k in range(u)]
                        rh = np.array([r_all[k] * h[k] for k in range(u)])
                        hh = act(fa, lin(2, xt, W) + lin(2, rh, U) + bb[2 * u + j])
                    new_h[j] = z * h[j] + (1 - z) * hh
            keep = mask is not None and not mask[b, t]
            if not keep:
                h, c = new_h, new_c
            seq[b, step] = (0 if kw.get("zero_output_for_mask") else h) if keep else h
        finals.append((h, c))
    out = seq if kw.get("return_sequences") else seq[:, -1]
    hs = np.stack([f[0] for f in finals])
    cs = np.stack([f[1] for f in finals])
    return [out, hs] + ([cs] if name == "LSTM" else [])


def random_weights(layer, rng):
    ws = [rng.standard_normal(w.shape) * 0.6 for w in layer.get_weights()]
    return ws


HOLES = np.array([[1, 1, 0, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 0, 0]], bool)  # holes, leading, trailing
OPTIONS = [
    ("SimpleRNN", dict(units=3)),
    ("SimpleRNN", dict(units=3, activation="relu", go_backwards=True)),
    ("LSTM", dict(units=3)),
    ("LSTM", dict(units=3, recurrent_activation="hard_sigmoid", activation="linear", use_bias=False)),
    ("GRU", dict(units=3)),
    ("GRU", dict(units=3, reset_after=False)),
    ("GRU", dict(units=3, go_backwards=True, recurrent_activation="tanh", activation="sigmoid")),
    ("GRU", dict(units=3, reset_after=False, use_bias=False, zero_output_for_mask=True)),
]


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("mask", [None, HOLES], ids=["no-mask", "mask"])
@pytest.mark.parametrize("name,kw", OPTIONS)
def test_reference_matches_direct_equations(name, kw, mask, with_state, rng):
    kw = dict(kw, return_sequences=True, return_state=True)
    x = rng.standard_normal((3, 5, 2))
    layer = getattr(gl, name)(**kw)
    layer(x)
    ws = random_weights(layer, rng)
    layer.set_weights(ws)
    states = [rng.standard_normal((3, 3)) for _ in range(layer.state_count)] if with_state else None
    got = layer(x, initial_state=states, mask=mask)
    for ours, theirs in zip(got, direct_rnn(name, kw, ws, x, states, mask)):
        assert_close(ours, theirs)




@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("name,kw", OPTIONS)
def test_backward_matches_numerical_gradients(name, kw, return_sequences, rng):
    kw = dict(kw, return_sequences=return_sequences, return_state=True)
    x = rng.standard_normal((3, 5, 2))
    layer = getattr(gl, name)(**kw)
    layer(x)
    ws = random_weights(layer, rng)
    layer.set_weights(ws)
    states = [rng.standard_normal((3, 3)) for _ in range(layer.state_count)]
    outs = layer(x, initial_state=states, mask=HOLES)
    dys = [rng.standard_normal(o.shape) for o in outs]
    dys[-1] = None if name == "LSTM" else dys[-1]  # an output without a gradient
    grads = layer.backward(dys)

    def loss(xv=x, sv=states, wv=ws):
        fresh = getattr(gl, name)(**kw)
        fresh(xv)
        fresh.set_weights(wv)
        return sum(float(np.sum(o * d)) for o, d in zip(fresh(xv, initial_state=sv, mask=HOLES), dys) if d is not None)

    assert_close(grads[0], numerical_gradient(lambda v: loss(xv=v), x), np.float32, what="dx")
    for k in range(layer.state_count):
        num = numerical_gradient(lambda v: loss(sv=[v if i == k else s for i, s in enumerate(states)]), states[k])
        assert_close(grads[1 + k], num, np.float32, what=f"d initial_state[{k}]")
    for k, wname in enumerate(layer.weight_names):
        num = numerical_gradient(lambda v: loss(wv=[v if i == k else w for i, w in enumerate(ws)]), ws[k])
        assert_close(layer.grads[wname], num, np.float32, what=f"d {wname}")


KERNEL_CASES = [(name, kw) for name, kw in OPTIONS] + [
    ("LSTM", dict(units=67)),  # batch * units = 335 crosses the 256-thread block
    ("GRU", dict(units=67, reset_after=False)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,kw", KERNEL_CASES)
def test_kernels_match_reference(kernel_path, name, kw, dtype, rng):
    kw = dict(kw, return_sequences=True, return_state=True, seed=5)
    x = rng.standard_normal((5, 6, 4)).astype(dtype)
    mask = rng.random((5, 6)) > 0.3
    ref = getattr(gl, name)(**kw)
    n = ref.state_count
    states = [rng.standard_normal((5, kw["units"])).astype(dtype) for _ in range(n)]
    outs_ref = ref(x, initial_state=states, mask=mask)
    dys = [rng.standard_normal(o.shape).astype(dtype) for o in outs_ref]
    grads_ref = ref.backward(dys)
    layer = getattr(gl, name)(**kw)

    def run(xv, mv, *rest):
        sv, dv = list(rest[:n]), list(rest[n:])
        outs = layer(xv, initial_state=sv, mask=mv)
        return outs + layer.backward(dv) + [layer.grads[k] for k in layer.weight_names]

    got = kernel_path(run, x, mask, *states, *dys)
    expected = outs_ref + grads_ref
    for k, (a, b) in enumerate(zip(got, expected)):
        assert_close(a, b, what=f"{kernel_path.name} result {k}")
    wtol = np.float32 if dtype == np.float16 else None  # float16 layers keep float32 weights
    for wname, a in zip(layer.weight_names, got[len(expected):]):
        assert_close(a, ref.grads[wname], wtol, what=f"{kernel_path.name} d {wname}")


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
def test_bidirectional_against_two_layers(merge_mode, rng):
    x = rng.standard_normal((3, 5, 2))
    fwd = gl.GRU(4, return_sequences=True, seed=1)
    bi = gl.Bidirectional(fwd, merge_mode=merge_mode)
    y = bi(x, mask=HOLES)
    f_ws, b_ws = bi.forward_layer.get_weights(), bi.backward_layer.get_weights()
    one = gl.GRU(4, return_sequences=True, zero_output_for_mask=True)
    one(x)
    one.set_weights(f_ws)
    yf = one(x, mask=HOLES)
    other = gl.GRU(4, return_sequences=True, go_backwards=True, zero_output_for_mask=True)
    other(x)
    other.set_weights(b_ws)
    yb = other(x, mask=HOLES)[:, ::-1]
    expected = {"concat": np.concatenate([yf, yb], -1), "sum": yf + yb, "mul": yf * yb, "ave": (yf + yb) / 2,
                None: [yf, yb]}[merge_mode]
    for a, b in zip(y if merge_mode is None else [y], expected if merge_mode is None else [expected]):
        assert_close(a, b)
    dys = [rng.standard_normal(a.shape) for a in (y if merge_mode is None else [y])]
    dx = bi.backward(dys if merge_mode is None else dys[0])

    def loss(v):
        b2 = gl.Bidirectional(gl.GRU(4, return_sequences=True), merge_mode=merge_mode)
        b2(v)
        b2.set_weights(f_ws + b_ws)
        outs = b2(v, mask=HOLES)
        return sum(float(np.sum(o * d)) for o, d in zip(outs if merge_mode is None else [outs], dys))

    assert_close(dx, numerical_gradient(loss, x), np.float32)
    assert len(bi.get_weights()) == 6 and set(bi.grads) == {f"{d}_{w}" for d in ("forward", "backward")
                                                             for w in ("kernel", "recurrent_kernel", "bias")}


def test_bidirectional_states_and_kernels(kernel_path, rng):
    x = rng.standard_normal((4, 6, 3)).astype(np.float32)
    bi_ref = gl.Bidirectional(gl.LSTM(5, return_sequences=True, return_state=True, seed=2))
    states = [rng.standard_normal((4, 5)).astype(np.float32) for _ in range(4)]
    outs_ref = bi_ref(x, initial_state=states)
    assert len(outs_ref) == 5 and outs_ref[0].shape == (4, 6, 10)
    dys = [rng.standard_normal(o.shape).astype(np.float32) for o in outs_ref]
    grads_ref = bi_ref.backward(dys)
    bi = gl.Bidirectional(gl.LSTM(5, return_sequences=True, return_state=True, seed=2))

    def run(xv, *rest):
        outs = bi(xv, initial_state=list(rest[:4]))
        return outs + bi.backward(list(rest[4:]))

    got = kernel_path(run, x, *states, *dys)
    for a, b in zip(got, outs_ref + grads_ref):
        assert_close(a, b)


def torch_style_gru(x, sd, u):
    """PyTorch's nn.GRU equations (gates r, z, n) written out with NumPy."""
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    w_ih, w_hh, b_ih, b_hh = (sd[k + "_l0"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    h = np.zeros((x.shape[0], u))
    for t in range(x.shape[1]):
        gi, gh = x[:, t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
        r, z = sig(gi[:, :u] + gh[:, :u]), sig(gi[:, u:2 * u] + gh[:, u:2 * u])
        n = np.tanh(gi[:, 2 * u:] + r * gh[:, 2 * u:])
        h = (1 - z) * n + z * h
    return h


def test_pytorch_converters_follow_pytorch_equations_and_round_trip(rng):
    x = rng.standard_normal((2, 4, 3))
    sd = {"weight_ih_l0": rng.standard_normal((12, 3)), "weight_hh_l0": rng.standard_normal((12, 4)),
          "bias_ih_l0": rng.standard_normal(12), "bias_hh_l0": rng.standard_normal(12)}
    gru = gl.GRU(4)
    gru(x)
    gru.set_weights(torch_weights.from_torch_state_dict("GRU", sd))
    assert_close(gru(x), torch_style_gru(x, sd, 4))
    back = torch_weights.to_torch_state_dict(gru)
    for k in sd:
        assert_close(back[k], sd[k])
    lstm = gl.LSTM(4)
    lstm(x)
    sd_lstm = torch_weights.to_torch_state_dict(lstm)
    assert sd_lstm["weight_ih_l0"].shape == (16, 3) and np.all(sd_lstm["bias_hh_l0"] == 0)
    for a, b in zip(torch_weights.from_torch_state_dict("LSTM", sd_lstm), lstm.get_weights()):
        assert_close(a, b)
    with pytest.raises(ValueError, match="reset_after=False has no PyTorch equivalent"):
        g = gl.GRU(4, reset_after=False)
        g(x)
        torch_weights.to_torch_state_dict(g)


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
def test_pytorch_modules_are_reproduced(kind, rng):
    torch = pytest.importorskip("torch", reason="PyTorch (optional oracle) is not installed")
    torch.manual_seed(0)
    module = {"SimpleRNN": torch.nn.RNN, "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}[kind](3, 5, batch_first=True)
    module = module.double()
    x = rng.standard_normal((2, 6, 3))
    ours = getattr(gl, kind)(5, return_sequences=True)
    ours(x)
    ours.set_weights(torch_weights.from_torch_state_dict(kind, module.state_dict()))
    with torch.no_grad():
        expected = module(torch.from_numpy(x))[0].numpy()
    assert_close(ours(x), expected)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in torch_weights.to_torch_state_dict(ours).items()})
    with torch.no_grad():
        assert_close(module(torch.from_numpy(x))[0].numpy(), expected)


def test_initializers_follow_keras():
    layer = gl.LSTM(6, seed=7)
    layer(np.zeros((1, 2, 10), np.float32))
    kernel, recurrent_kernel, bias = layer.get_weights()
    limit = np.sqrt(6 / (10 + 24))
    assert kernel.shape == (10, 24) and np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.5 * limit
    assert_close(recurrent_kernel @ recurrent_kernel.T, np.eye(6, dtype=np.float32))  # orthogonal rows
    assert np.all(bias[6:12] == 1) and np.all(bias[:6] == 0) and np.all(bias[12:] == 0)  # unit_forget_bias
    again = gl.LSTM(6, seed=7)
    again(np.zeros((1, 2, 10), np.float32))
    assert all(np.array_equal(a, b) for a, b in zip(again.get_weights(), layer.get_weights()))
    gru = gl.GRU(3)
    gru(np.zeros((1, 2, 4)))
    assert gru.get_weights()[2].shape == (2, 9) and gl.GRU(3, reset_after=False).weight_names[-1] == "bias"


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(units=0), ValueError, r"GRU: `units` must be a positive int. Received: units=0"),
    (dict(units=4, activation="gelu"), ValueError, r"`activation` must be one of .*Received: activation='gelu'"),
    (dict(units=4, recurrent_activation="softmax"), ValueError, r"Received: recurrent_activation='softmax'"),
    (dict(units=4, dropout=0.5), NotImplementedError, r"GRU: `dropout=0.5` is not supported"),
    (dict(units=4, recurrent_dropout=0.1), NotImplementedError, r"`recurrent_dropout=0.1`"),
    (dict(units=4, stateful=True), NotImplementedError, r"`stateful=True`"),
    (dict(units=4, unroll=True), NotImplementedError, r"`unroll=True`"),
    (dict(units=4, unit_forget_bias=False), TypeError, r"GRU: unknown argument"),
    (dict(units=4, kernel_initializer="no_such_initializer"), ValueError, r"`kernel_initializer`.*Received"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        gl.GRU(**kwargs)


def test_bad_inputs_fail_before_any_kernel(monkeypatch, rng):
    from gpulayers import kernels

    layer = gl.LSTM(4, return_state=True)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    layer(x)
    monkeypatch.setattr(kernels, "launch", lambda *a, **k: (_ for _ in ()).throw(AssertionError("launched")))
    with gl.simulate():
        with pytest.raises(ValueError, match=r"LSTM: `inputs` must be 3-D.*Received: inputs.shape=\(2, 5\)"):
            layer(x[:, :, 0])
        with pytest.raises(ValueError, match=r"`inputs` must have 3 features.*Received: inputs.shape=\(2, 5, 4\)"):
            layer(np.zeros((2, 5, 4), np.float32))
        with pytest.raises(ValueError, match=r"`mask` must have shape \(batch, time\) = \(2, 5\)"):
            layer(x, mask=np.ones((2, 4), bool))
        with pytest.raises(TypeError, match=r"`mask` must be a bool array. Received: mask.dtype=int64"):
            layer(x, mask=np.ones((2, 5), np.int64))
        with pytest.raises(ValueError, match=r"`initial_state` must be a list of 2 arrays. Received: 1 arrays"):
            layer(x, initial_state=[np.zeros((2, 4), np.float32)])
        with pytest.raises(ValueError, match=r"`initial_state\[1\]` must have shape \(batch, units\) = \(2, 4\)"):
            layer(x, initial_state=[np.zeros((2, 4), np.float32), np.zeros((2, 3), np.float32)])
        with pytest.raises(TypeError, match=r"`inputs` must have dtype float16, float32 or float64"):
            layer(x.astype(np.int32))
    layer(x)
    with pytest.raises(ValueError, match=r"LSTM: `dy` must be a list of 3 gradients"):
        layer.backward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"`dy\[1\]` must have shape \(2, 4\)"):
        layer.backward([None, np.zeros((2, 5), np.float32), None])
    with pytest.raises(TypeError, match=r"Bidirectional: `layer` must be a SimpleRNN, LSTM or GRU"):
        gl.Bidirectional(gl.MaxPooling1D())
    with pytest.raises(ValueError, match=r"`merge_mode` must be one of .*Received: merge_mode='max'"):
        gl.Bidirectional(gl.GRU(2), merge_mode="max")


def test_gradient_of_only_a_state(kernel_path, rng):
    """backward([None, dh]) works: only the returned state gets a gradient."""
    x = rng.standard_normal((2, 4, 3)).astype(np.float32)
    ref = gl.GRU(3, return_state=True, seed=1)
    ref(x)
    dh = rng.standard_normal((2, 3)).astype(np.float32)
    dx_ref = ref.backward([None, dh])
    layer = gl.GRU(3, return_state=True, seed=1)
    dx = kernel_path(lambda a, g: (layer(a), layer.backward([None, g]))[1], x, dh)
    assert_close(dx, dx_ref)
    assert np.abs(to_numpy(dx)).max() > 0


def test_converters_are_still_reachable_from_the_recurrent_module():
    assert recurrent.from_torch_state_dict is torch_weights.from_torch_state_dict
    assert recurrent.to_torch_state_dict is torch_weights.to_torch_state_dict
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        recurrent.nothing_here  # noqa: B018
