"""The NumPy reference of pooling against direct loops and float64 numerical gradients."""
import itertools
import zlib

import numpy as np
import pytest

import gpulayers as gl
from gpulayers.layers import pooling
from gpulayers.testing import assert_close, numerical_gradient


def direct_pool(x, op, pool, strides, padding, data_format):
    """Pooling by explicit loops over every output element (channels_last internally)."""
    if data_format == "channels_first":
        x = np.moveaxis(x, 1, -1)
    n, *spatial, c = x.shape
    out, before = [], []
    for size, k, s in zip(spatial, pool, strides):
        if padding == "valid":
            out.append((size - k) // s + 1)
            before.append(0)
        else:
            o = int(np.ceil(size / s))
            out.append(o)
            before.append(max((o - 1) * s + k - size, 0) // 2)
    y = np.zeros((n, *out, c))
    for b in range(n):
        for o in itertools.product(*[range(v) for v in out]):
            for ch in range(c):
                vals = []
                for cell in itertools.product(*[range(k) for k in pool]):
                    pos = [oi * s - p + ci for oi, s, p, ci in zip(o, strides, before, cell)]
                    if all(0 <= q < size for q, size in zip(pos, spatial)):
                        vals.append(float(x[(b, *pos, ch)]))
                if op == "max":  # NaN counts as the maximum
                    y[(b, *o, ch)] = np.nan if any(v != v for v in vals) else max(vals)
                else:
                    y[(b, *o, ch)] = sum(vals) / len(vals)
    return np.moveaxis(y, -1, 1) if data_format == "channels_first" else y


CONFIGS = [
    # rank, input spatial, pool, strides
    (1, (11,), (3,), (2,)),
    (1, (8,), (2,), (2,)),
    (1, (7,), (4,), (1,)),
    (2, (7, 6), (2, 2), (2, 2)),
    (2, (7, 8), (3, 2), (2, 3)),
    (2, (5, 5), (5, 1), (1, 2)),
    (3, (5, 4, 6), (2, 3, 2), (2, 1, 3)),
    (3, (3, 3, 4), (2, 2, 2), (1, 1, 1)),
]


@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("rank,spatial,pool,strides", CONFIGS)
def test_forward_matches_direct_loops(op, padding, data_format, rank, spatial, pool, strides, rng):
    shape = (2, *spatial, 3) if data_format == "channels_last" else (2, 3, *spatial)
    x = rng.standard_normal(shape)
    fn = pooling.max_pool_forward if op == "max" else pooling.avg_pool_forward
    y = fn(x, pool, strides, padding, data_format)
    assert_close(y, direct_pool(x, op, pool, strides, padding, data_format))




@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("rank,spatial,pool,strides", [CONFIGS[0], CONFIGS[4], CONFIGS[6]])
def test_backward_matches_numerical_gradient(op, padding, data_format, rank, spatial, pool, strides, rng):
    shape = (1, *spatial, 2) if data_format == "channels_last" else (1, 2, *spatial)
    x = rng.standard_normal(shape)
    args = (pool, strides, padding, data_format)
    fwd = pooling.max_pool_forward if op == "max" else pooling.avg_pool_forward
    y = fwd(x, *args)
    dy = rng.standard_normal(y.shape)
    dx = pooling.max_pool_backward(x, dy, *args) if op == "max" else pooling.avg_pool_backward(x.shape, dy, *args)
    assert_close(dx, numerical_gradient(lambda v: fwd(v, *args), x, dy), np.float32)  # central differences: ~1e-9


@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling_against_direct_formula_and_gradient(op, rank, data_format, keepdims, rng):
    spatial = (5, 4, 3)[:rank]
    shape = (2, *spatial, 3) if data_format == "channels_last" else (2, 3, *spatial)
    x = rng.standard_normal(shape)
    y = pooling.global_pool_forward(x, op, data_format, keepdims)
    cl = np.moveaxis(x, 1, -1) if data_format == "channels_first" else x
    flat = cl.reshape(2, -1, 3)
    expected = np.array([[max(flat[b, :, c]) if op == "max" else sum(flat[b, :, c]) / flat.shape[1]
                          for c in range(3)] for b in range(2)])
    if keepdims:
        ones = (1,) * rank
        expected = expected.reshape((2, 3, *ones) if data_format == "channels_first" else (2, *ones, 3))
    assert_close(y, expected)
    dy = rng.standard_normal(y.shape)
    dx = pooling.global_pool_backward(x, dy, op, data_format)
    assert_close(dx, numerical_gradient(lambda v: pooling.global_pool_forward(v, op, data_format, keepdims), x, dy),
                 np.float32)


@pytest.mark.parametrize("in_size,pool,stride,padding,out,pad_before", [
    (7, 3, 2, "same", 4, 1),    # pad_total = 3*2 + 3 - 7 = 2
    (8, 3, 2, "same", 4, 0),    # pad_total = 1: all of it after
    (6, 2, 2, "same", 3, 0),
    (5, 4, 1, "same", 5, 1),    # pad_total = 3
    (5, 1, 3, "same", 2, 0),    # pad_total clipped at 0
    (7, 3, 2, "valid", 3, 0),
    (8, 8, 1, "valid", 1, 0),
])
def test_output_size_formulas(in_size, pool, stride, padding, out, pad_before):
    assert pooling.pool_geometry((in_size,), (pool,), (stride,), padding) == ((out,), (pad_before,))


def test_same_padding_average_excludes_padded_cells():
    x = np.arange(1.0, 6.0).reshape(1, 5, 1)  # [1 2 3 4 5], pool 2 stride 2 same: pads 1 after
    y = gl.AveragePooling1D(pool_size=2, padding="same")(x)
    assert_close(y, np.array([1.5, 3.5, 5.0]).reshape(1, 3, 1))


def test_max_pooling_first_maximum_wins_and_nan_propagates():
    x = np.array([[1.0, 3.0, 3.0, 0.0, np.nan, 2.0, 5.0, np.nan]]).reshape(1, 8, 1)
    layer = gl.MaxPooling1D(pool_size=4)
    y = layer(x)
    assert y[0, 0, 0] == 3.0 and np.isnan(y[0, 1, 0])
    dx = layer.backward(np.array([10.0, 20.0]).reshape(1, 2, 1))
    assert_close(dx.ravel(), np.array([0, 10.0, 0, 0, 20.0, 0, 0, 0]))


def test_float16_global_average_of_ones_is_exactly_one():
    x = np.ones((2, 64, 64, 3), np.float16)
    y = gl.GlobalAveragePooling2D()(x)
    assert y.dtype == np.float16 and np.all(y == 1)


def test_output_dtype_equals_input_dtype_and_noncontiguous_input(rng):
    x = rng.standard_normal((3, 10, 12, 4)).astype(np.float16)[:, ::-1, ::2]
    y = gl.MaxPooling2D()(x)
    assert y.dtype == np.float16
    assert_close(y, pooling.max_pool_forward(np.ascontiguousarray(x), (2, 2), (2, 2)))


def direct_max_pool_backward(x, dy, pool, strides, padding, data_format):
    """Gradient of max pooling by explicit loops: each window's dy goes to its first real cell
    (row-major) holding a NaN if any, else the first holding the window's maximum."""
    if data_format == "channels_first":
        x, dy = np.moveaxis(x, 1, -1), np.moveaxis(dy, 1, -1)
    n, *spatial, c = x.shape
    out = dy.shape[1:-1]
    before = [0 if padding == "valid" else max((o - 1) * s + k - size, 0) // 2
              for size, k, s, o in zip(spatial, pool, strides, out)]
    dx = np.zeros(x.shape)
    for b in range(n):
        for o in itertools.product(*[range(v) for v in out]):
            for ch in range(c):
                cells = []
                for cell in itertools.product(*[range(k) for k in pool]):
                    pos = tuple(oi * s - p + ci for oi, s, p, ci in zip(o, strides, before, cell))
                    if all(0 <= q < size for q, size in zip(pos, spatial)):
                        cells.append(pos)
                vals = [float(x[(b, *pos, ch)]) for pos in cells]
                nans = [i for i, v in enumerate(vals) if v != v]
                best = nans[0] if nans else vals.index(max(vals))
                dx[(b, *cells[best], ch)] += float(dy[(b, *o, ch)])
    return np.moveaxis(dx, -1, 1) if data_format == "channels_first" else dx


def _special_input(rng, shape, dtype):
    """Values with many ties, +-0, +-inf and a few NaN, so every rule of max pooling is hit."""
    pool = np.array([0.0, -0.0, 1.0, 1.0, 2.0, -1.0, np.inf, -np.inf, -np.inf, -np.inf, np.nan])
    weights = np.array([1, 1, 3, 3, 3, 2, 1, 4, 4, 4, 0.3])
    return rng.choice(pool, size=shape, p=weights / weights.sum()).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("rank,spatial,pool,strides", [CONFIGS[0], CONFIGS[3], CONFIGS[4], CONFIGS[5], CONFIGS[6]])
def test_max_pooling_rules_on_ties_nan_and_inf(dtype, padding, data_format, rank, spatial, pool, strides):
    r = np.random.default_rng(zlib.crc32(repr((rank, spatial, pool, padding, data_format)).encode()))
    shape = (2, *spatial, 3) if data_format == "channels_last" else (2, 3, *spatial)
    x = _special_input(r, shape, dtype)
    if r.random() < 0.5:
        x[np.isnan(x)] = 0  # also the NaN-free path (float16 compares bit keys there)
    args = (pool, strides, padding, data_format)
    y = pooling.max_pool_forward(x, *args)
    expected = direct_pool(x, "max", *args)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y.astype(np.float64), expected)  # NaN where expected has NaN
    dy = r.integers(1, 9, y.shape).astype(dtype)  # exact in every dtype: sums are exact
    expected_dx = direct_max_pool_backward(x, dy, *args)
    np.testing.assert_array_equal(pooling.max_pool_backward(x, dy, *args).astype(np.float64), expected_dx)
    # with the forward's maxima handed over, as the layer does, instead of computed again
    np.testing.assert_array_equal(pooling.max_pool_backward(x, dy, *args, y=y).astype(np.float64), expected_dx)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_max_pooling_backward_nonfinite_gradient_reaches_only_the_maxima(dtype):
    r = np.random.default_rng(5)
    for pool, strides in [((2, 2), (2, 2)), ((3, 3), (2, 2))]:
        x = r.standard_normal((1, 7, 8, 2)).astype(dtype)
        y = pooling.max_pool_forward(x, pool, strides, "same")
        dy = r.integers(1, 5, y.shape).astype(dtype)
        dy[0, 1, 1, 0], dy[0, 2, 0, 1] = np.inf, np.nan
        dx = pooling.max_pool_backward(x, dy, pool, strides, "same")
        expected = direct_max_pool_backward(x, dy, pool, strides, "same", "channels_last")
        np.testing.assert_array_equal(dx.astype(np.float64), expected)
        assert np.isfinite(dx).sum() == dx.size - 2  # one inf cell, one NaN cell, nothing else


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_average_pooling_backward_against_direct_loops(dtype, data_format):
    r = np.random.default_rng(8)
    for spatial, pool, strides, padding in [((7, 8), (3, 2), (2, 3), "same"), ((9,), (4,), (3,), "same"),
                                            ((5, 4, 6), (2, 3, 2), (2, 1, 3), "valid")]:
        shape = (2, *spatial, 3) if data_format == "channels_last" else (2, 3, *spatial)
        x = r.standard_normal(shape).astype(dtype)
        y = pooling.avg_pool_forward(x, pool, strides, padding, data_format)
        assert y.dtype == dtype
        assert_close(y, direct_pool(x.astype(np.float64), "avg", pool, strides, padding, data_format).astype(dtype))
        dy = r.standard_normal(y.shape).astype(dtype)
        dx = pooling.avg_pool_backward(x.shape, dy, pool, strides, padding, data_format)
        # the transpose of direct_pool's average, applied to one-hot inputs
        flat = np.zeros(x.size)
        expected = np.empty(x.size)
        for k in range(x.size):
            flat[k] = 1.0
            expected[k] = np.sum(direct_pool(flat.reshape(x.shape), "avg", pool, strides, padding, data_format)
                                 * dy.astype(np.float64))
            flat[k] = 0.0
        assert dx.dtype == dtype
        assert_close(dx, expected.reshape(x.shape).astype(dtype))


def test_huge_same_window_does_not_materialise_windows():
    import tracemalloc

    # 1500-cell windows wider than the 24 x 20 input (materialised windows: 1500 x the input)
    x = np.random.default_rng(3).standard_normal((4, 24, 20, 32)).astype(np.float32)
    args = ((30, 50), (1, 1), "same", "channels_last")
    tracemalloc.start()

    def peak_of(fn, *a):  # bytes allocated at the peak of one call
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        out = fn(*a)
        return out, tracemalloc.get_traced_memory()[1] - before
    try:
        y, p1 = peak_of(pooling.max_pool_forward, x, *args)
        dx, p2 = peak_of(pooling.max_pool_backward, x, np.ones_like(y), *args)
        ya, p3 = peak_of(pooling.avg_pool_forward, x, *args)
        dxa, p4 = peak_of(pooling.avg_pool_backward, x.shape, ya, *args)
    finally:
        tracemalloc.stop()
    assert max(p1, p2, p3, p4) <= 3 * (x.nbytes + y.nbytes), (p1, p2, p3, p4)  # materialised windows: ~460 MB
    assert dx.shape == x.shape and dxa.shape == x.shape
    # on an 8 x 8 input every such window holds the whole input: the global maximum and mean
    small = x[:, :8, :8]
    assert_close(pooling.max_pool_forward(small, *args), np.broadcast_to(small.max(axis=(1, 2), keepdims=True),
                                                                          small.shape))
    assert_close(pooling.avg_pool_forward(small, *args), np.broadcast_to(small.mean(axis=(1, 2), keepdims=True),
                                                                          small.shape))
