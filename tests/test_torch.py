"""gpulayers.torch: the PyTorch modules and their custom ops, on CPU tensors (NumPy reference and
simulator) and, with the marker `gpu`, on CUDA tensors."""
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import gpulayers as gl  # noqa: E402
import gpulayers.torch as glt  # noqa: E402
from gpulayers import kernels, testing  # noqa: E402


def _bidirectional(mod):
    return mod.Bidirectional(mod.LSTM(3, return_sequences=True, seed=4), merge_mode="sum")


def _bidirectional_states(mod):
    return mod.Bidirectional(mod.GRU(2, return_state=True, seed=5), merge_mode="concat")


# (id, module factory taking gpulayers or gpulayers.torch, input shape, training)
CASES = [
    ("max1d-same", lambda m: m.MaxPooling1D(pool_size=3, strides=2, padding="same"), (2, 9, 3), False),
    ("max2d-cf-same", lambda m: m.MaxPooling2D(pool_size=(2, 3), padding="same", data_format="channels_first"),
     (2, 3, 5, 7), False),
    ("max3d", lambda m: m.MaxPooling3D(pool_size=2), (1, 4, 5, 4, 2), False),
    ("avg1d", lambda m: m.AveragePooling1D(pool_size=2), (2, 7, 3), False),
    ("avg2d-same", lambda m: m.AveragePooling2D(pool_size=3, strides=2, padding="same"), (2, 7, 6, 3), False),
    ("avg3d-cf", lambda m: m.AveragePooling3D(pool_size=2, data_format="channels_first"), (1, 2, 4, 5, 4), False),
    ("gmax1d", lambda m: m.GlobalMaxPooling1D(), (2, 6, 3), False),
    ("gmax2d-cf-keep", lambda m: m.GlobalMaxPooling2D(data_format="channels_first", keepdims=True),
     (2, 3, 4, 5), False),
    ("gmax3d", lambda m: m.GlobalMaxPooling3D(), (1, 3, 2, 2, 2), False),
    ("gavg1d-cf", lambda m: m.GlobalAveragePooling1D(data_format="channels_first"), (2, 3, 5), False),
    ("gavg2d", lambda m: m.GlobalAveragePooling2D(), (2, 4, 5, 3), False),
    ("gavg3d-keep", lambda m: m.GlobalAveragePooling3D(keepdims=True), (1, 3, 2, 4, 2), False),
    ("up1d", lambda m: m.UpSampling1D(size=3), (2, 4, 3), False),
    ("up2d-bilinear", lambda m: m.UpSampling2D(size=(2, 3), interpolation="bilinear"), (2, 3, 4, 2), False),
    ("up3d-cf", lambda m: m.UpSampling3D(size=2, data_format="channels_first"), (1, 2, 2, 3, 2), False),
    ("bn-train-axis1", lambda m: m.BatchNormalization(axis=1, momentum=0.9), (4, 3, 5, 2), True),
    ("bn-train-2axes-noscale", lambda m: m.BatchNormalization(axis=[1, 3], scale=False), (3, 2, 4, 3), True),
    ("bn-inference", lambda m: m.BatchNormalization(center=False), (5, 3), False),
    ("simple_rnn", lambda m: m.SimpleRNN(4, return_sequences=True, seed=0), (3, 5, 4), False),
    ("lstm-state", lambda m: m.LSTM(3, return_state=True, seed=1), (2, 6, 4), False),
    ("gru", lambda m: m.GRU(3, return_sequences=True, seed=2), (2, 5, 3), False),
    ("gru-reset-before-back", lambda m: m.GRU(3, reset_after=False, go_backwards=True, seed=3), (2, 4, 3), False),
    ("bidirectional-lstm-sum", _bidirectional, (2, 4, 3), False),
    ("bidirectional-gru-states", _bidirectional_states, (2, 3, 2), False),
]
IDS = [c[0] for c in CASES]

# the models-issue layers: Dense, convolutions, Activation, Flatten, Dropout (inference)
NEW_CASES = [
    ("dense-relu-3d", lambda m: m.Dense(5, activation="relu", seed=1), (2, 3, 7), False),
    ("dense-nobias-softmax", lambda m: m.Dense(4, activation="softmax", use_bias=False, seed=2), (6, 5), False),
    ("conv2d-same-stride2-relu", lambda m: m.Conv2D(4, 3, strides=2, padding="same", activation="relu",
                                                    bias_initializer="ones", seed=3), (2, 7, 6, 3), False),
    ("conv2d-cf-dilated-nobias-sigmoid", lambda m: m.Conv2D(3, (2, 3), dilation_rate=2, use_bias=False,
                                                           activation="sigmoid", data_format="channels_first",
                                                           seed=4), (2, 2, 7, 8), False),
    ("conv2dT-valid-stride2-outpad", lambda m: m.Conv2DTranspose(3, 3, strides=2, output_padding=1, seed=5,
                                                                bias_initializer="ones"), (2, 4, 5, 2), False),
    ("conv2dT-cf-same-silu", lambda m: m.Conv2DTranspose(2, (3, 2), strides=(1, 2), padding="same",
                                                        activation="silu", data_format="channels_first", seed=6),
     (2, 3, 4, 5), False),
] + [(f"activation-{a}", (lambda a: lambda m: m.Activation(a))(a), (3, 4, 5), False)
     for a in ("linear", "relu", "sigmoid", "tanh", "softmax", "gelu", "silu")] + [
    ("flatten", lambda m: m.Flatten(), (2, 3, 4, 5), False),
    ("flatten-cf", lambda m: m.Flatten(data_format="channels_first"), (2, 3, 4, 5), False),
    ("dropout-eval", lambda m: m.Dropout(0.4, seed=1), (3, 4), False),
]
NEW_IDS = [c[0] for c in NEW_CASES]


def _listify(y):
    return list(y) if isinstance(y, (list, tuple)) else [y]


def _assert_close(actual, expected, dtype, what, normwise=False):
    ok, _, _, message = testing.compare(actual, expected, dtype, normwise=normwise)
    assert ok, f"{what}: {message}"


def _built(factory, shape, dtype=torch.float32):
    """A gpulayers.torch module built by one inference call (which changes no statistics)."""
    module = factory(glt)
    module.eval()
    with torch.no_grad():
        module(torch.zeros(shape, dtype=dtype) + 0.5)
    return module


