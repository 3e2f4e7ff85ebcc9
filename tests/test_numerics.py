"""Numerics of the NumPy reference against the kernels: NaN/inf locality of bilinear upsampling,
batch-norm statistics with a large mean, and batch norm with inf or values near the float32 limit."""
import itertools

import numpy as np
import pytest

import gpulayers as gl
from gpulayers.layers import normalization as bn
from gpulayers.layers import upsampling


# ------------------------------------------------------------- NaN and inf: only the footprint

def footprint(n, s):
    """For each output along an axis, the set of inputs it reads with a non-zero weight
    (half-pixel centres, clamped taps), from the formula in exact rational arithmetic."""
    from fractions import Fraction

    taps = []
    for o in range(n * s):
        src = Fraction(2 * o + 1, 2 * s) - Fraction(1, 2)
        fl = src.numerator // src.denominator
        frac = src - fl
        read = {min(max(fl, 0), n - 1)}
        if frac:
            read.add(min(max(fl + 1, 0), n - 1))
        taps.append(read)
    return taps


def _nonfinite_cases(factors):
    for size in factors:
        for spatial in [(4, 5), (1, 5), (3, 1), (1, 1)]:
            yield size, spatial


def _check_locality(run, size, spatial, data_format, value):
    """Puts ``value`` at each input position in turn; the non-finite outputs must be exactly
    those whose footprint holds it, with the value the weights imply."""
    h, w = spatial
    fh, fw = footprint(h, size[0]), footprint(w, size[1])
    base = np.random.default_rng(2).uniform(1, 2, (1, h, w, 2)).astype(np.float32)
    for i, j in itertools.product(range(h), range(w)):
        x = base.copy()
        x[0, i, j, 1] = value
        xin = np.moveaxis(x, -1, 1).copy() if data_format == "channels_first" else x
        y = run(xin)
        y = np.moveaxis(y, 1, -1) if data_format == "channels_first" else y
        hit = np.array([[i in fh[oh] and j in fw[ow] for ow in range(w * size[1])] for oh in range(h * size[0])])
        assert np.isfinite(y[0, :, :, 0]).all()
        expected = np.where(hit, value, 1.5)  # 1.5: any finite value
        got = np.where(np.isfinite(y[0, :, :, 1]), 1.5, y[0, :, :, 1])
        np.testing.assert_array_equal(got, expected, err_msg=f"{value} at {(i, j)}")


EVEN = [(2, 2), (2, 4)]
ODD = [(3, 2), (1, 2), (2, 5)]  # an odd factor puts outputs exactly on an input: its other tap has weight 0


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("size,spatial", list(_nonfinite_cases(EVEN + ODD)))
def test_bilinear_reference_nonfinite_reaches_only_its_footprint(size, spatial, data_format, value):
    _check_locality(lambda a: upsampling.upsample_bilinear(a, size, data_format), size, spatial, data_format, value)


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("size,spatial", list(_nonfinite_cases(EVEN)))
def test_bilinear_kernel_nonfinite_reaches_only_its_footprint(kernel_path, size, spatial, data_format, value):
    layer = gl.UpSampling2D(size, data_format=data_format, interpolation="bilinear")
    _check_locality(lambda a: kernel_path(layer, a), size, spatial, data_format, value)


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("size,spatial", [((3, 2), (4, 5)), ((1, 2), (3, 1)), ((2, 5), (1, 3))])
def test_bilinear_kernel_odd_factor_skips_zero_weight_taps(kernel_path, size, spatial, value):
    layer = gl.UpSampling2D(size, interpolation="bilinear")
    _check_locality(lambda a: kernel_path(layer, a), size, spatial, "channels_last", value)


