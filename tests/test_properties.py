"""Property tests: random layer configurations, shapes (size-1 axes included), dtypes and
special values (NaN, +-inf). Each example runs the kernel path (inside gpulayers.simulate())
and the NumPy reference, compares them, and checks both against the documented NaN/inf rules:

- max pooling: an output is NaN exactly when its window holds a NaN among its real cells,
  else +inf when the window holds +inf; backward sends every window's gradient to one cell;
- average pooling: an output is NaN when its window holds a NaN or both infinities;
- upsampling: a non-finite input reaches exactly the outputs whose footprint holds it
  (nearest: its repeated block; bilinear: the outputs reading it with a non-zero weight);
- batch norm (training): a channel holding inf or NaN gives NaN outputs in that channel only;
- recurrent layers: a NaN at step t leaves every output before step t finite.

Pooling and upsampling draw batch 0 too (valid input: empty output and gradient).

Fixed, derandomised example budgets keep the file to a few seconds once the simulator's
kernels are compiled.
"""
import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpulayers as gl
from gpulayers import kernels
from gpulayers.layers import pooling, upsampling
from gpulayers.testing import assert_close

SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = st.sampled_from([np.float32, np.float64, np.float16])
SPECIAL = st.sampled_from([np.nan, np.inf, -np.inf])


def _kernel_path_available():
    from gpulayers import simulator

    try:
        simulator.compiler()
        return True
    except RuntimeError:
        return False


pytestmark = pytest.mark.skipif(not _kernel_path_available(), reason="no C++ compiler for the kernel simulator")


def _both_paths(make, x, dy=None, **call):
    """(y, dx) from the NumPy reference and from the kernel path (simulator), each on a fresh layer."""
    out = []
    for simulate in (False, True):
        layer = make()
        with kernels.simulate() if simulate else contextlib.nullcontext(), np.errstate(all="ignore"):
            y = layer(x, **call)
            dx = layer.backward(dy) if dy is not None else None
        out.append((y, dx))
    return out


