"""Every .cu in cuda/ compiles through NVRTC for sm_80 and sm_90 with each dtype (no GPU needed)."""
import os

import numpy as np
import pytest

from gpulayers import kernels
from conftest import DTYPES


def _require_nvrtc():
    if kernels.cupy_module() is None:
        if os.environ.get("CI"):
            pytest.fail("CuPy (the test extra) is missing: NVRTC compilation cannot be checked")
        pytest.skip("CuPy not installed: install the test extra to compile kernels with NVRTC")


def test_every_cu_file_declares_its_kernels():
    sources = sorted(p.name for p in kernels.cuda_dir().glob("*.cu"))
    assert sources and sources == sorted(kernels.declared())


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("source", sorted(kernels.declared()))
def test_compiles_with_nvrtc(source, dtype, arch):
    _require_nvrtc()
    result = kernels.nvrtc_compile(source, dtype, arch)
    assert len(result["cubin"]) > 0
    names = kernels.name_expressions(source, dtype)
    assert sorted(result["lowered"]) == sorted(names)
    assert all(mangled for mangled in result["lowered"].values())


def test_compile_error_reports_the_file():
    _require_nvrtc()
    from cupy.cuda import nvrtc  # noqa: F401  (binding present)

    kernels.declare("broken_for_test.cu", ["nothing<{T}>"])
    try:
        with pytest.raises((RuntimeError, FileNotFoundError)):
            kernels.nvrtc_compile("broken_for_test.cu", np.float32, "sm_80")
    finally:
        kernels._KERNELS.pop("broken_for_test.cu")
