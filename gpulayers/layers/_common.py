"""Helpers every layer family shares: the accumulate dtype, channels_last layout moves, the
5-D kernel arguments, and Keras's weight initializers."""
from __future__ import annotations

import math

import numpy as np


def acc_dtype(dtype) -> np.dtype:
    """The accumulate/compute dtype of an input dtype: float64 for float64, else float32
    (float16 is stored in half and computed in float32, as the kernels do)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def to_channels_last(x, data_format):
    """A channels_first array viewed as channels_last (no copy); channels_last as it is."""
    return np.moveaxis(x, 1, -1) if data_format == "channels_first" else x


def from_channels_last(x, data_format):
    """The inverse view of :func:`to_channels_last`."""
    return np.moveaxis(x, -1, 1) if data_format == "channels_first" else x


# ----------------------------------------------------------------------------- kernel arguments
# The pooling and upsampling kernels see every input as 5-D, (N, C, D, H, W) in the array's own
# layout: a 1-D or 2-D input is one with leading spatial axes of size 1.

def split_channels(shape, data_format):
    """(N, C, spatial sizes) of an (N, C, *spatial) or (N, *spatial, C) shape."""
    if data_format == "channels_first":
        return shape[0], shape[1], tuple(shape[2:])
    return shape[0], shape[-1], tuple(shape[1:-1])


def as_3d(values, fill=1):
    """Per-spatial-axis ``values`` (1 to 3 of them) for 3 spatial axes: ``fill`` before them."""
    return (fill,) * (3 - len(values)) + tuple(values)


def int32_args(*values):
    """Kernel scalar arguments of C type int."""
    return tuple(np.int32(v) for v in values)


def geometry_5d(shape, data_format):
    """The int32 arguments (N, C, D, H, W) of a 3- to 5-D input in its own layout."""
    n, c, spatial = split_channels(shape, data_format)
    return int32_args(n, c, *as_3d(spatial))


# ----------------------------------------------------------------------------- initializers
# Keras's initializers by name, each (rng, shape, dtype) -> array (rng: a NumPy Generator).

def glorot_uniform(rng, shape, dtype, fan_in=None, fan_out=None):
    """Keras's GlorotUniform: U(-l, l), l = sqrt(6 / (fan_in + fan_out)); for a kernel of shape
    (*receptive field, in, out) fan_in = in * prod(receptive field), fan_out likewise."""
    receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
    fan_in = fan_in or shape[-2] * receptive
    fan_out = fan_out or shape[-1] * receptive
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(dtype)


def he_normal(rng, shape, dtype):
    """Keras's HeNormal: truncated normal (within 2 std) with std = sqrt(2 / fan_in)."""
    receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
    std = math.sqrt(2.0 / (shape[-2] * receptive)) / 0.87962566103423978
    v = rng.standard_normal(shape)
    bad = np.abs(v) > 2
    while bad.any():
        v[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(v) > 2
    return (v * std).astype(dtype)


def orthogonal(rng, shape, dtype):
    """Keras's Orthogonal initializer (gain 1): QR of a normal matrix, sign-corrected."""
    rows, cols = shape
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return q.reshape(shape).astype(dtype)


INITIALIZERS = {
    "glorot_uniform": glorot_uniform,
    "he_normal": he_normal,
    "orthogonal": orthogonal,
    "zeros": lambda rng, shape, dtype: np.zeros(shape, dtype),
    "ones": lambda rng, shape, dtype: np.ones(shape, dtype),
}
