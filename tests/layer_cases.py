"""Every layer class in a small configuration, and the paths a call can take, for the
state-safety and validation tests: one test body covers each layer on each path."""
import contextlib

import numpy as np
import pytest

import gpulayers as gl
from gpulayers import kernels


class Case:
    """A layer configuration: ``make()`` builds a fresh layer (seeded, so two are identical),
    ``shape`` the input shape, ``extra(rng, batch)`` the other call arguments as NumPy arrays."""

    def __init__(self, name, make, shape, training=False, mask=False, states=0):
        self.name, self.make, self.shape, self.training = name, make, shape, training
        self.mask, self.states = mask, states

    def extra(self, rng, batch):
        kw = {}
        if self.mask:
            m = rng.random((batch, self.shape[1])) < 0.7
            m[:, 0] = True
            kw["mask"] = m
        if self.states:
            kw["initial_state"] = [rng.standard_normal((batch, 4)).astype(np.float32) for _ in range(self.states)]
        return kw

    def __repr__(self):
        return self.name


CASES = [
    Case("MaxPooling1D", lambda: gl.MaxPooling1D(3, 2, padding="same"), (2, 9, 3)),
    Case("MaxPooling2D", lambda: gl.MaxPooling2D((2, 3), padding="same", data_format="channels_first"), (2, 3, 7, 8)),
    Case("MaxPooling2D-recompute", lambda: gl.MaxPooling2D(17, strides=3, padding="same"), (1, 19, 18, 2)),
    Case("MaxPooling3D", lambda: gl.MaxPooling3D(2), (2, 4, 5, 4, 2)),
    Case("AveragePooling1D", lambda: gl.AveragePooling1D(3, 2, padding="same"), (2, 9, 3)),
    Case("AveragePooling2D", lambda: gl.AveragePooling2D(2, data_format="channels_first"), (2, 3, 6, 7)),
    Case("AveragePooling3D", lambda: gl.AveragePooling3D(2, padding="same"), (1, 3, 5, 4, 2)),
    Case("GlobalMaxPooling1D", lambda: gl.GlobalMaxPooling1D(), (2, 7, 3)),
    Case("GlobalMaxPooling2D", lambda: gl.GlobalMaxPooling2D(data_format="channels_first", keepdims=True),
         (2, 3, 5, 6)),
    Case("GlobalMaxPooling3D", lambda: gl.GlobalMaxPooling3D(), (2, 3, 2, 4, 3)),
    Case("GlobalAveragePooling1D", lambda: gl.GlobalAveragePooling1D(), (2, 7, 3)),
    Case("GlobalAveragePooling2D", lambda: gl.GlobalAveragePooling2D(), (2, 5, 6, 3)),
    Case("GlobalAveragePooling3D", lambda: gl.GlobalAveragePooling3D(data_format="channels_first"),
         (2, 3, 2, 4, 3)),
    Case("UpSampling1D", lambda: gl.UpSampling1D(3), (2, 5, 3)),
    Case("UpSampling2D", lambda: gl.UpSampling2D((2, 3), data_format="channels_first"), (2, 3, 4, 5)),
    Case("UpSampling2D-bilinear", lambda: gl.UpSampling2D((3, 2), interpolation="bilinear"), (2, 4, 5, 3)),
    Case("UpSampling3D", lambda: gl.UpSampling3D(2), (1, 2, 3, 2, 3)),
    Case("BatchNormalization-training", lambda: gl.BatchNormalization(momentum=0.8), (6, 5, 3), training=True),
    Case("BatchNormalization-inference", lambda: gl.BatchNormalization(axis=1), (4, 3, 5)),
    Case("SimpleRNN", lambda: gl.SimpleRNN(4, return_sequences=True, seed=1), (3, 5, 2), mask=True),
    Case("LSTM", lambda: gl.LSTM(4, return_state=True, seed=2), (3, 5, 2), mask=True, states=2),
    Case("GRU", lambda: gl.GRU(4, return_sequences=True, seed=3), (3, 5, 2), mask=True, states=1),
    Case("GRU-reset-before", lambda: gl.GRU(4, reset_after=False, go_backwards=True, seed=4), (1, 5, 2),
         mask=True),
    Case("LSTM-batch-1", lambda: gl.LSTM(4, return_sequences=True, seed=5), (1, 6, 3), states=2),
    Case("Bidirectional", lambda: gl.Bidirectional(gl.GRU(4, return_sequences=True, seed=6)), (3, 5, 2),
         mask=True),
]
WEIGHTED = [c for c in CASES if c.name.split("-")[0] in ("BatchNormalization", "SimpleRNN", "LSTM", "GRU",
                                                           "Bidirectional")]


class Path:
    """Where a call runs: "numpy" (the reference), "simulator" (NumPy arrays inside
    gpulayers.simulate()) or "gpu" (CuPy arrays)."""

    def __init__(self, name):
        self.name = name

    def arr(self, a):
        if isinstance(a, (list, tuple)):
            return type(a)(self.arr(v) for v in a)
        if isinstance(a, dict):
            return {k: self.arr(v) for k, v in a.items()}
        if self.name == "gpu" and isinstance(a, np.ndarray):
            return kernels.cupy_module().asarray(a)
        return a

    def ctx(self):
        return kernels.simulate() if self.name == "simulator" else contextlib.nullcontext()

    @staticmethod
    def numpy(out):
        if isinstance(out, (list, tuple)):
            return [Path.numpy(o) for o in out]
        if out is None:
            return None
        return out.get() if kernels.is_gpu_array(out) else np.array(out)

    def __repr__(self):
        return self.name


PATHS = [pytest.param(Path("numpy"), id="numpy"), pytest.param(Path("simulator"), id="simulator"),
         pytest.param(Path("gpu"), id="gpu", marks=pytest.mark.gpu)]


@pytest.fixture(params=PATHS)
def path(request):
    if request.param.name == "gpu" and not kernels.gpu_available():
        pytest.skip("no CUDA GPU available (CuPy missing or no device)")
    return request.param


def random_like(rng, out):
    """Random gradients shaped like a layer's output (a list for several outputs)."""
    if isinstance(out, (list, tuple)):
        return [random_like(rng, o) for o in out]
    return rng.standard_normal(out.shape).astype(out.dtype)


def assert_same(a, b, what="result"):
    """Bitwise equal (same path, deterministic kernels); lists and dicts item by item."""
    if isinstance(a, dict) or isinstance(b, dict):
        assert set(a) == set(b), f"{what}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{what}[{k!r}]")
        return
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        assert len(a) == len(b), f"{what}: {len(a)} items vs {len(b)}"
        for i, (u, v) in enumerate(zip(a, b)):
            assert_same(u, v, f"{what}[{i}]")
        return
    a, b = Path.numpy(a), Path.numpy(b)
    assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
    np.testing.assert_array_equal(a, b, err_msg=what)


def weights_of(layer):
    return [w.copy() for w in layer.get_weights()]
