"""``python -m gpulayers selftest``: every layer through its kernels against the NumPy reference."""
from __future__ import annotations

import itertools

import numpy as np

from . import kernels, simulator, testing
from .layers import convolution, core, normalization, pooling, recurrent, upsampling

DTYPES = (np.float32, np.float64, np.float16)


def pooling_cases():
    """(layer class, constructor kwargs, input shape) over a grid of configurations."""
    windowed = [
        (pooling.MaxPooling1D, dict(pool_size=3, strides=2, padding="same"), (3, 37, 5)),
        (pooling.AveragePooling1D, dict(pool_size=4, strides=1), (3, 37, 5)),
        (pooling.MaxPooling2D, dict(pool_size=2), (2, 17, 19, 6)),
        (pooling.MaxPooling2D, dict(pool_size=3, strides=2, padding="same"), (2, 17, 19, 6)),
        (pooling.AveragePooling2D, dict(pool_size=(3, 2), strides=(2, 1), padding="same"), (2, 17, 19, 6)),
        (pooling.MaxPooling3D, dict(pool_size=(2, 3, 2), padding="same"), (2, 5, 9, 7, 3)),
        (pooling.AveragePooling3D, dict(pool_size=2, strides=(1, 2, 2)), (2, 5, 9, 7, 3)),
        (pooling.MaxPooling2D, dict(pool_size=17, strides=3, padding="same"), (1, 20, 21, 2)),
    ]
    global_ = [(cls, dict(keepdims=keep), shape) for cls, shape, keep in [
        (pooling.GlobalMaxPooling1D, (3, 300, 5), False),
        (pooling.GlobalAveragePooling1D, (3, 300, 5), True),
        (pooling.GlobalMaxPooling2D, (2, 13, 11, 7), False),
        (pooling.GlobalAveragePooling2D, (2, 13, 11, 7), False),
        (pooling.GlobalMaxPooling3D, (2, 4, 5, 6, 3), True),
        (pooling.GlobalAveragePooling3D, (2, 4, 5, 6, 3), False),
    ]]
    for (cls, kw, shape), fmt in itertools.product(windowed + global_, ("channels_last", "channels_first")):
        if fmt == "channels_first":
            shape = (shape[0], shape[-1], *shape[1:-1])
        yield cls, dict(kw, data_format=fmt), shape


def upsampling_cases():
    yield upsampling.UpSampling1D, dict(size=3), (2, 97, 8)
    for cls, kw, shape in [
        (upsampling.UpSampling2D, dict(size=(2, 3)), (2, 9, 11, 8)),
        (upsampling.UpSampling2D, dict(size=(2, 2), interpolation="bilinear"), (2, 9, 11, 6)),
        (upsampling.UpSampling2D, dict(size=(3, 2), interpolation="bilinear"), (1, 7, 13, 5)),
        (upsampling.UpSampling3D, dict(size=(2, 1, 3)), (2, 4, 5, 6, 4)),
    ]:
        for fmt in ("channels_last", "channels_first"):
            yield cls, dict(kw, data_format=fmt), shape if fmt == "channels_last" else (
                shape[0], shape[-1], *shape[1:-1])


def batchnorm_cases():
    for axis, shape in [(-1, (4, 9, 11, 37)), (1, (3, 37, 9, 11)), ([1, 3], (3, 5, 4, 6)), (0, (300, 3))]:
        for training in (True, False):
            yield normalization.BatchNormalization, dict(axis=axis), shape, dict(training=training)


def recurrent_cases():
    mask = np.ones((5, 7), bool)
    mask[0, 2:4] = False
    mask[3, :2] = False
    for cls, kw in [(recurrent.SimpleRNN, dict(units=67)), (recurrent.LSTM, dict(units=67, return_sequences=True)),
                    (recurrent.GRU, dict(units=67, go_backwards=True)),
                    (recurrent.GRU, dict(units=67, reset_after=False, return_sequences=True))]:
        yield cls, dict(kw, seed=1), (5, 7, 9), dict(mask=mask)
    yield (lambda **kw: recurrent.Bidirectional(recurrent.LSTM(**kw))), dict(units=33, return_sequences=True, seed=2), \
        (5, 7, 9), dict(mask=mask)


def training_cases():
    """Dense, Activation, Flatten, Conv2D and Conv2DTranspose (weights from a fixed seed)."""
    yield core.Dense, dict(units=67, activation="gelu", seed=1), (5, 3, 70)
    yield core.Activation, dict(activation="softmax"), (4, 5, 37)
    for kw, shape in [(dict(filters=7, kernel_size=3, padding="same", activation="relu"), (3, 17, 19, 5)),
                      (dict(filters=4, kernel_size=(3, 2), strides=2), (2, 13, 11, 6)),
                      (dict(filters=3, kernel_size=3, dilation_rate=(2, 1), padding="same"), (2, 9, 12, 4))]:
        for fmt in ("channels_last", "channels_first"):
            yield convolution.Conv2D, dict(kw, data_format=fmt, seed=2), \
                shape if fmt == "channels_last" else (shape[0], shape[-1], *shape[1:-1])
    for kw, shape in [(dict(filters=6, kernel_size=3, strides=2, padding="same"), (2, 7, 9, 5)),
                      (dict(filters=4, kernel_size=(4, 3), strides=(2, 3), output_padding=(1, 2)), (2, 5, 6, 3))]:
        for fmt in ("channels_last", "channels_first"):
            yield convolution.Conv2DTranspose, dict(kw, data_format=fmt, seed=3), \
                shape if fmt == "channels_last" else (shape[0], shape[-1], *shape[1:-1])
    yield core.Flatten, dict(data_format="channels_first"), (3, 4, 5, 6)


