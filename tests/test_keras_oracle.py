"""Keras 3 as an optional oracle: outputs and input gradients of every pooling layer.

Runs where Keras 3 with the torch backend is installed (it is not part of the test extra:
the NumPy reference is checked against direct formulas everywhere else).
"""
import os

import numpy as np
import pytest

import gpulayers as gl
from gpulayers.testing import assert_close

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras", reason="Keras 3 (optional oracle) is not installed")
torch = pytest.importorskip("torch", reason="the torch backend of Keras is not installed")

rng = np.random.default_rng(11)
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
]


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("name,kw,shape", CASES)
def test_matches_keras(name, kw, shape, data_format):
    if data_format == "channels_first":
        shape = (shape[0], shape[-1], *shape[1:-1])
    x = rng.standard_normal(shape)
    ours = getattr(gl, name)(data_format=data_format, **kw)
    theirs = getattr(keras.layers, name)(data_format=data_format, dtype="float64", **kw)
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    dy = rng.standard_normal(tuple(yt.shape))
    (yt * torch.tensor(dy)).sum().backward()
    y = ours(x)
    assert_close(y, yt.detach().numpy(), what=f"{name} output vs Keras")
    assert_close(ours.backward(dy), xt.grad.numpy(), what=f"{name} gradient vs Keras")
    with gl.simulate():
        sim_layer = getattr(gl, name)(data_format=data_format, **kw)
        assert_close(sim_layer(x), yt.detach().numpy(), what=f"{name} kernel output vs Keras")
        assert_close(sim_layer.backward(dy), xt.grad.numpy(), what=f"{name} kernel gradient vs Keras")