# ----------------------------------------------------------------------------- import, errors

def test_import_gpulayers_does_not_import_torch():
    code = "import sys, gpulayers; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bfloat16_and_integer_inputs_are_refused():
    pool = glt.MaxPooling2D(2)
    with pytest.raises(NotImplementedError, match=r"MaxPooling2D: bfloat16 is not supported.*torch.bfloat16"):
        pool(torch.ones(1, 4, 4, 2, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match=r"MaxPooling2D: `inputs` must have dtype float16, float32 or float64. "
                                        r"Received: inputs.dtype=torch.int64"):
        pool(torch.ones(1, 4, 4, 2, dtype=torch.int64))


def test_constructor_and_input_errors_name_layer_and_value():
    with pytest.raises(ValueError, match=r"MaxPooling2D: `pool_size` must be .*Received: pool_size=\(2, 0\)"):
        glt.MaxPooling2D(pool_size=(2, 0))
    with pytest.raises(ValueError, match=r"AveragePooling2D: the output would be empty"):
        glt.AveragePooling2D(5)(torch.ones(1, 3, 3, 1))
    with pytest.raises(ValueError, match=r"LSTM: `inputs` must be 3-D"):
        glt.LSTM(2)(torch.ones(2, 3))
    bn = _built(lambda m: m.BatchNormalization(), (2, 3))
    before = bn.get_weights()
    with pytest.raises(ValueError, match=r"BatchNormalization: weight `gamma` must have shape \(3,\). "
                                         r"Received: shape \(4,\)"):
        bn.set_weights([np.ones(3), np.ones(3), np.ones(3), np.ones(3)][:0] + [np.ones(4)] + [np.ones(3)] * 3)
    with pytest.raises(ValueError, match=r"BatchNormalization: `inputs` must have sizes \(3,\)"):
        bn(torch.ones(2, 4))
    for a, b in zip(bn.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"get_weights\(\) needs the module built"):
        glt.LSTM(2).get_weights()
    with pytest.raises(ValueError, match=r"set_weights\(\) needs the module built"):
        glt.GRU(2).set_weights([np.ones((3, 6)), np.ones((2, 6)), np.ones((2, 6))])


# ----------------------------------------------------------------------------- ops

def _op_samples():
    rng = np.random.default_rng(11)
    r = lambda *s: torch.from_numpy(rng.standard_normal(s))  # noqa: E731
    g = lambda t: t.clone().requires_grad_(True)  # noqa: E731
    x4 = r(2, 5, 6, 3)
    y_max, argmax = torch.ops.gpulayers.pool_forward(x4, "max", [2, 2], [2, 2], "same", "channels_last")
    bn_x = r(4, 3)
    bn_out = torch.ops.gpulayers.batch_norm_forward(bn_x, r(3), r(3), r(3), r(3).abs(), [1], 1e-3, True, -1)
    seq = r(2, 4, 3)
    kern, rec, bias = r(3, 12), r(3, 12), r(12)
    cfg = ["lstm", 3, "tanh", "sigmoid", False, False]
    rnn_out = torch.ops.gpulayers.rnn_forward(seq, kern, rec, bias, r(2, 3), r(2, 3), None, *cfg)
    return [
        (torch.ops.gpulayers.pool_forward.default, (g(x4), "max", [2, 2], [2, 2], "same", "channels_last")),
        (torch.ops.gpulayers.pool_forward.default, (g(r(2, 3, 5)), "avg", [2], [1], "valid", "channels_first")),
        (torch.ops.gpulayers.pool_backward.default,
         (x4, argmax, r(*y_max.shape), "max", [2, 2], [2, 2], "same", "channels_last")),
        (torch.ops.gpulayers.global_pool_forward.default, (g(r(2, 3, 4)), "max", "channels_first", True)),
        (torch.ops.gpulayers.global_pool_backward.default, (r(2, 3, 4), r(2, 3), "avg", "channels_first")),
        (torch.ops.gpulayers.upsample_forward.default, (g(r(2, 3, 4, 2)), [2, 2], "channels_last", "bilinear")),
        (torch.ops.gpulayers.upsample_backward.default, (r(2, 6, 3), [2, 3, 3], [2], "channels_last", "nearest")),
        (torch.ops.gpulayers.batch_norm_forward.default,
         (g(r(4, 3, 2)), g(r(3)), g(r(3)), r(3), r(3).abs(), [1], 1e-3, True, -1)),
        (torch.ops.gpulayers.batch_norm_forward.default, (g(r(4, 3)), None, None, r(3), r(3).abs(), [1], 1e-3,
                                                          False, -1)),
        (torch.ops.gpulayers.batch_norm_backward.default,
         (bn_x, r(4, 3), r(3), bn_out[1], bn_out[3], bn_out[4], [1], True, -1)),
        (torch.ops.gpulayers.rnn_forward.default,
         (g(seq), g(kern), g(rec), g(bias), g(r(2, 3)), g(r(2, 3)), torch.ones(2, 4, dtype=torch.bool), *cfg)),
        (torch.ops.gpulayers.rnn_forward.default,
         (g(seq), g(r(3, 9)), g(r(3, 9)), None, None, None, None, "gru_reset_before", 3, "tanh", "sigmoid",
          True, False)),
        (torch.ops.gpulayers.rnn_backward.default,
         (r(4, 2, 3), r(2, 3), r(2, 3), seq, kern, rec, bias, None, *rnn_out[3:], *cfg)),
    ]


def test_opcheck_every_op():
    samples = _op_samples()
    names = {op.name() for op, _ in samples}
    assert names == {f"gpulayers::{n}" for n in ("pool_forward", "pool_backward", "global_pool_forward",
                                                  "global_pool_backward", "upsample_forward", "upsample_backward",
                                                  "batch_norm_forward", "batch_norm_backward", "rnn_forward",
                                                  "rnn_backward")}
    for op, args in samples:
        torch.library.opcheck(op, args)


def test_opcheck_on_the_simulator():
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((2, 5, 4, 3)).astype(np.float32))
    with gl.simulate():
        torch.library.opcheck(torch.ops.gpulayers.pool_forward.default,
                              (x.requires_grad_(True), "max", [2, 2], [1, 2], "same", "channels_last"))


# ----------------------------------------------------------------------------- modules