def cases():
    """(layer class, constructor kwargs, input shape[, call kwargs])."""
    yield from pooling_cases()
    yield from upsampling_cases()
    yield from batchnorm_cases()
    yield from recurrent_cases()
    yield from training_cases()


def path_name():
    if kernels.gpu_available():
        return "gpu"
    try:
        simulator.compiler()
        return "simulator"
    except RuntimeError:
        return None


def run(out=print, seed=0) -> int:
    """Prints one row per case; returns the number of mismatches."""
    rng = np.random.default_rng(seed)
    path = path_name()
    if path == "gpu":
        cp = kernels.cupy_module()
        out(f"kernels run on the GPU: {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}")
    elif path == "simulator":
        out("no GPU: kernels run on the CPU kernel simulator (the same cuda/ sources, host-compiled)")
    else:
        out("no GPU and no C++ compiler: kernels were NOT executed; checking the NumPy path and "
            "NVRTC compilation only")
    header = f"{'layer':24} {'config':58} {'dtype':8} {'path':10} {'pass':27} {'max abs':>10} {'max rel':>10}  ok"
    out(header)
    out("-" * len(header))
    failures = 0
    for cls, kw, shape, *call in cases():
        call_kw = call[0] if call else {}
        for dtype in DTYPES:
            x = rng.standard_normal(shape).astype(dtype)
            ref_layer = cls(**kw)
            y_ref = ref_layer(x, **call_kw)
            dy = rng.standard_normal(y_ref.shape).astype(dtype)
            dx_ref = ref_layer.backward(dy)
            shown = {**kw, **{k: ("<mask>" if isinstance(v, np.ndarray) else v) for k, v in call_kw.items()}}
            config = ", ".join(f"{k}={v}" for k, v in shown.items() if k != "seed") + f", x={shape}"
            config = config.replace("data_format=", "").replace("channels_", "")
            if path is None:
                rows = [("forward", *testing.compare(y_ref, y_ref)[:3])]
            else:
                layer = cls(**kw)
                if path == "gpu":
                    cp = kernels.cupy_module()
                    y = layer(cp.asarray(x), **{k: cp.asarray(v) if isinstance(v, np.ndarray) else v
                                                for k, v in call_kw.items()})
                    dx = layer.backward(cp.asarray(dy))
                else:
                    with kernels.simulate():
                        y = layer(x, **call_kw)
                        dx = layer.backward(dy)
                # a training batch norm's input gradient cancels nearly equal terms: compare normwise
                normwise = bool(call_kw.get("training")) and cls is normalization.BatchNormalization
                rows = [("forward", *testing.compare(y, y_ref)[:3]),
                        ("backward", *testing.compare(dx, dx_ref, normwise=normwise)[:3])]
                # weight gradients: float16 layers keep float32 weights; their tolerance is float16's
                wtol = np.float16 if np.dtype(dtype) == np.float16 else None
                # a convolution's or a dense layer's weight gradient sums batch x positions products
                # that cancel: compared normwise
                summed = cls in (convolution.Conv2D, convolution.Conv2DTranspose, core.Dense)
                rows += [(f"d {k}", *testing.compare(layer.grads[k], ref_layer.grads[k], wtol, normwise=summed)[:3])
                         for k in sorted(ref_layer.grads)]
            for name, ok, max_abs, max_rel in rows:
                failures += not ok
                out(f"{type(ref_layer).__name__:24} {config[:58]:58} {np.dtype(dtype).name:8} {path or 'numpy':10} "
                    f"{name:27} {max_abs:10.2e} {max_rel:10.2e}  {'ok' if ok else 'MISMATCH'}")
    if path is None:
        for source in kernels.declared():
            for dtype in DTYPES:
                for arch in ("sm_80", "sm_90"):
                    try:
                        kernels.nvrtc_compile(source, dtype, arch)
                        out(f"compiled cuda/{source} for {np.dtype(dtype).name} on {arch}: ok")
                    except Exception as e:  # report and count, keep going
                        failures += 1
                        out(f"compiled cuda/{source} for {np.dtype(dtype).name} on {arch}: FAILED {e}")
    out(f"{'all cases match' if not failures else f'{failures} mismatches'} ({path or 'numpy only'})")
    return failures
