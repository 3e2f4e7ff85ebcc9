"""CuPy ElementwiseKernel/ReductionKernel snippets on the simulator (and the GPU) vs NumPy."""
import numpy as np
import pytest

from gpulayers import kernels
from gpulayers.testing import assert_close

from conftest import DTYPES


normalize = kernels.elementwise_kernel(
    "T x, T mean, T inv_std, T gamma, T beta, float32 scale", "T y",
    "y = (T)((((float)x - (float)mean) * (float)inv_std * (float)gamma + (float)beta) * scale)",
    "test_normalize")
sum_squares = kernels.reduction_kernel(
    "T x, T shift", "T y", "((float)x - (float)shift) * ((float)x - (float)shift)", "a + b", "y = (T)a",
    "0", "test_sum_squares", reduce_type="float32")
count_positive = kernels.reduction_kernel(
    "T x", "int64 y", "(x > (T)0) ? 1 : 0", "a + b", "y = a", "0", "test_count_positive",
    reduce_type="int64")
clip_indexed = kernels.elementwise_kernel(
    "raw T x, int32 n", "T y", "y = x[(i + 1) % n] > (T)0 ? x[(i + 1) % n] : (T)0", "test_raw_rotate")


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_broadcasts_like_cupy(kernel_path, dtype, rng):
    x = rng.standard_normal((3, 5, 7, 33)).astype(dtype)
    mean, inv_std, gamma, beta = (rng.standard_normal(33).astype(dtype) for _ in range(4))
    y = kernel_path(lambda *a: normalize(*a, np.float32(0.5)), x, mean, inv_std, gamma, beta)
    f = lambda v: v.astype(np.float32)  # noqa: E731  (the snippet computes in float for every T)
    expected = (((f(x) - f(mean)) * f(inv_std) * f(gamma) + f(beta)) * np.float32(0.5)).astype(dtype)
    assert_close(y, expected, np.float16 if dtype == np.float16 else np.float32)


@pytest.mark.parametrize("axis,keepdims", [((0, 1, 2), False), ((0, 2), True), (None, False), (1, False)])
def test_reduction_over_axes(kernel_path, axis, keepdims, rng):
    x = rng.standard_normal((4, 6, 5, 3)).astype(np.float32)
    shift = np.float32(0.25)
    y = kernel_path(lambda a: sum_squares(a, shift, axis=axis, keepdims=keepdims), x)
    expected = ((x.astype(np.float64) - 0.25) ** 2).sum(axis=axis, keepdims=keepdims).astype(np.float32)
    assert_close(np.asarray(y), expected)


def test_reduction_with_an_integer_result(kernel_path, rng):
    x = rng.standard_normal((50, 7)).astype(np.float64)
    y = kernel_path(lambda a: count_positive(a, axis=0), x)
    assert np.array_equal(y, (x > 0).sum(0))


def test_raw_parameters_and_index(kernel_path, rng):
    x = rng.standard_normal(300).astype(np.float32)
    y = kernel_path(lambda a: clip_indexed(a, np.int32(300), kernels.array_module(a).empty(300, np.float32)), x)
    assert np.array_equal(y, np.maximum(np.roll(x, -1), 0))