def _run_torch(module, x, dys, training):
    module.train(training)
    xt = torch.from_numpy(x).requires_grad_(True)
    ys = _listify(module(xt))
    torch.autograd.backward(ys, [torch.from_numpy(d) for d in dys])
    return [y.detach().numpy() for y in ys], xt.grad.numpy()


@pytest.mark.parametrize("case", CASES + NEW_CASES, ids=IDS + NEW_IDS)
def test_module_matches_gpulayers_layer(case):
    """Outputs, input gradient, parameter gradients and moving statistics equal the gpulayers layer's."""
    _, factory, shape, training = case
    rng = np.random.default_rng(abs(hash(case[0])) % 2**32)
    x = rng.standard_normal(shape).astype(np.float32)
    module = _built(factory, shape)
    layer = factory(gl)
    layer(np.full(shape, 0.5, np.float32), training=False)  # build
    layer.set_weights(module.get_weights())
    expected = _listify(layer(x, training=training))
    dys = [rng.standard_normal(y.shape).astype(np.float32) for y in expected]
    dx_expected = layer.backward(dys if len(dys) > 1 else dys[0])
    ys, dx = _run_torch(module, x, dys, training)
    assert len(ys) == len(expected)
    for k, (a, e) in enumerate(zip(ys, expected)):
        _assert_close(a, e, np.float32, f"output {k}")
    _assert_close(dx, dx_expected, np.float32, "input gradient", normwise=True)
    named = dict(module._named_weights())
    trainable = {n for n, t in named.items() if isinstance(t, torch.nn.Parameter)}
    assert set(layer.grads) == trainable
    for name, g in layer.grads.items():
        _assert_close(named[name].grad.numpy(), g, np.float32, f"gradient of {name}")
    for a, e, name in zip(module.get_weights(), layer.get_weights(), layer.weight_names):
        _assert_close(a, e, np.float32, f"weight {name} after the call")


@pytest.mark.parametrize("case", CASES + NEW_CASES, ids=IDS + NEW_IDS)
def test_gradcheck_float64(case):
    _, factory, shape, training = case
    rng = np.random.default_rng(7)
    module = _built(factory, shape, torch.float64)
    module.train(training)
    params = dict(module.named_parameters())
    x = torch.from_numpy(rng.standard_normal(shape)).requires_grad_(True)

    def f(x, *values):
        out = torch.func.functional_call(module, dict(zip(params, values)), (x,))
        return tuple(_listify(out))

    assert torch.autograd.gradcheck(f, (x, *[p.detach().clone().requires_grad_(True) for p in params.values()]),
                                    eps=1e-6, atol=1e-5, rtol=1e-4)


def test_initial_state_and_mask_match_gpulayers_and_gradcheck():
    rng = np.random.default_rng(19)
    x = rng.standard_normal((3, 5, 2))
    h0, c0 = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    mask = rng.uniform(size=(3, 5)) > 0.3
    mask[:, 0] = False  # a hole at the start, where the initial state carries through
    module = glt.LSTM(4, return_sequences=True, return_state=True, seed=6)
    module(torch.zeros(1, 1, 2, dtype=torch.float64))
    layer = gl.LSTM(4, return_sequences=True, return_state=True, seed=6)
    layer(np.zeros((1, 1, 2)))
    layer.set_weights(module.get_weights())
    expected = layer(x, initial_state=[h0, c0], mask=mask)
    dys = [rng.standard_normal(e.shape) for e in expected]
    d_expected = layer.backward(dys)
    inputs = [torch.from_numpy(a).requires_grad_(True) for a in (x, h0, c0)]
    outs = module(inputs[0], initial_state=inputs[1:], mask=torch.from_numpy(mask))
    torch.autograd.backward(outs, [torch.from_numpy(d) for d in dys])
    for a, e in zip(outs, expected):
        _assert_close(a.detach().numpy(), e, np.float64, "output")
    for t, e in zip(inputs, d_expected):  # dx, d h0, d c0
        _assert_close(t.grad.numpy(), e, np.float64, "gradient")
    for name, g in layer.grads.items():
        _assert_close(getattr(module, name).grad.numpy(), g, np.float64, f"gradient of {name}")

    def f(x, h, c):
        return tuple(module(x, initial_state=[h, c], mask=torch.from_numpy(mask)))

    assert torch.autograd.gradcheck(f, [t.detach().requires_grad_(True) for t in inputs], eps=1e-6, atol=1e-5)


def test_float64_inputs_into_float32_weights():
    bn = _built(lambda m: m.BatchNormalization(axis=1, scale=False), (4, 3))
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    bn.train()
    y = bn(x)
    y.pow(2).sum().backward()
    assert y.dtype == torch.float64 and x.grad.dtype == torch.float64 and bn.beta.grad.dtype == torch.float32


def test_float16_matches_gpulayers_layer():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 6, 5, 4)).astype(np.float16)
    for factory, training in ((lambda m: m.MaxPooling2D(2, padding="same"), False),
                              (lambda m: m.BatchNormalization(), True),
                              (lambda m: m.UpSampling2D(2, interpolation="bilinear"), False)):
        module = _built(factory, x.shape, torch.float16)
        layer = factory(gl)
        layer(np.full(x.shape, 0.5, np.float16))
        layer.set_weights(module.get_weights())
        y = layer(x, training=training)
        dy = rng.standard_normal(y.shape).astype(np.float16)
        dx = layer.backward(dy)
        (yt,), dxt = _run_torch(module, x, [dy], training)
        assert yt.dtype == np.float16 and dxt.dtype == np.float16
        _assert_close(yt, y, np.float16, type(module).__name__)
        _assert_close(dxt, dx, np.float16, type(module).__name__ + " dx", normwise=True)