@st.composite
def inputs(draw, shape, dtype, special_rate=0.15):
    """Random normal values with a few special values; returns (x, mask of special cells)."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    special = np.zeros(shape, bool)
    if draw(st.booleans()):
        special = rng.random(shape) < special_rate
        x[special] = rng.choice([np.nan, np.inf, -np.inf], special.sum())
    return x.astype(dtype), special


def _windows(x_cl, pool, strides, padding):
    """Per output (channels_last), the real cells of its window: a list of (out index, slices)."""
    spatial = x_cl.shape[1:-1]
    out, pads = pooling.pool_geometry(spatial, pool, strides, padding)
    for o in np.ndindex(*out):
        sl = tuple(slice(max(0, oi * s - p), min(n, oi * s - p + k))
                   for oi, s, p, k, n in zip(o, strides, pads, pool, spatial))
        yield o, sl


@st.composite
def pooling_case(draw):
    rank = draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(1, 7)) for _ in range(rank))
    padding = draw(st.sampled_from(["valid", "same"]))
    pool = tuple(draw(st.integers(1, 4)) for _ in range(rank))
    if padding == "valid":
        pool = tuple(min(k, n) for k, n in zip(pool, spatial))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    data_format = draw(st.sampled_from(["channels_last", "channels_first"]))
    n, c = draw(st.integers(0, 2)), draw(st.integers(1, 3))  # batch 0 is valid input
    return rank, spatial, pool, strides, padding, data_format, n, c


@settings(max_examples=60, **SETTINGS)
@given(case=pooling_case(), op=st.sampled_from(["max", "avg"]), dtype=DTYPES, data=st.data())
def test_pooling(case, op, dtype, data):
    rank, spatial, pool, strides, padding, data_format, n, c = case
    shape = (n, *spatial, c) if data_format == "channels_last" else (n, c, *spatial)
    x, _ = data.draw(inputs(shape, dtype))
    cls = {("max", 1): gl.MaxPooling1D, ("max", 2): gl.MaxPooling2D, ("max", 3): gl.MaxPooling3D,
           ("avg", 1): gl.AveragePooling1D, ("avg", 2): gl.AveragePooling2D, ("avg", 3): gl.AveragePooling3D}[op, rank]

    def make():
        return cls(pool_size=pool, strides=strides, padding=padding, data_format=data_format)
    y_shape = make().compute_output_shape(shape)
    dy = np.random.default_rng(1).integers(1, 4, y_shape).astype(dtype)  # exact sums in every dtype
    (y_ref, dx_ref), (y_k, dx_k) = _both_paths(make, x, dy)
    assert_close(y_k, y_ref, equal_nan=True, what="forward, kernel vs reference")
    assert_close(dx_k, dx_ref, equal_nan=True, what="backward, kernel vs reference")
    # the rules, on both paths (an empty batch has none to check)
    x_cl = np.moveaxis(x, 1, -1) if data_format == "channels_first" else x
    for y, dx in ((y_ref, dx_ref), (y_k, dx_k)) if n else ():
        y_cl = np.moveaxis(y, 1, -1) if data_format == "channels_first" else y
        for o, sl in _windows(x_cl, pool, strides, padding):
            win = x_cl[(slice(None), *sl)].reshape(n, -1, c).astype(np.float64)
            has_nan, has_pinf, has_ninf = np.isnan(win).any(1), np.isposinf(win).any(1), np.isneginf(win).any(1)
            got = y_cl[(slice(None), *o)].astype(np.float64)
            if op == "max":
                np.testing.assert_array_equal(np.isnan(got), has_nan)
                np.testing.assert_array_equal(np.isposinf(got), has_pinf & ~has_nan)
            else:
                np.testing.assert_array_equal(np.isnan(got), has_nan | (has_pinf & has_ninf))
        if op == "max":  # each window's gradient reaches exactly one cell: the totals agree
            assert np.sum(dx, dtype=np.float64) == np.sum(dy, dtype=np.float64)


@st.composite
def upsampling_case(draw):
    interpolation = draw(st.sampled_from(["nearest", "bilinear"]))
    rank = 2 if interpolation == "bilinear" else draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(1, 6)) for _ in range(rank))
    size = tuple(draw(st.integers(1, 4)) for _ in range(rank))
    data_format = "channels_last" if rank == 1 else draw(st.sampled_from(["channels_last", "channels_first"]))
    return interpolation, rank, spatial, size, data_format, draw(st.integers(0, 2)), draw(st.integers(1, 3))


def _footprint(n, s, interpolation):
    """Per output along an axis, the inputs it reads with a non-zero weight (exact arithmetic)."""
    from fractions import Fraction

    taps = []
    for o in range(n * s):
        if interpolation == "nearest":
            taps.append({o // s})
            continue
        src = Fraction(2 * o + 1, 2 * s) - Fraction(1, 2)
        fl = src.numerator // src.denominator
        read = {min(max(fl, 0), n - 1)}
        if src != fl:
            read.add(min(max(fl + 1, 0), n - 1))
        taps.append(read)
    return taps


@settings(max_examples=40, **SETTINGS)
@given(case=upsampling_case(), dtype=DTYPES, data=st.data())
def test_upsampling(case, dtype, data):
    interpolation, rank, spatial, size, data_format, n, c = case
    shape = (n, *spatial, c) if data_format == "channels_last" else (n, c, *spatial)
    x, special = data.draw(inputs(shape, dtype, special_rate=0.1))
    cls = {1: gl.UpSampling1D, 2: gl.UpSampling2D, 3: gl.UpSampling3D}[rank]

    def make():
        if rank == 1:
            return cls(size=size[0])
        kw = dict(interpolation=interpolation) if rank == 2 else {}
        return cls(size=size, data_format=data_format, **kw)
    y_shape = make().compute_output_shape(shape)
    dy = np.random.default_rng(2).standard_normal(y_shape).astype(dtype)
    (y_ref, dx_ref), (y_k, dx_k) = _both_paths(make, x, dy)
    assert_close(y_k, y_ref, equal_nan=True, what="forward, kernel vs reference")
    assert_close(dx_k, dx_ref, what="backward, kernel vs reference")
    # rule: the non-finite outputs are exactly those whose footprint holds a non-finite input
    x_cl = np.moveaxis(x, 1, -1) if data_format == "channels_first" else x
    bad_in = ~np.isfinite(x_cl.astype(np.float64))
    feet = [_footprint(k, s, interpolation) for k, s in zip(spatial, size)]
    expected = np.zeros((n, *[k * s for k, s in zip(spatial, size)], c), bool)
    for o in np.ndindex(*expected.shape[1:-1]) if n else ():
        reads = np.ix_(*[sorted(f[oi]) for f, oi in zip(feet, o)])
        expected[(slice(None), *o)] = bad_in[(slice(None), *reads)].reshape(n, -1, c).any(1)
    for y in (y_ref, y_k):
        y_cl = np.moveaxis(y, 1, -1) if data_format == "channels_first" else y
        np.testing.assert_array_equal(~np.isfinite(y_cl.astype(np.float64)), expected)


@st.composite
def batchnorm_case(draw):
    ndim = draw(st.integers(2, 4))
    shape = tuple(draw(st.integers(1, 5)) for _ in range(ndim))
    shape = (draw(st.integers(2, 6)),) + shape[1:]  # more than one value per channel
    axis = draw(st.sampled_from([-1, 1] + ([[1, ndim - 1]] if ndim > 2 else [])))
    return shape, axis, draw(st.booleans())


@settings(max_examples=40, **SETTINGS)
@given(case=batchnorm_case(), dtype=DTYPES, data=st.data())
def test_batchnorm(case, dtype, data):
    shape, axis, training = case
    x, _ = data.draw(inputs(shape, dtype, special_rate=0.05))
    dy = np.random.default_rng(3).standard_normal(shape).astype(dtype)
    (y_ref, dx_ref), (y_k, dx_k) = _both_paths(lambda: gl.BatchNormalization(axis=axis), x, dy, training=training)
    assert_close(y_k, y_ref, equal_nan=True, what="forward, kernel vs reference")
    normwise = training and not np.isnan(dx_ref).all()  # (an all-NaN gradient has no norm)
    assert_close(dx_k, dx_ref, equal_nan=True, normwise=normwise, what="backward, kernel vs reference")
    axes = [a % len(shape) for a in (axis if isinstance(axis, list) else [axis])]
    red = tuple(a for a in range(len(shape)) if a not in axes)
    bad_channel = ~np.isfinite(x.astype(np.float64)).all(axis=red, keepdims=True)
    for y in (y_ref, y_k):
        if training:  # statistics of a channel with inf/NaN are NaN: the whole channel is NaN
            np.testing.assert_array_equal(np.isnan(y), np.broadcast_to(bad_channel, shape))
        else:  # moving statistics are finite: each output is non-finite exactly where its input is
            np.testing.assert_array_equal(np.isfinite(y), np.isfinite(x))


@st.composite
def recurrent_case(draw):
    cls = draw(st.sampled_from([gl.SimpleRNN, gl.LSTM, gl.GRU]))
    kw = dict(units=draw(st.integers(1, 5)), return_sequences=True, go_backwards=draw(st.booleans()), seed=0)
    if cls is gl.GRU:
        kw["reset_after"] = draw(st.booleans())
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 4)))
    return cls, kw, shape


@settings(max_examples=25, **SETTINGS)
@given(case=recurrent_case(), dtype=DTYPES, nan_step=st.integers(0, 4), data=st.data())
def test_recurrent(case, dtype, nan_step, data):
    cls, kw, shape = case
    x, _ = data.draw(inputs(shape, dtype, special_rate=0.0))
    t = min(nan_step, shape[1] - 1)
    poisoned = data.draw(st.booleans())
    if poisoned:
        x[0, t, 0] = np.nan
    y_shape = (shape[0], shape[1], kw["units"])
    dy = np.random.default_rng(4).standard_normal(y_shape).astype(dtype)
    (y_ref, dx_ref), (y_k, dx_k) = _both_paths(lambda: cls(**kw), x, dy)
    assert_close(y_k, y_ref, equal_nan=True, what="forward, kernel vs reference")
    assert_close(dx_k, dx_ref, equal_nan=True, what="backward, kernel vs reference")
    if poisoned:  # outputs come in processing order: steps processed before the NaN's stay finite
        before = shape[1] - 1 - t if kw["go_backwards"] else t
        for y in (y_ref, y_k):
            assert np.isfinite(y[:, :before]).all()
            assert np.isnan(y[0, before:]).all()
    else:
        assert np.isfinite(y_ref).all() and np.isfinite(dx_ref).all()