@pytest.mark.parametrize("size", EVEN + ODD)
def test_bilinear_backward_nonfinite_gradient_reaches_only_the_inputs_read(kernel_path, size):
    x = np.ones((1, 3, 1, 2), np.float32)  # a size-1 axis too
    oh, ow = 3 * size[0], size[1]
    fh, fw = footprint(3, size[0]), footprint(1, size[1])
    for a, b in itertools.product(range(oh), range(ow)):
        dy = np.ones((1, oh, ow, 2), np.float32)
        dy[0, a, b, 0] = np.inf
        expected = np.array([[i in fh[a] and j in fw[b] for j in range(1)] for i in range(3)])
        layer = gl.UpSampling2D(size, interpolation="bilinear")
        on_kernels = kernel_path(lambda a, d: (layer(a), layer.backward(d))[1], x, dy)
        for dx in (upsampling.upsample_bilinear_backward(dy, size, "channels_last"), on_kernels):
            np.testing.assert_array_equal(np.isposinf(dx[0, :, :, 0]), expected)
            assert np.isfinite(dx[0, :, :, 1]).all() and not np.isnan(dx).any()


# ------------------------------------------------------------- batch norm: large means

@pytest.mark.parametrize("shape,offset", [
    ((4096, 3), 1e6),
    # 16 MB: over the analysis mode's 6 MB limit for global hazards, so there it would check only
    # shared memory, for about 3 s; the 4096-row case above and test_batchnorm's several-rows-per-
    # thread cases run the same statistics kernels in analysis mode
    pytest.param((1_000_000, 4), 100.0, marks=pytest.mark.redundant_in("simulator-hazards")),
])
def test_batchnorm_reference_statistics_keep_their_digits_with_a_large_mean(kernel_path, shape, offset):
    x = (np.random.default_rng(4).standard_normal(shape) + offset).astype(np.float32)
    truth = x.astype(np.float64)  # the float32 data, in exact-enough arithmetic
    mean, var = bn.batch_norm_statistics(x, (1,))
    assert mean.dtype == var.dtype == np.float32
    np.testing.assert_allclose(mean, truth.mean(0), rtol=1e-6)
    np.testing.assert_allclose(var, truth.var(0), rtol=1e-5)
    k_mean, k_var, _ = kernel_path(lambda a: bn.batch_norm_statistics_kernel(a, (1,), 1e-3), x)
    # the reference is never the less accurate path
    assert np.all(np.abs(var - truth.var(0)) <= np.abs(k_var - truth.var(0)) + 1e-6 * truth.var(0))
    assert np.all(np.abs(mean - truth.mean(0)) <= np.abs(k_mean - truth.mean(0)) + 1e-7 * np.abs(truth.mean(0)))


def _run_bn(x, dy, simulate):
    import contextlib

    from gpulayers import kernels

    layer = gl.BatchNormalization(axis=1)
    with kernels.simulate() if simulate else contextlib.nullcontext(), np.errstate(all="ignore"):
        y = layer(x, training=True)
        dx = layer.backward(dy)
    return dict(y=y, dx=dx, moving_mean=layer.state["moving_mean"], moving_variance=layer.state["moving_variance"],
                gamma=layer.grads["gamma"], beta=layer.grads["beta"])


def _assert_same(a, b, rtol):
    for key in a:
        np.testing.assert_array_equal(np.isnan(a[key]), np.isnan(b[key]), err_msg=f"NaN positions of {key}")
        np.testing.assert_array_equal(np.isinf(a[key]), np.isinf(b[key]), err_msg=f"inf positions of {key}")
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=rtol, err_msg=key)


def _channels(columns):
    x = np.random.default_rng(6).standard_normal((48, len(columns))).astype(np.float32)
    for c, fill in enumerate(columns):
        fill(x[:, c])
    return x


NONFINITE = {  # channel contents -> documented rule: NaN statistics and outputs for that channel
    "finite": lambda v: None,
    "one +inf": lambda v: v.__setitem__(5, np.inf),
    "one -inf": lambda v: v.__setitem__(0, -np.inf),
    "+inf and -inf": lambda v: (v.__setitem__(3, np.inf), v.__setitem__(9, -np.inf)),
    "all +inf": lambda v: v.__setitem__(slice(None), np.inf),
    "one NaN": lambda v: v.__setitem__(7, np.nan),
}
NEAR_LIMIT = {  # finite float32 values whose variance is beyond float32: variance inf
    "+-3e38": lambda v: v.__setitem__(slice(None), np.where(np.arange(v.size) % 3, 3e38, -3e38)),
    "3e38 + 1e37 noise": lambda v: v.__setitem__(slice(None), 3e38 + 1e37 * v),
}