def test_channels_last_memory_format_and_non_contiguous_inputs():
    rng = np.random.default_rng(9)
    x = torch.from_numpy(rng.standard_normal((2, 3, 6, 5)))
    for module in (glt.MaxPooling2D(2, data_format="channels_first"),
                   glt.UpSampling2D(2, data_format="channels_first"),
                   glt.GlobalAveragePooling2D(data_format="channels_first", keepdims=True),
                   glt.BatchNormalization(axis=1)):
        module.train()
        expected = module(x)
        xcl = x.to(memory_format=torch.channels_last).requires_grad_(True)
        y = module(xcl)
        torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
        if y.dim() == 4 and y.shape[2] > 1:
            assert y.is_contiguous(memory_format=torch.channels_last), type(module).__name__
        y.sum().backward()
        xr = x.clone().requires_grad_(True)
        module(xr).sum().backward()
        torch.testing.assert_close(xcl.grad, xr.grad, rtol=1e-10, atol=1e-10)
    wide = torch.from_numpy(rng.standard_normal((2, 8, 12, 3)))
    view = wide[:, ::2, 1::2]  # a strided view
    assert not view.is_contiguous()
    pool = glt.AveragePooling2D(2)
    torch.testing.assert_close(pool(view), pool(view.contiguous()), rtol=0, atol=0)
    gru = glt.GRU(2, seed=0)
    seq = torch.from_numpy(rng.standard_normal((5, 4, 3))).transpose(0, 1)  # (4, 5, 3), not contiguous
    torch.testing.assert_close(gru(seq), gru(seq.contiguous()), rtol=0, atol=0)


def test_empty_batch_in_training_moves_nothing_as_the_layer():
    bn = _built(lambda m: m.BatchNormalization(axis=1), (2, 3, 4))
    layer = gl.BatchNormalization(axis=1)
    layer(np.zeros((2, 3, 4), np.float32))
    layer.set_weights(bn.get_weights())
    before = bn.get_weights()
    bn.train()
    x = torch.zeros(0, 3, 4, requires_grad=True)
    y = bn(x)
    y.sum().backward()
    assert y.shape == (0, 3, 4) and x.grad.shape == (0, 3, 4)
    layer(np.zeros((0, 3, 4), np.float32), training=True)
    for a, b, e in zip(bn.get_weights(), before, layer.get_weights()):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, e)


def test_inputs_without_requires_grad_give_parameter_gradients_only():
    x = torch.randn(4, 3, 2)
    bn = glt.BatchNormalization(axis=1)
    bn.train()
    bn(x).pow(2).sum().backward()
    assert x.grad is None and bn.gamma.grad is not None and bn.beta.grad is not None
    pool = glt.MaxPooling1D(2)
    y = pool(x)
    assert not y.requires_grad


def test_double_backward_is_a_clear_error():
    x = torch.randn(2, 4, 4, 3, dtype=torch.float64, requires_grad=True)
    y = glt.MaxPooling2D(2)(x)
    (g,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match=r"gradient of gpulayers::pool_backward \(double backward"):
        g.sum().backward()


def test_simulator_runs_the_kernels_on_cpu_tensors():
    rng = np.random.default_rng(13)
    x = torch.from_numpy(rng.standard_normal((3, 7, 5, 4)).astype(np.float32))
    for factory in (lambda m: m.MaxPooling2D(3, strides=2, padding="same"), lambda m: m.BatchNormalization()):
        module = _built(factory, x.shape)
        module.train()
        reference = module(x.clone().requires_grad_(True))
        with gl.simulate():
            xs = x.clone().requires_grad_(True)
            simulated = module(xs)
            simulated.sum().backward()
        xr = x.clone().requires_grad_(True)
        module(xr).sum().backward()
        torch.testing.assert_close(simulated, reference, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-5, atol=1e-5)


def test_torch_rnn_state_dicts_match_pytorch_modules():
    """An nn.LSTM / nn.GRU state dict loads into the module and gives PyTorch's outputs (and back)."""
    torch.manual_seed(0)
    x = torch.randn(3, 6, 4)
    for ours, theirs in ((glt.LSTM(5, return_sequences=True), torch.nn.LSTM(4, 5, batch_first=True)),
                         (glt.GRU(5, return_sequences=True), torch.nn.GRU(4, 5, batch_first=True))):
        ours(x)  # build
        ours.load_torch_state_dict(theirs.state_dict())
        torch.testing.assert_close(ours(x), theirs(x)[0], rtol=1e-5, atol=1e-5)
        back = ours.torch_state_dict()
        fresh = type(theirs)(4, 5, batch_first=True)
        fresh.load_state_dict(back)
        torch.testing.assert_close(fresh(x)[0], theirs(x)[0], rtol=1e-5, atol=1e-5)


def _small_cnn():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), glt.BatchNormalization(axis=1), torch.nn.ReLU(),
        glt.MaxPooling2D(2, data_format="channels_first"), glt.UpSampling2D(2, data_format="channels_first"),
        glt.GlobalAveragePooling2D(data_format="channels_first"), torch.nn.Linear(6, 2))


def test_state_dict_round_trip():
    torch.manual_seed(1)
    model = _small_cnn()
    x = torch.randn(4, 3, 6, 6)
    model.train()
    model(x)  # builds and moves the statistics
    model.eval()
    state = model.state_dict()
    assert {"1.gamma", "1.beta", "1.moving_mean", "1.moving_variance"} <= set(state)
    other = _small_cnn()  # unbuilt: loading the state dict creates the weights
    other.load_state_dict(state)
    other.eval()
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)


