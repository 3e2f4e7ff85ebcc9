"""Benchmark cases: one entry per layer configuration, with its PyTorch equivalent.

A case builds our layer, its input, and a PyTorch function computing the same thing with
Keras's semantics (TF-style asymmetric "same" padding is an explicit F.pad in PyTorch).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import gpulayers as gl


@dataclass
class Case:
    name: str  # layer and configuration, e.g. "MaxPooling2D 3x3/2 same"
    layer: str  # layer family for --filter
    make: callable  # () -> gpulayers layer
    shape: tuple  # input shape in the layer's layout
    dtype: str = "float32"
    layout: str = "channels_last"
    call: dict = field(default_factory=dict)
    torch_fn: callable = None  # (torch module, x tensor) -> y tensor, x in NCHW logical order
    recurrent: bool = False
    quick: bool = False

    def label(self):
        return f"{self.name} {self.layout.replace('channels_', '')} {self.dtype} {'x'.join(map(str, self.shape))}"


def _torch_pad_same(torch, x, pool, stride):
    """TF/Keras 'same' padding for NCHW x (asymmetric: the extra cell goes after)."""
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(pool), reversed(stride)):
        out = -(-size // s)
        total = max((out - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return torch.nn.functional.pad(x, pads, value=float("-inf")) if any(pads) else x


def image_cases(big: bool) -> list[Case]:
    shapes = [(64, 112, 112, 64), (32, 56, 56, 256)] if big else [(8, 56, 56, 32)]
    cases = []
    for (n, h, w, c), layout, dtype in [(s, lay, dt) for s in shapes for lay in ("channels_last", "channels_first")
                                        for dt in ("float32", "float16")]:
        shape = (n, h, w, c) if layout == "channels_last" else (n, c, h, w)
        quick = (n, h, w, c) == shapes[-1] and dtype == "float32"
        common = dict(shape=shape, dtype=dtype, layout=layout, quick=quick)
        cases += [
            Case("MaxPooling2D 2x2/2", "pooling", lambda lay=layout: gl.MaxPooling2D(2, data_format=lay),
                 torch_fn=lambda torch, x: torch.nn.functional.max_pool2d(x, 2, 2), **common),
            Case("MaxPooling2D 3x3/2 same", "pooling",
                 lambda lay=layout: gl.MaxPooling2D(3, 2, "same", data_format=lay),
                 torch_fn=lambda torch, x: torch.nn.functional.max_pool2d(_torch_pad_same(torch, x, (3, 3), (2, 2)), 3, 2),
                 **common),
            Case("AveragePooling2D 2x2/2", "pooling", lambda lay=layout: gl.AveragePooling2D(2, data_format=lay),
                 torch_fn=lambda torch, x: torch.nn.functional.avg_pool2d(x, 2, 2), **common),
            Case("GlobalAveragePooling2D", "pooling", lambda lay=layout: gl.GlobalAveragePooling2D(data_format=lay),
                 torch_fn=lambda torch, x: x.mean((2, 3)), **common),
            Case("UpSampling2D nearest x2", "upsampling", lambda lay=layout: gl.UpSampling2D(2, data_format=lay),
                 torch_fn=lambda torch, x: torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"), **common),
            Case("UpSampling2D bilinear x2", "upsampling",
                 lambda lay=layout: gl.UpSampling2D(2, data_format=lay, interpolation="bilinear"),
                 torch_fn=lambda torch, x: torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear",
                                                                           align_corners=False), **common),
            Case("BatchNormalization train", "batchnorm",
                 lambda lay=layout: gl.BatchNormalization(axis=-1 if lay == "channels_last" else 1),
                 call=dict(training=True), torch_fn=_torch_batchnorm, **common),
        ]
    return cases


def family_cases(big: bool) -> list[Case]:
    """The other ranks and modes, float32, both layouts: 1D and 3D pooling, global max pooling,
    3D nearest upsampling, batch norm in inference."""
    s1, s3 = ((64, 12544, 64), (16, 32, 56, 56, 32)) if big else ((8, 3136, 32), (4, 16, 28, 28, 16))
    s2 = (64, 112, 112, 64) if big else (8, 56, 56, 32)
    cases = []
    for layout in ("channels_last", "channels_first"):
        def shape(s, layout=layout):
            return s if layout == "channels_last" else (s[0], s[-1], *s[1:-1])
        cases += [
            Case("MaxPooling1D 3/2 same", "pooling", lambda lay=layout: gl.MaxPooling1D(3, 2, "same", data_format=lay),
                 shape(s1), layout=layout,
                 torch_fn=lambda torch, x: torch.nn.functional.max_pool1d(_torch_pad_same(torch, x, (3,), (2,)), 3, 2)),
            Case("AveragePooling1D 2/2", "pooling", lambda lay=layout: gl.AveragePooling1D(2, data_format=lay),
                 shape(s1), layout=layout, torch_fn=lambda torch, x: torch.nn.functional.avg_pool1d(x, 2, 2)),
            Case("MaxPooling3D 2x2x2/2", "pooling", lambda lay=layout: gl.MaxPooling3D(2, data_format=lay),
                 shape(s3), layout=layout, torch_fn=lambda torch, x: torch.nn.functional.max_pool3d(x, 2, 2)),
            Case("AveragePooling3D 2x2x2/2", "pooling", lambda lay=layout: gl.AveragePooling3D(2, data_format=lay),
                 shape(s3), layout=layout, torch_fn=lambda torch, x: torch.nn.functional.avg_pool3d(x, 2, 2)),
            Case("GlobalMaxPooling2D", "pooling", lambda lay=layout: gl.GlobalMaxPooling2D(data_format=lay),
                 shape(s2), layout=layout, torch_fn=lambda torch, x: x.amax((2, 3))),
            Case("UpSampling3D nearest x2", "upsampling", lambda lay=layout: gl.UpSampling3D(2, data_format=lay),
                 shape(s3), layout=layout,
                 torch_fn=lambda torch, x: torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")),
            Case("BatchNormalization inference", "batchnorm",
                 lambda lay=layout: gl.BatchNormalization(axis=-1 if lay == "channels_last" else 1),
                 shape(s2), layout=layout, call=dict(training=False), torch_fn=_torch_batchnorm_inference),
        ]
    return cases


def _torch_batchnorm_inference(torch, x):
    """F.batch_norm with the running statistics (inference), float32 weights."""
    c = x.shape[1]
    p = dict(device=x.device, dtype=x.dtype)
    return torch.nn.functional.batch_norm(x, torch.zeros(c, **p), torch.ones(c, **p), torch.ones(c, **p),
                                          torch.zeros(c, **p), training=False, eps=1e-3)


def _torch_batchnorm(torch, x):
    """F.batch_norm in training mode; float32 statistics and weights (half input on CUDA mixes
    them natively; PyTorch's CPU kernel wants one dtype, so there they follow x)."""
    c = x.shape[1]
    key = (c, x.device, x.dtype)
    state = _torch_batchnorm.cache.get(key)
    if state is None:
        dtype = x.dtype if x.device.type == "cpu" else torch.float32
        p = dict(device=x.device, dtype=dtype)
        state = _torch_batchnorm.cache[key] = (torch.zeros(c, **p), torch.ones(c, **p),
                                               torch.ones(c, **p, requires_grad=True),
                                               torch.zeros(c, **p, requires_grad=True))
    rm, rv, wt, b = state
    return torch.nn.functional.batch_norm(x, rm, rv, wt, b, training=True, momentum=0.01, eps=1e-3)


_torch_batchnorm.cache = {}


def recurrent_cases(big: bool) -> list[Case]:
    sizes = [(64, 100, 512, 512), (8, 200, 256, 256), (256, 50, 1024, 1024)] if big else [(8, 20, 64, 64)]
    cases = []
    for batch, steps, features, units in sizes:
        quick = (batch, steps) == (sizes[0][0], sizes[0][1])
        for name in ("GRU", "LSTM", "SimpleRNN"):
            cases.append(Case(f"{name} u{units}", "recurrent",
                              lambda name=name, units=units: getattr(gl, name)(units, return_sequences=True),
                              shape=(batch, steps, features), layout="batch_time", recurrent=True, quick=quick,
                              torch_fn=_torch_rnn(name, features, units)))
    return cases


def _torch_rnn(name, features, units):
    cache = {}

    def fn(torch, x):
        key = (x.device, x.dtype)
        if key not in cache:
            cls = {"GRU": torch.nn.GRU, "LSTM": torch.nn.LSTM, "SimpleRNN": torch.nn.RNN}[name]
            cache[key] = cls(features, units, batch_first=True).to(device=x.device, dtype=x.dtype)
        return cache[key](x)[0]

    return fn


def training_cases(big: bool) -> list[Case]:
    """Conv2D, Conv2DTranspose and Dense against F.conv2d / F.conv_transpose2d / F.linear.

    Both backward passes compute the input, weight and bias gradients (PyTorch's through
    ``torch_fn.parameters``, which the harness differentiates too)."""
    convs = [(32, 56, 56, 64, 64), (8, 28, 28, 32, 32)] if big else [(8, 28, 28, 32, 32)]
    cases = []
    for (n, h, w, c, f), layout, dtype in [(s, lay, dt) for s in convs for lay in ("channels_last", "channels_first")
                                           for dt in ("float32", "float16")]:
        shape = (n, h, w, c) if layout == "channels_last" else (n, c, h, w)
        common = dict(shape=shape, dtype=dtype, layout=layout, quick=(n, h) == convs[-1][:2] and dtype == "float32")
        cases += [
            Case(f"Conv2D 3x3 same {c}->{f}", "conv",
                 lambda lay=layout, f=f: gl.Conv2D(f, 3, padding="same", data_format=lay, seed=0),
                 torch_fn=_torch_weighted("conv2d", (f, c, 3, 3), dict(padding=1)), **common),
            Case(f"Conv2D 3x3/2 valid {c}->{f}", "conv",
                 lambda lay=layout, f=f: gl.Conv2D(f, 3, strides=2, data_format=lay, seed=0),
                 torch_fn=_torch_weighted("conv2d", (f, c, 3, 3), dict(stride=2)), **common),
            Case(f"Conv2DTranspose 4x4/2 same {c}->{f}", "conv",
                 lambda lay=layout, f=f: gl.Conv2DTranspose(f, 4, strides=2, padding="same", data_format=lay, seed=0),
                 torch_fn=_torch_weighted("conv_transpose2d", (c, f, 4, 4), dict(stride=2, padding=1)), **common),
        ]
    for batch, units in ([(1024, 1024), (64, 4096)] if big else [(256, 512)]):
        for dtype in ("float32", "float16"):
            cases.append(Case(f"Dense {units}->{units}", "dense",
                              lambda units=units: gl.Dense(units, seed=0), shape=(batch, units), dtype=dtype,
                              layout="batch_features", quick=dtype == "float32",
                              torch_fn=_torch_weighted("linear", (units, units), {})))
    return cases


def _torch_weighted(op, weight_shape, kwargs):
    """F.<op>(x, weight, bias, **kwargs) with a weight and bias cached per device and dtype;
    ``fn.parameters(torch, x)`` gives them, so that backward differentiates them as ours does."""
    cache = {}

    def parameters(torch, x):
        key = (x.device, x.dtype)
        if key not in cache:
            g = torch.Generator().manual_seed(0)
            out_channels = weight_shape[1] if op == "conv_transpose2d" else weight_shape[0]
            cache[key] = ((torch.randn(weight_shape, generator=g) * 0.05).to(device=x.device, dtype=x.dtype)
                          .requires_grad_(True),
                          torch.zeros(out_channels, device=x.device, dtype=x.dtype, requires_grad=True))
        return cache[key]

    def fn(torch, x):
        weight, bias = parameters(torch, x)
        return getattr(torch.nn.functional, op)(x, weight, bias, **kwargs)

    fn.parameters = parameters

    return fn


def all_cases(big: bool) -> list[Case]:
    return image_cases(big) + family_cases(big) + recurrent_cases(big) + training_cases(big)
