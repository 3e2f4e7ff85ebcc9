"""Fast, exact float16 <-> float32 conversion for the NumPy reference.

NumPy converts float16 element by element in scalar code on many builds (about 1 ns per
value, slower than the whole layer on float32). These functions do the same conversion
with a handful of whole-array integer operations on the bit patterns and give bit-identical
results to ``a.astype(np.float32)`` / ``a.astype(np.float16)`` (round to nearest even,
overflow to inf, subnormals kept; a NaN stays a NaN).
"""
from __future__ import annotations

import numpy as np

_HALF_MAX_AS_FLOAT = np.float32(65536.0)  # float16 exponent 31 (inf/NaN) decodes to >= 2**16 below


CHUNK = 1 << 15  # values per step: the temporaries of a step stay in the CPU's cache


def to_float32(h):
    """float16 array -> float32 array (a new, C-contiguous array of h's shape)."""
    h = np.ascontiguousarray(h)
    out = np.empty(h.shape, np.float32)
    flat_in, flat_out = h.reshape(-1), out.reshape(-1)
    for start in range(0, h.size, CHUNK):
        flat_out[start:start + CHUNK] = _to_float32(flat_in[start:start + CHUNK])
    return out


def to_float16(f):
    """float32 array -> float16 array, round to nearest even (bit-identical to astype)."""
    f = np.ascontiguousarray(f, dtype=np.float32)
    out = np.empty(f.shape, np.float16)
    flat_in, flat_out = f.reshape(-1), out.reshape(-1)
    for start in range(0, f.size, CHUNK):
        flat_out[start:start + CHUNK] = _to_float16(flat_in[start:start + CHUNK])
    return out


def _to_float32(h):
    u = h.view(np.uint16).astype(np.uint32)
    bits = u & 0x7FFF
    bits <<= 13  # exponent and mantissa into float32 position, exponent still biased by 15
    f = bits.view(np.float32)
    f *= np.float32(2.0 ** 112)  # rebias 15 -> 127; exact for normal and subnormal halves
    special = f >= _HALF_MAX_AS_FLOAT  # inf or NaN: exponent all ones, mantissa kept
    if special.any():
        bits[special] = (bits[special] & 0x007FFFFF) | 0x7F800000
    u &= 0x8000
    u <<= 16
    bits |= u
    return f


def _to_float16(f):
    bits = f.view(np.uint32) & 0x7FFFFFFF  # |f|
    # normal halves: rebias the exponent and round the 13 dropped mantissa bits to nearest even
    out = bits + np.uint32((((15 - 127) << 23) + 0xFFF) & 0xFFFFFFFF)
    out += (bits >> 13) & 1
    out >>= 13
    small = bits < (113 << 23)  # |f| < 2**-14, below the smallest normal half
    if small.any():  # subnormal halves and zero: the float adder rounds (magic-number trick)
        magic = np.uint32(((127 - 15) + (23 - 10) + 1) << 23)
        sub = bits.view(np.float32) + magic.view(np.float32)
        sub = sub.view(np.uint32)
        sub -= magic
        mask = small.astype(np.uint32)
        np.negative(mask, out=mask)  # all ones where small
        sub ^= out
        sub &= mask
        out ^= sub  # out = small ? sub : out, without a slow masked copy
    big = bits >= (143 << 23)  # |f| >= 2**16 (or inf/NaN): rounding above cannot be trusted
    if big.any():
        over = bits[big]
        out[big] = np.where(over > 0x7F800000, 0x7E00 | ((over >> 13) & 0x3FF), 0x7C00)  # NaN, else inf
    sign = f.view(np.uint32) >> 16
    sign &= 0x8000
    out |= sign
    return out.astype(np.uint16).view(np.float16)


def widen(a):
    """a in the type the NumPy reference computes in: float16 -> float32, others as they are."""
    return to_float32(a) if a.dtype == np.float16 else a


def narrow(a, dtype):
    """a (computed in float32/float64) as dtype; float16 through the exact fast conversion."""
    if np.dtype(dtype) == np.float16 and a.dtype == np.float32:
        return to_float16(a)
    return a.astype(dtype, copy=False)
