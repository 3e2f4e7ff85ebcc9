"""One comparison helper and one tolerance table, shared by the tests and ``selftest``."""
from __future__ import annotations

import numpy as np

# (rtol, atol) per dtype: |actual - expected| <= atol + rtol * |expected|.
TOLERANCES = {
    np.dtype(np.float64): (1e-10, 1e-12),
    np.dtype(np.float32): (1e-5, 1e-6),
    np.dtype(np.float16): (1e-2, 1e-3),
}


def to_numpy(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def compare(actual, expected, dtype=None, equal_nan=False, normwise=False):
    """(ok, max abs error, max rel error, message). Shape and dtype are checked first.

    NaN never passes unless ``equal_nan`` and both sides are NaN at the same place.
    ``normwise``: the absolute tolerance grows to rtol * max|expected|, for results formed by
    subtracting nearly equal terms (a batch-norm input gradient), where elementwise relative
    error near zero says nothing about the kernel.
    """
    actual, expected = to_numpy(actual), to_numpy(expected)
    dtype = np.dtype(dtype or expected.dtype)
    if actual.shape != expected.shape:
        return False, np.inf, np.inf, f"shape {actual.shape} != expected {expected.shape}"
    if actual.dtype != expected.dtype:
        return False, np.inf, np.inf, f"dtype {actual.dtype} != expected {expected.dtype}"
    rtol, atol = TOLERANCES[dtype]
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    if normwise and e.size:
        atol = max(atol, rtol * float(np.nanmax(np.abs(e))))
    both_nan = np.isnan(a) & np.isnan(e) if equal_nan else np.zeros(a.shape, bool)
    with np.errstate(invalid="ignore"):
        diff = np.where(both_nan, 0.0, np.abs(a - e))
        diff = np.where(np.isnan(diff) & ~both_nan, np.inf, diff)
        diff = np.where((a == e) & np.isinf(a), 0.0, diff)  # equal infinities
        bad = ~(diff <= atol + rtol * np.abs(np.nan_to_num(e)))
    max_abs = float(diff.max()) if diff.size else 0.0
    rel = diff / np.maximum(np.abs(np.nan_to_num(e)), np.finfo(np.float64).tiny)
    max_rel = float(rel.max()) if rel.size else 0.0
    if not bad.any():
        return True, max_abs, max_rel, ""
    where = np.argwhere(bad)[:5]
    shown = ", ".join(f"{tuple(int(i) for i in w)}: {a[tuple(w)]!r} vs {e[tuple(w)]!r}" for w in where)
    return False, max_abs, max_rel, f"{int(bad.sum())} of {bad.size} elements differ (first: {shown})"


def assert_close(actual, expected, dtype=None, equal_nan=False, what="result", normwise=False):
    ok, max_abs, max_rel, message = compare(actual, expected, dtype, equal_nan, normwise)
    if not ok:
        raise AssertionError(f"{what}: {message}; max abs error {max_abs:.3g}, max rel error {max_rel:.3g}")


def numerical_gradient(f, x, dy=None, eps=1e-6):
    """Central differences in float64: d f(x) / dx for a scalar f, or d sum(f(x) * dy) / dx."""
    loss = (lambda v: float(f(v))) if dy is None else (lambda v: float(np.sum(f(v) * dy)))
    g = np.zeros_like(x, dtype=np.float64)
    for i in np.ndindex(*x.shape):
        plus, minus = x.copy(), x.copy()
        plus[i] += eps
        minus[i] -= eps
        g[i] = (loss(plus) - loss(minus)) / (2 * eps)
    return g