def test_batchnorm_nonfinite_channels_follow_the_rules_on_both_paths():
    x = _channels(list(NONFINITE.values()))
    dy = np.random.default_rng(7).standard_normal(x.shape).astype(np.float32)
    ref, sim = _run_bn(x, dy, False), _run_bn(x, dy, True)
    _assert_same(sim, ref, 1e-4)
    finite = np.zeros(x.shape[1], bool)
    finite[0] = True
    assert np.isfinite(ref["y"][:, finite]).all() and np.isnan(ref["y"][:, ~finite]).all()
    assert np.isnan(ref["moving_mean"][~finite]).all() and np.isnan(ref["moving_variance"][~finite]).all()
    assert np.isnan(ref["dx"][:, ~finite]).all()


def test_batchnorm_reference_near_the_float32_limit():
    x = _channels([lambda v: None] + list(NEAR_LIMIT.values()))
    dy = np.random.default_rng(8).standard_normal(x.shape).astype(np.float32)
    ref = _run_bn(x, dy, False)
    truth = x.astype(np.float64)
    np.testing.assert_allclose(ref["moving_mean"][1:], 0.01 * truth.mean(0)[1:], rtol=1e-5)
    assert np.isinf(ref["moving_variance"][1:]).all()  # 0.01 * var: still beyond float32
    # inv_std = 1 / sqrt(inf) = 0: outputs (x - mean) * 0, that is 0, or NaN where x - mean overflows
    y = ref["y"][:, 1:]
    assert np.all((y == 0) | np.isnan(y)) and not np.isnan(y[:, 1]).any()


def test_batchnorm_near_the_float32_limit_agrees_on_both_paths():
    x = _channels([lambda v: None] + list(NEAR_LIMIT.values()))
    dy = np.random.default_rng(8).standard_normal(x.shape).astype(np.float32)
    _assert_same(_run_bn(x, dy, True), _run_bn(x, dy, False), 1e-4)


# ------------------------------------------------------------- memory of the reference

def _peak(fn, *args):
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        out = fn(*args)
        return out, tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_reference_peak_memory_is_a_few_times_input_plus_output(dtype, data_format):
    from gpulayers.layers import pooling

    rng = np.random.default_rng(9)
    shape = (4, 80, 72, 24) if data_format == "channels_last" else (4, 24, 80, 72)
    # float16 is computed in float32: count its arrays at float32 size; plus the fixed scratch of
    # the chunked float16 conversion
    scale, slack = (2, 2**20) if dtype == np.float16 else (1, 2**16)
    x = rng.standard_normal(shape).astype(dtype)
    axes = (3,) if data_format == "channels_last" else (1,)
    calls = [
        (lambda: pooling.max_pool_forward(x, (3, 3), (2, 2), "same", data_format), None),
        (lambda: pooling.avg_pool_forward(x, (3, 3), (1, 1), "same", data_format), None),
        (lambda: upsampling.upsample_bilinear(x, (2, 3), data_format), None),
        (lambda: bn.batch_norm_statistics(x, axes), None),
    ]
    for fn, _ in calls:
        y, peak = _peak(fn)
        out_bytes = sum(a.nbytes for a in (y if isinstance(y, tuple) else (y,)))
        assert peak <= 3 * scale * (x.nbytes + out_bytes) + slack, (fn, peak, x.nbytes, out_bytes)
    y = pooling.max_pool_forward(x, (3, 3), (2, 2), "same", data_format)
    dy = np.ones_like(y)
    up = upsampling.upsample_bilinear(x, (2, 3), data_format)
    mean, var = bn.batch_norm_statistics(x, axes)
    for fn, in_bytes in [
        (lambda: pooling.max_pool_backward(x, dy, (3, 3), (2, 2), "same", data_format), x.nbytes + dy.nbytes),
        (lambda: upsampling.upsample_bilinear_backward(up, (2, 3), data_format), up.nbytes),
        (lambda: bn.batch_norm_backward(x, x, mean, 1 / np.sqrt(var + 1e-3), np.ones_like(mean), axes, True),
         2 * x.nbytes),
    ]:
        dx, peak = _peak(fn)
        dx = dx[0] if isinstance(dx, tuple) else dx
        assert peak <= 3 * scale * (in_bytes + dx.nbytes) + slack, (fn, peak, in_bytes, dx.nbytes)
