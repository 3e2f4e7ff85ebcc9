"""The NumPy reference's fast float16 conversion is bit-identical to NumPy's own."""
import numpy as np

from gpulayers.layers._float16 import CHUNK, to_float16, to_float32


def _same_bits(a, b):
    nan = np.isnan(b)
    assert np.array_equal(np.isnan(a), nan)
    assert np.array_equal(a[~nan].view(a.dtype.str.replace("f", "u")), b[~nan].view(b.dtype.str.replace("f", "u")))


def test_every_float16_widens_exactly():
    every = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    _same_bits(to_float32(every), every.astype(np.float32))


def test_float32_narrows_with_numpys_rounding():
    rng = np.random.default_rng(11)
    anything = rng.integers(0, 2**32, 3 * CHUNK + 5, dtype=np.uint64).astype(np.uint32).view(np.float32)
    halves = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    near = (halves.view(np.uint32)[:, None].astype(np.int64) + np.arange(-4100, 4101, 41)[None]).ravel()
    near = near[(near >= 0) & (near < 2**32)].astype(np.uint32).view(np.float32)  # every rounding boundary
    edges = np.array([0, -0.0, 65504, 65519.99, 65520, 65536, 1e9, np.inf, -np.inf, np.nan,
                      2**-24, 2**-25, 3 * 2**-26, -2**-14, 6.1e-5], np.float32)
    for f in (anything, near, edges):
        with np.errstate(over="ignore", invalid="ignore"):
            _same_bits(to_float16(f), f.astype(np.float16))


def test_shapes_and_views():
    x = np.random.default_rng(12).standard_normal((3, 5, 7)).astype(np.float16)[:, ::2, ::-1]
    y = to_float32(x)
    assert y.shape == x.shape and y.dtype == np.float32 and np.array_equal(y, x.astype(np.float32))
    z = to_float16(y.T)
    assert z.shape == y.T.shape and np.array_equal(z, x.T)
