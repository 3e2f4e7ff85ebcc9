"""Layer protocol bookkeeping, the command line, and the installed package data."""
import importlib.metadata
import os
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

import gpulayers as gl
from gpulayers import kernels, selftest


def test_pooling_layers_have_no_weights_and_keep_keras_output_shapes(rng):
    x = rng.standard_normal((2, 9, 7, 3)).astype(np.float32)
    layer = gl.MaxPooling2D(pool_size=3, strides=2, padding="same")
    y = layer(x)
    assert y.shape == layer.compute_output_shape(x.shape) == (2, 5, 4, 3)
    assert layer.params == {} and layer.state == {} and layer.get_weights() == []
    layer.set_weights([])
    with pytest.raises(ValueError, match=r"set_weights\(\) expects 0 arrays"):
        layer.set_weights([np.ones(3)])
    assert layer.to("cpu") is layer


def test_backward_uses_the_most_recent_call(rng):
    layer = gl.AveragePooling1D(pool_size=2)
    layer(rng.standard_normal((1, 6, 1)))
    layer(rng.standard_normal((1, 4, 1)))
    dx = layer.backward(np.ones((1, 2, 1)))
    assert dx.shape == (1, 4, 1) and np.allclose(dx, 0.5)


def test_gpu_arrays_need_a_gpu_marker_but_simulate_is_reentrant():
    with gl.simulate():
        with gl.simulate():
            assert kernels.simulating()
        assert kernels.simulating()
    assert not kernels.simulating()


def test_selftest_runs_every_layer_on_the_kernels_and_reports_rows():
    lines = []
    failures = selftest.run(out=lines.append)
    assert failures == 0, "\n".join(lines)
    text = "\n".join(lines)
    path = "gpu" if kernels.gpu_available() else "simulator"
    assert ("CPU kernel simulator" in text) or path == "gpu"
    for name in gl.__all__:
        if name[-2:] in ("1D", "2D", "3D"):
            assert name in text, f"selftest does not run {name}"
    rows = [l for l in lines if l.rstrip().endswith(" ok")]
    assert len(rows) >= 2 * 3 * (2 * 14 + 9)  # forward+backward, dtypes, (layouts x cases)


def test_selftest_exits_nonzero_on_a_mismatch(monkeypatch):
    from gpulayers.layers import pooling

    real = pooling.avg_pool_forward_kernel
    monkeypatch.setattr(pooling, "avg_pool_forward_kernel", lambda *a: real(*a) * 1.5)
    every_case = selftest.cases  # the whole self-test runs once, in the test above
    monkeypatch.setattr(selftest, "cases", lambda: (c for c in every_case() if c[0] is pooling.AveragePooling2D))
    lines = []
    assert selftest.run(out=lines.append) > 0
    assert any("MISMATCH" in l for l in lines)


def test_cli_info_and_help():
    out = subprocess.run([sys.executable, "-m", "gpulayers", "info"], capture_output=True, text=True, check=True)
    assert "gpulayers 0.1.0" in out.stdout and "kernel cache folder" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "gpulayers", "nonsense"], capture_output=True, text=True)
    assert bad.returncode != 0


def test_installed_wheel_ships_the_kernel_sources():
    """The installed package (site-packages, not this checkout) carries cuda/ and the simulator headers."""
    purelib = sysconfig.get_paths()["purelib"]
    dists = list(importlib.metadata.Distribution.discover(name="gpulayers", path=[purelib]))
    if not dists:
        if os.environ.get("CI"):
            pytest.fail("CI installs gpulayers, but it is not in site-packages")
        pytest.skip("gpulayers is not installed in site-packages (source checkout only)")
    names = {str(f).replace("\\", "/") for f in dists[0].files or []}
    for src in ("gpulayers/cuda/pooling.cu", "gpulayers/cuda/common.cuh",
                "gpulayers/simulator/include/cuda_sim.h", "gpulayers/simulator/include/sim_runtime.h"):
        assert src in names, f"{src} missing from the installed package"
        assert dists[0].locate_file(src).is_file()


def test_layer_dtype_casts_inputs_and_trainable_false_is_refused(rng):
    x = rng.standard_normal((2, 6, 3)).astype(np.float32)
    layer = gl.GRU(4, dtype="float64", seed=0)
    y = layer(x)
    assert y.dtype == np.float64 and layer.get_weights()[0].dtype == np.float64
    assert layer.backward(np.ones_like(y)).dtype == np.float32  # gradient of the input as given
    assert gl.MaxPooling1D(dtype="float16")(x).dtype == np.float16
    with pytest.raises(TypeError, match=r"MaxPooling1D: `dtype` must be float16, float32 or float64"):
        gl.MaxPooling1D(dtype="int32")
    with pytest.raises(NotImplementedError, match=r"BatchNormalization: `trainable=False` is not supported"):
        gl.BatchNormalization(trainable=False)
