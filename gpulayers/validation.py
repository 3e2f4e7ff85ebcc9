"""Argument and input validators: one message form for every layer.

``MaxPooling2D: `pool_size` must be a tuple of 2 positive ints. Received: pool_size=(2, 0)``
"""
from __future__ import annotations

import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _is_int(v) -> bool:
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


def int_tuple(layer: str, arg: str, value, n: int, allow_none: bool = False):
    """A positive int or a tuple/list of n positive ints -> tuple of n Python ints."""
    if value is None and allow_none:
        return None
    items = (value,) * n if _is_int(value) else value
    if (not isinstance(items, (tuple, list)) or len(items) != n
            or not all(_is_int(v) and v > 0 for v in items)):
        what = "a positive int" if n == 1 else f"a positive int or a tuple of {n} positive ints"
        raise ValueError(f"{layer}: `{arg}` must be {what}. Received: {arg}={value!r}")
    return tuple(int(v) for v in items)


def choice(layer: str, arg: str, value, options, default=None):
    """A case-insensitive string among ``options`` (None -> default)."""
    if value is None and default is not None:
        return default
    if not isinstance(value, str) or value.lower() not in options:
        raise ValueError(f"{layer}: `{arg}` must be one of {', '.join(repr(o) for o in options)}. "
                         f"Received: {arg}={value!r}")
    return value.lower()


def data_format(layer: str, value):
    return choice(layer, "data_format", value, ("channels_last", "channels_first"), "channels_last")


def boolean(layer: str, arg: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{layer}: `{arg}` must be a bool. Received: {arg}={value!r}")
    return bool(value)


def unsupported(layer: str, **kwargs) -> None:
    """NotImplementedError for Keras arguments given a value we do not support yet."""
    for arg, (value, default) in kwargs.items():
        differs = value is not None if default is None else value != default
        if differs:
            shown = f"array of shape {tuple(value.shape)}" if hasattr(value, "shape") else repr(value)
            raise NotImplementedError(f"{layer}: `{arg}={shown}` is not supported yet "
                                      f"(only {arg}={default!r}).")


def float_array(layer: str, arg: str, x, xp_types) -> None:
    """x must be an array of a supported module with a float16/32/64 dtype."""
    if not isinstance(x, xp_types):
        raise TypeError(f"{layer}: `{arg}` must be a numpy.ndarray or cupy.ndarray. "
                        f"Received: {arg} of type {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{layer}: `{arg}` must have dtype float16, float32 or float64. "
                        f"Received: {arg}.dtype={x.dtype}")


def rank(layer: str, arg: str, x, ndim: int, meaning: str) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{layer}: `{arg}` must be {ndim}-D {meaning}. "
                         f"Received: {arg}.shape={tuple(x.shape)}")


def same_shape(layer: str, arg: str, x, shape, dtype) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{layer}: `{arg}` must have shape {tuple(shape)} (the output's). "
                         f"Received: {arg}.shape={tuple(x.shape)}")
    if x.dtype != dtype:
        raise TypeError(f"{layer}: `{arg}` must have dtype {dtype} (the output's). "
                        f"Received: {arg}.dtype={x.dtype}")


def weight_array(layer: str, what: str, value, shape, dtype):
    """A weight value -> a NumPy copy of ``dtype`` and ``shape``, or a clear error.

    Accepted: arrays (or nested lists) of ``shape`` with a real floating dtype whose finite
    values stay finite in ``dtype``, or integer/bool values that ``dtype`` holds exactly.
    Refused: None, complex, object, string and other dtypes (TypeError), a wrong shape or a
    lossy cast (ValueError).
    """
    if value is None:
        raise TypeError(f"{layer}: {what} must be an array of shape {tuple(shape)}. Received: None")
    try:
        a = np.asarray(value)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise ValueError(f"{layer}: {what} must be an array of shape {tuple(shape)}. "
                         f"Received: {type(value).__name__} that is not an array ({e})") from None
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{layer}: {what} must have a real floating dtype (or integers the weight dtype "
                        f"{np.dtype(dtype)} holds exactly). Received: dtype {a.dtype}")
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{layer}: {what} must have shape {tuple(shape)}. Received: shape {tuple(a.shape)}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = a.astype(dtype)  # always a new array: never shares memory with the caller's
        if a.dtype.kind == "f":
            lossy = bool(np.any(np.isfinite(a) & ~np.isfinite(out)))
        else:
            lossy = bool(np.any(out.astype(a.dtype) != a)) or bool(np.any(~np.isfinite(out)))
    if lossy:
        raise ValueError(f"{layer}: {what} has values that dtype {np.dtype(dtype)} cannot hold "
                         f"(overflow or rounding). Received: dtype {a.dtype}")
    return out


INT32_LIMIT = 2**31  # the kernels take sizes, windows and strides as 32-bit ints


def int32_sizes(layer: str, **named) -> None:
    """Every int in each named value (an int or a tuple of ints) must be below 2**31 for the
    kernels' 32-bit geometry; ValueError naming the argument otherwise."""
    for arg, value in named.items():
        items = value if isinstance(value, (tuple, list)) else (value,)
        if any(int(v) >= INT32_LIMIT for v in items):
            raise ValueError(f"{layer}: `{arg}` must be below 2**31 on the kernel path (the kernels use "
                             f"32-bit sizes). Received: {arg}={value!r}")