def test_adam_trains_a_small_model():
    torch.manual_seed(2)
    x = torch.randn(16, 3, 8, 8)
    target = (x.mean(dim=(1, 2, 3)) > 0).long()
    model = _small_cnn()
    model(x)  # build before giving the parameters to the optimizer
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_torch_compile_fullgraph_matches_eager():
    """One small model under torch.compile(fullgraph=True) with the default backend (inductor:
    a C++ compile, about 15 s on two cores); the gpulayers ops stay opaque custom-op calls."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), glt.BatchNormalization(axis=1),
                                glt.MaxPooling2D(2, data_format="channels_first"),
                                glt.GlobalMaxPooling2D(data_format="channels_first"))
    x = torch.randn(3, 2, 7, 7)
    model.train()
    model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    xe = x.clone().requires_grad_(True)
    eager = model(xe)
    eager.pow(2).sum().backward()
    eager_stats = model[1].moving_mean.clone()
    model.load_state_dict(state)
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)
    xc = x.clone().requires_grad_(True)
    out = compiled(xc)
    out.pow(2).sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model[1].moving_mean, eager_stats, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- GPU

gpu = pytest.mark.skipif(not (torch.cuda.is_available() and kernels.gpu_available()),
                         reason="no CUDA GPU available to torch and CuPy")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("case", CASES + NEW_CASES, ids=IDS + NEW_IDS)
def test_cuda_tensors_match_cpu(case):
    _, factory, shape, training = case
    rng = np.random.default_rng(21)
    x = rng.standard_normal(shape).astype(np.float32)
    cpu = _built(factory, shape)
    cuda = _built(factory, shape).cuda()
    cuda.load_state_dict(cpu.state_dict())
    ys = _listify(cpu.train(training)(torch.from_numpy(x)))
    dys = [rng.standard_normal(y.shape).astype(np.float32) for y in ys]
    ys_cpu, dx_cpu = _run_torch(cpu, x, dys, training)
    cuda.train(training)
    xt = torch.from_numpy(x).cuda().requires_grad_(True)
    out = _listify(cuda(xt))
    torch.autograd.backward(out, [torch.from_numpy(d).cuda() for d in dys])
    for a, e in zip(out, ys_cpu):
        assert a.device.type == "cuda"
        _assert_close(a.detach().cpu().numpy(), e, np.float32, "output")
    _assert_close(xt.grad.cpu().numpy(), dx_cpu, np.float32, "input gradient", normwise=True)
    for (name, p), (_, q) in zip(cuda.named_parameters(), cpu.named_parameters()):
        _assert_close(p.grad.cpu().numpy(), q.grad.numpy(), np.float32, f"gradient of {name}", normwise=True)


@pytest.mark.gpu
@gpu
def test_opcheck_every_op_on_cuda():
    def cuda(a):
        if isinstance(a, torch.Tensor):
            return a.detach().cuda().requires_grad_(a.requires_grad)
        return a

    for op, args in _op_samples():
        if op.name() in ("gpulayers::pool_backward",):  # its argmax comes from a CPU forward: make a CUDA one
            x, dy = cuda(args[0]), cuda(args[2])
            _, argmax = torch.ops.gpulayers.pool_forward(x, *args[3:])
            args = (x, argmax, dy, *args[3:])
        torch.library.opcheck(op, tuple(cuda(a) for a in args))
    for op, args in _new_op_samples():  # dropout's seed stays a CPU tensor
        torch.library.opcheck(op, tuple(a if isinstance(a, torch.Tensor) and a.dtype == torch.int64 else cuda(a)
                                        for a in args))


@pytest.mark.gpu
@gpu
def test_cuda_stream_and_no_host_sync():
    """Ops launch on PyTorch's current stream (a side stream here: the result read right after
    on that stream is complete and right) and never wait for the GPU: behind a long GPU sleep
    on the stream, forward and backward return while the stream is still busy."""
    model = torch.nn.Sequential(glt.BatchNormalization(axis=1), glt.MaxPooling2D(2, data_format="channels_first"),
                                glt.UpSampling2D(2, data_format="channels_first"),
                                glt.GlobalAveragePooling2D(data_format="channels_first")).cuda()
    x = torch.randn(64, 32, 64, 64, device="cuda")
    model.train()
    model(x).sum().backward()  # build, compile kernels
    reference = model(x).cpu()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda.set_sync_debug_mode("error")
        try:
            torch.cuda._sleep(2_000_000_000)  # about a second of GPU time
            xs = x.clone().requires_grad_(True)
            y = model(xs)
            y.sum().backward()
            still_busy = not side.query()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        result = y.to("cpu")
    assert still_busy, "forward/backward waited for the GPU (a host synchronisation)"
    torch.testing.assert_close(result, reference, rtol=1e-4, atol=1e-5)
    assert xs.grad is not None and torch.isfinite(xs.grad).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_second_cuda_device_is_honoured():
    pool = glt.MaxPooling2D(2)
    x = torch.randn(2, 8, 8, 3)
    y = pool(x.to("cuda:1"))
    assert y.device == torch.device("cuda:1")
    torch.testing.assert_close(y.cpu(), pool(x))


def test_from_layer_carries_configuration_and_weights():
    rng = np.random.default_rng(17)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    for layer in (gl.GRU(4, return_sequences=True, reset_after=False, use_bias=False, seed=3),
                  gl.Bidirectional(gl.LSTM(2, seed=4), merge_mode="mul"),
                  gl.BatchNormalization(axis=1, momentum=0.5), gl.MaxPooling1D(2, padding="same")):
        expected = layer(x, training=False)
        module = glt.from_layer(layer).eval()
        torch.testing.assert_close(module(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-6, atol=1e-6)
        for a, e in zip(module.get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(a, e)
    with pytest.raises(TypeError, match=r"from_layer: `layer` must be a gpulayers layer. Received: layer of type int"):
        glt.from_layer(3)
    class Custom(gl.Layer):
        pass

    with pytest.raises(TypeError, match=r"from_layer: gpulayers.torch has no module for Custom .*Received: layer of "
                                        r"type Custom"):
        glt.from_layer(Custom())


def test_bench_times_the_module_path_against_the_layer():
    import bench.run

    layer = gl.MaxPooling2D(2)
    xs = [np.random.default_rng(k).standard_normal((2, 6, 6, 3)).astype(np.float32) for k in range(2)]
    for x in xs:
        layer(x)
    row = bench.run.module_case(torch, layer, xs, np.ones((2, 3, 3, 3), np.float32), {}, bench.run.cpu_timer, 2)
    assert row["module_forward_ms"] > 0 and row["module_backward_ms"] > 0


def test_readme_pytorch_example_runs():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## PyTorch: modules"):]
    code = section[section.index("```python") + len("```python"):]
    code = code[:code.index("```")]
    namespace = {}
    exec(compile(code, "README.md (PyTorch example)", "exec"), namespace)
    assert namespace["model"](torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert namespace["gru"](torch.randn(4, 10, 8)).shape == (4, 10, 32)


def test_every_module_is_covered_by_the_cases():
    covered = {type(c[1](glt)).__name__ for c in CASES + NEW_CASES}
    assert covered == set(glt.__all__) - {"from_layer"}


@settings(max_examples=25, deadline=None, derandomize=True)
@given(data=st.data())
def test_pooling_modules_match_the_layers_on_random_geometry(data):
    """Random pool sizes, strides, paddings, layouts and sizes (1-3 spatial axes)."""
    rank = data.draw(st.integers(1, 3))
    op = data.draw(st.sampled_from(["MaxPooling", "AveragePooling"]))
    pool = tuple(data.draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank)))
    strides = tuple(data.draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank)))
    padding = data.draw(st.sampled_from(["valid", "same"]))
    data_format = data.draw(st.sampled_from(["channels_last", "channels_first"]))
    spatial = tuple(data.draw(st.integers(p, p + 4)) for p in pool)
    c = data.draw(st.integers(1, 3))
    shape = (2, *spatial, c) if data_format == "channels_last" else (2, c, *spatial)
    kwargs = dict(pool_size=pool, strides=strides, padding=padding, data_format=data_format)
    name = f"{op}{rank}D"
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = rng.standard_normal(shape)
    layer = getattr(gl, name)(**kwargs)
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = getattr(glt, name)(**kwargs)(xt)
    yt.backward(torch.from_numpy(dy))
    _assert_close(yt.detach().numpy(), y, np.float64, f"{name} {kwargs} output")
    _assert_close(xt.grad.numpy(), dx, np.float64, f"{name} {kwargs} input gradient")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_zero_size_batch_as_the_layer(case):
    """A batch of 0: empty outputs and input gradient, zero parameter gradients, as the layer."""
    _, factory, shape, training = case
    empty = (0,) + shape[1:]
    module = _built(factory, shape)
    layer = factory(gl)
    layer(np.full(shape, 0.5, np.float32), training=False)
    layer.set_weights(module.get_weights())
    expected = _listify(layer(np.zeros(empty, np.float32), training=training))
    module.train(training)
    x = torch.zeros(empty, requires_grad=True)
    ys = _listify(module(x))
    assert [tuple(y.shape) for y in ys] == [e.shape for e in expected]
    torch.autograd.backward(ys, [torch.zeros_like(y) for y in ys])
    assert x.grad.shape == empty
    for name, p in module.named_parameters():
        assert p.grad is not None and not p.grad.any(), name
    for a, e in zip(module.get_weights(), layer.get_weights()):
        np.testing.assert_array_equal(a, e)


# ----------------------------------------------------------------------------- Dense, Conv2D, Dropout, ...

def _new_op_samples():
    rng = np.random.default_rng(23)
    r = lambda *s: torch.from_numpy(rng.standard_normal(s))  # noqa: E731
    g = lambda t: t.clone().requires_grad_(True)  # noqa: E731
    x, kern, bias = r(2, 3, 4), r(4, 5), r(5)
    _, z = torch.ops.gpulayers.dense_forward(x, kern, bias, "tanh")
    img, ck, tk = r(2, 6, 5, 3), r(3, 2, 3, 4), r(2, 3, 4, 3)
    conv = [False, [2, 1], "same", [1, 1], [-1, -1], "channels_last"]
    convt = [True, [2, 2], "valid", [1, 1], [1, 0], "channels_last"]
    yc, zc = torch.ops.gpulayers.conv2d_forward(img, ck, None, *conv, "gelu")
    yt, _ = torch.ops.gpulayers.conv2d_forward(img, tk, r(4), *convt, "linear")
    _, keep = torch.ops.gpulayers.dropout_forward(x, 0.3, torch.tensor([7]))
    return [
        (torch.ops.gpulayers.dense_forward.default, (g(x), g(kern), g(bias), "tanh")),
        (torch.ops.gpulayers.dense_forward.default, (g(r(5, 4)), g(kern), None, "linear")),
        (torch.ops.gpulayers.dense_backward.default, (r(2, 3, 5), x, kern, z, True, "tanh")),
        (torch.ops.gpulayers.conv2d_forward.default, (g(img), g(ck), g(r(4)), *conv, "relu")),
        (torch.ops.gpulayers.conv2d_forward.default, (g(r(2, 3, 6, 5)), g(tk), None, True, [1, 2], "same", [1, 1],
                                                      [-1, -1], "channels_first", "linear")),
        (torch.ops.gpulayers.conv2d_forward.default, (g(img), g(tk), g(r(4)), *convt, "sigmoid")),
        (torch.ops.gpulayers.conv2d_backward.default, (r(*yc.shape), img, ck, zc, False, *conv, "gelu")),
        (torch.ops.gpulayers.conv2d_backward.default, (r(*yt.shape), img, tk, _empty64(), True, *convt, "linear")),
        (torch.ops.gpulayers.activation_forward.default, (g(x), "softmax")),
        (torch.ops.gpulayers.activation_backward.default, (r(2, 3, 4), x, "silu")),
        (torch.ops.gpulayers.dropout_forward.default, (g(x), 0.3, torch.tensor([7]))),
        (torch.ops.gpulayers.dropout_backward.default, (r(2, 3, 4), keep, 0.3)),
    ]


def _empty64():
    return torch.empty((0,), dtype=torch.float64)


def test_opcheck_new_ops():
    samples = _new_op_samples()
    assert {op.name() for op, _ in samples} == {f"gpulayers::{n}_{d}" for n in ("dense", "conv2d", "activation",
                                                                             "dropout")
                                                for d in ("forward", "backward")}
    for op, args in samples:
        torch.library.opcheck(op, args)


def test_opcheck_convolutions_on_the_simulator():
    rng = np.random.default_rng(29)
    x = torch.from_numpy(rng.standard_normal((2, 5, 4, 3)).astype(np.float32))
    with gl.simulate():
        for transpose, kernel in ((False, (2, 2, 3, 4)), (True, (3, 2, 4, 3))):
            k = torch.from_numpy(rng.standard_normal(kernel).astype(np.float32))
            torch.library.opcheck(torch.ops.gpulayers.conv2d_forward.default,
                                  (x.clone().requires_grad_(True), k.requires_grad_(True), None, transpose, [2, 1],
                                   "same", [1, 1], [-1, -1], "channels_last", "relu"))


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("name", ["Conv2D", "Conv2DTranspose"])
def test_convolutions_on_the_simulator_match_the_reference(name, data_format, monkeypatch):
    """Inside gpulayers.simulate() the im2col/col2im kernels run; outputs and all gradients equal
    the NumPy reference's (sizes across the kernels' 256-thread blocks)."""
    launched = []
    launch = kernels.launch

    def counting_launch(source, name, *args, **kwargs):
        launched.append(name.split("<")[0])
        return launch(source, name, *args, **kwargs)

    monkeypatch.setattr(kernels, "launch", counting_launch)
    rng = np.random.default_rng(31)
    shape = (2, 9, 10, 3) if data_format == "channels_last" else (2, 3, 9, 10)
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    module = getattr(glt, name)(4, 3, strides=2, padding="same", activation="tanh", data_format=data_format,
                                bias_initializer="ones", seed=8)
    module(x)
    runs = []
    for simulated in (False, True):
        module.zero_grad()
        xt = x.clone().requires_grad_(True)
        with gl.simulate() if simulated else _nothing():
            y = module(xt)
            forward_launches = set(launched)
            dy = torch.from_numpy(np.random.default_rng(2).standard_normal(tuple(y.shape)).astype(np.float32))
            y.backward(dy)
        runs.append([y.detach(), xt.grad, module.kernel.grad.clone(), module.bias.grad.clone()])
        if simulated:  # forward: im2col (Conv2D) or col2im (transpose); backward: im2col, and col2im for dx of Conv2D
            assert forward_launches == {"col2im" if name == "Conv2DTranspose" else "im2col"}, launched
            assert launched == (["col2im", "im2col"] if name == "Conv2DTranspose" else ["im2col", "im2col", "col2im"])
        else:
            assert launched == [], launched
    for what, s, r in zip(("output", "input gradient", "kernel gradient", "bias gradient"), *runs[::-1]):
        torch.testing.assert_close(s, r, rtol=1e-5, atol=1e-5, msg=f"{name} {data_format} {what}")


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def test_new_modules_state_dict_and_from_layer():
    rng = np.random.default_rng(37)
    x = rng.standard_normal((2, 6, 5, 3)).astype(np.float32)
    for layer in (gl.Conv2D(4, 3, activation="relu", seed=2, bias_initializer="ones"),
                  gl.Conv2DTranspose(2, 2, strides=2, use_bias=False, seed=3), gl.Dense(3, activation="gelu", seed=4),
                  gl.Activation("sigmoid"), gl.Flatten(data_format="channels_first"), gl.Dropout(0.5, seed=1)):
        expected = layer(x, training=False)
        module = glt.from_layer(layer).eval()
        torch.testing.assert_close(module(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-6, atol=1e-6)
        names = [n for n, _ in module.named_parameters()]
        assert names == list(layer.weight_names)
        state = module.state_dict()
        assert list(state) == names
        fresh = type(module)(_layer=layer)  # unbuilt: loading the state dict creates the weights
        fresh.load_state_dict(state)
        fresh.eval()
        torch.testing.assert_close(fresh(torch.from_numpy(x)), module(torch.from_numpy(x)), rtol=0, atol=0)


def test_new_modules_errors_name_layer_and_value():
    with pytest.raises(ValueError, match=r"Dense: `units` must be a positive int. Received: units=0"):
        glt.Dense(0)
    with pytest.raises(ValueError, match=r"Dropout: `rate` must be a number in \[0, 1\). Received: rate=1.5"):
        glt.Dropout(1.5)
    dense = glt.Dense(3)
    with pytest.raises(ValueError, match=r"Dense: `inputs` must have rank >= 2 .*Received: inputs.shape=\(4,\)"):
        dense(torch.ones(4))
    dense(torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"Dense: `inputs` must have 4 features .*Received: inputs.shape=\(2, 5\)"):
        dense(torch.ones(2, 5))
    conv = glt.Conv2D(2, 3)
    conv(torch.ones(1, 5, 5, 3))
    with pytest.raises(ValueError, match=r"Conv2D: `inputs` must have 3 channels .*Received: inputs.shape="
                                         r"\(1, 5, 5, 2\)"):
        conv(torch.ones(1, 5, 5, 2))
    with pytest.raises(ValueError, match=r"Conv2D: the output would be empty .*Received: inputs.shape=\(1, 2, 5, 3\)"):
        conv(torch.ones(1, 2, 5, 3))
    with pytest.raises(ValueError, match=r"Conv2DTranspose: `inputs` must be 4-D"):
        glt.Conv2DTranspose(2, 3)(torch.ones(2, 5, 3))
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(dense.double()(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match=r"gradient of gpulayers::dense_backward \(double backward"):
        g.sum().backward()


def test_zero_size_batch_of_new_modules_as_the_layers():
    for factory, shape in ((lambda m: m.Dense(3, activation="softmax", seed=1), (4, 5)),
                           (lambda m: m.Activation("gelu"), (4, 5)), (lambda m: m.Dropout(0.5, seed=2), (4, 5))):
        module = _built(factory, shape)
        layer = factory(gl)
        layer(np.full(shape, 0.5, np.float32))
        layer.set_weights(module.get_weights())
        for training in (False, True):
            expected = layer(np.zeros((0, 5), np.float32), training=training)
            module.train(training)
            x = torch.zeros((0, 5), requires_grad=True)
            y = module(x)
            assert tuple(y.shape) == expected.shape
            y.backward(torch.zeros_like(y))
            assert x.grad.shape == (0, 5)
            for name, p in module.named_parameters():
                assert p.grad is not None and not p.grad.any(), name
    assert glt.Flatten()(torch.zeros(0, 3, 4)).shape == (0, 12)
    for factory in (lambda m: m.Conv2D(2, 3, seed=1), lambda m: m.Conv2DTranspose(2, 3, seed=1)):
        module = _built(factory, (1, 5, 5, 3))
        layer = factory(gl)
        layer(np.zeros((1, 5, 5, 3), np.float32))
        with pytest.raises(ValueError) as from_layer_error:
            layer(np.zeros((0, 5, 5, 3), np.float32))
        with pytest.raises(ValueError) as from_module_error:
            module(torch.zeros(0, 5, 5, 3))
        assert str(from_module_error.value) == str(from_layer_error.value)


def test_dropout_train_and_eval():
    rate = 0.3
    x = torch.from_numpy(np.random.default_rng(41).standard_normal((64, 50)))  # no zeros
    module = glt.Dropout(rate, seed=5)
    module.eval()
    assert module(x) is x  # identity in eval, as nn.Dropout
    module.train()
    xt = x.clone().requires_grad_(True)
    y = module(xt)
    keep = y != 0
    assert 0.65 < keep.double().mean().item() < 0.75  # 3200 draws: 0.7 within 6 standard deviations
    torch.testing.assert_close(y[keep], x[keep] / (1 - rate), rtol=1e-15, atol=0)
    y2 = module(xt)  # a new mask on each call, before the first backward
    assert not torch.equal(y2 != 0, keep)
    dy = torch.from_numpy(np.random.default_rng(43).standard_normal(tuple(x.shape)))
    y.backward(dy)  # the first call's mask, not the second's
    torch.testing.assert_close(xt.grad, torch.where(keep, dy / (1 - rate), torch.zeros_like(dy)), rtol=1e-15, atol=0)
    # the same seed gives the same masks; rate 0 is the identity in training too
    again = glt.Dropout(rate, seed=5).train()
    torch.testing.assert_close(again(x), y.detach(), rtol=0, atol=0)
    assert glt.Dropout(0.0).train()(x) is x
    # float32 and float16 keep the dtype; the kept values scaled as gpulayers.Dropout does
    for dtype in (torch.float32, torch.float16):
        xd = x.to(dtype)
        yd = glt.Dropout(rate, seed=1).train()(xd)
        assert yd.dtype == dtype
        k = yd != 0
        np.testing.assert_array_equal(yd[k].numpy(), (xd.numpy() * np.float32(1 / (1 - rate))).astype(
            xd.numpy().dtype)[k.numpy()])


def test_dropout_op_gradcheck_with_a_fixed_seed():
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: torch.ops.gpulayers.dropout_forward(t, 0.4, torch.tensor([11]))[0], (x,))


def test_adam_trains_a_small_conv_dense_model():
    torch.manual_seed(3)
    x = torch.randn(16, 2, 8, 8)
    target = (x[:, 0, :4].mean(dim=(1, 2)) > x[:, 1, 4:].mean(dim=(1, 2))).long()
    model = torch.nn.Sequential(
        glt.Conv2D(4, 3, strides=2, padding="same", activation="relu", data_format="channels_first", seed=0),
        glt.Conv2DTranspose(3, 2, strides=2, activation="tanh", data_format="channels_first", seed=1),
        glt.Flatten(data_format="channels_first"), glt.Dropout(0.1, seed=2), glt.Dense(2, seed=3))
    model(x)  # build before giving the parameters to the optimizer
    assert len(list(model.parameters())) == 6
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_new_modules_float16_match_the_layers():
    """float16 inputs (float32 weights and compute, as the layers): outputs and input gradients."""
    rng = np.random.default_rng(47)
    x = rng.standard_normal((2, 6, 5, 4)).astype(np.float16)
    for factory in (lambda m: m.Dense(3, activation="silu", seed=1),
                    lambda m: m.Conv2D(3, 3, padding="same", activation="gelu", seed=2),
                    lambda m: m.Conv2DTranspose(2, 2, strides=2, activation="sigmoid", seed=3),
                    lambda m: m.Activation("softmax")):
        module = _built(factory, x.shape, torch.float16)
        layer = factory(gl)
        layer(np.full(x.shape, 0.5, np.float16))
        layer.set_weights(module.get_weights())
        y = layer(x)
        dy = rng.standard_normal(y.shape).astype(np.float16)
        dx = layer.backward(dy)
        (yt,), dxt = _run_torch(module, x, [dy], False)
        assert yt.dtype == np.float16 and dxt.dtype == np.float16
        assert all(p.dtype == torch.float32 for p in module.parameters())
        _assert_close(yt, y, np.float16, type(module).__name__)
        _assert_close(dxt, dx, np.float16, type(module).__name__ + " dx", normwise=True)
        for name, g in layer.grads.items():
            _assert_close(getattr(module, name).grad.numpy(), g, np.float32, f"gradient of {name}")


def test_new_modules_channels_last_memory_format_and_non_contiguous_inputs():
    rng = np.random.default_rng(53)
    x = torch.from_numpy(rng.standard_normal((2, 3, 7, 6)))
    for module in (glt.Conv2D(4, 3, strides=2, data_format="channels_first", seed=1),
                   glt.Conv2DTranspose(2, 3, padding="same", data_format="channels_first", seed=2),
                   glt.Flatten(data_format="channels_first"), glt.Activation("softmax")):
        expected = module(x)
        for variant in (x.to(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3)):
            assert not variant.is_contiguous()
            xv = variant.clone().requires_grad_(True)
            y = module(xv)
            torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
            y.pow(2).sum().backward()
            xr = x.clone().requires_grad_(True)
            module(xr).pow(2).sum().backward()
            torch.testing.assert_close(xv.grad, xr.grad, rtol=1e-10, atol=1e-10)
    dense = glt.Dense(3, seed=4)
    seq = torch.from_numpy(rng.standard_normal((5, 4, 6))).transpose(0, 1)  # (4, 5, 6), not contiguous
    torch.testing.assert_close(dense(seq), dense(seq.contiguous()), rtol=0, atol=0)


def test_torch_compile_fullgraph_of_the_new_modules_matches_eager():
    """Conv2D, Conv2DTranspose, Activation, Flatten, Dropout (unseeded: its mask seed comes from
    torch's global generator, which compiles) and Dense under torch.compile(fullgraph=True), in
    training; inductor's fallback_random draws the same numbers as eager, so the masks agree."""
    torch.manual_seed(4)
    model = torch.nn.Sequential(
        glt.Conv2D(3, 3, activation="relu", data_format="channels_first", seed=0),
        glt.Conv2DTranspose(2, 2, strides=2, data_format="channels_first", seed=1), glt.Activation("tanh"),
        glt.Flatten(data_format="channels_first"), glt.Dropout(0.3), glt.Dense(2, activation="softmax", seed=2))
    x = torch.randn(3, 2, 6, 6)
    model(x)
    model.train()
    runs = []
    with torch._inductor.config.patch(fallback_random=True):
        for fn in (model, torch.compile(model, fullgraph=True)):
            model.zero_grad()
            torch.manual_seed(9)
            xr = x.clone().requires_grad_(True)
            y = fn(xr)
            y.pow(2).sum().backward()
            runs.append([y.detach(), xr.grad] + [p.grad.clone() for p in model.parameters()])
    assert len(runs[0]) == 8  # output, input gradient, 6 parameter gradients
    for eager, compiled in zip(*runs):
        torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)


def test_unseeded_dropout_follows_torch_manual_seed():
    x = torch.randn(8, 9, dtype=torch.float64)
    module = glt.Dropout(0.5).train()
    torch.manual_seed(12)
    first = module(x)
    torch.manual_seed(12)
    torch.testing.assert_close(module(x), first, rtol=0, atol=0)
    assert not torch.equal(module(x) != 0, first != 0)  # the next call draws another mask
