"""Helpers every layer family shares: the accumulate dtype and channels_last layout moves."""
from __future__ import annotations

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
