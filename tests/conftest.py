"""Shared fixtures: one test body runs on every kernel path (simulator, GPU)."""
import contextlib
import os
import zlib

import numpy as np
import pytest

from gpulayers import kernels

DTYPES = (np.float32, np.float64, np.float16)
XDIST_OPTIONS = ("--numprocesses", "--maxprocesses", "--dist")  # pyproject's addopts use these (pytest
# reserves short options such as -n for plugins: without xdist, `-n 0` is refused, `-p no:xdist` is not)


def pytest_addoption(parser, pluginmanager):
    """pyproject's addopts run the suite on pytest-xdist workers; without the plugin (not
    installed, or ``-p no:xdist`` for debugging) its options are accepted and ignored, and the
    tests run in this process (as with ``-n 0``)."""
    if not pluginmanager.has_plugin("xdist"):
        group = parser.getgroup("xdist options without pytest-xdist (ignored)")
        for option in XDIST_OPTIONS:
            group.addoption(option, dest=f"ignored_xdist_{option.strip('-')}",
                            help="ignored: pytest-xdist is not loaded")


@pytest.fixture
def rng(request):
    """A random generator of the test's own, seeded from its node id (CRC-32, stable across runs):
    a test's inputs do not depend on which tests ran before it or on -k/-x selections."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


# Every kernel test runs on each of the three simulator modes below: each kernel template
# instantiation (kernel x dtype x layout) launched by the tests runs at least once in each mode.
# A case may leave out a mode where it costs seconds and adds no instantiation and no code path
# that another case does not already run in that mode: it says so with
# ``pytest.param(..., marks=pytest.mark.redundant_in("simulator-hazards", data_format=...))``
# and a comment naming the case that covers it (pytest_collection_modifyitems below drops it
# at collection). A kernel test takes about 40 times as long in analysis mode as on the plain
# simulator.
KERNEL_MODES = ("simulator", "simulator-guard-start", "simulator-hazards")


@pytest.fixture(params=[*KERNEL_MODES, pytest.param("gpu", marks=pytest.mark.gpu)])
def kernel_path(request):
    """Runs a layer call on a kernel path: ``run(fn, *numpy arrays)`` -> NumPy results.

    "simulator": NumPy arrays inside gpulayers.simulate(), arrays flush against a trailing
    guard page (accesses past an end fault); "simulator-guard-start": the same with arrays
    flush after a leading guard page (accesses before a start fault); "simulator-hazards": the
    simulator's analysis mode, where any race or uninitialised shared read (and any access
    outside an array) fails the launch; "gpu": CuPy arrays (skipped without a GPU).
    """
    if request.param == "gpu":
        if not kernels.gpu_available():
            pytest.skip("no CUDA GPU available (CuPy missing or no device)")
        cp = kernels.cupy_module()

        def run(fn, *arrays):
            out = fn(*[cp.asarray(a) for a in arrays])
            return _to_numpy(out)

        run.name = "gpu"
        return run

    from gpulayers import simulator
    from gpulayers.simulator import analysis

    extra = {"simulator-guard-start": simulator.guard_at_start, "simulator-hazards": analysis.checking}.get(
        request.param, contextlib.nullcontext)

    def run_sim(fn, *arrays):
        with kernels.simulate(), extra():
            return _to_numpy(fn(*arrays))

    run_sim.name = request.param
    return run_sim


def pytest_collection_modifyitems(config, items):
    """Drops the runs that a `redundant_in` mark declares redundant (see KERNEL_MODES)."""
    kept, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        for mark in item.iter_markers("redundant_in"):  # a misspelt mode or parameter would drop nothing
            if len(mark.args) != 1 or mark.args[0] not in KERNEL_MODES or not set(mark.kwargs) <= set(params):
                raise pytest.UsageError(f"{item.nodeid}: redundant_in{mark.args} {mark.kwargs} must name one of "
                                        f"{KERNEL_MODES} and only parameters of the test ({sorted(params)})")
        redundant = any(
            params.get("kernel_path") == mark.args[0]
            and all(params.get(name) == value for name, value in mark.kwargs.items())
            for mark in item.iter_markers("redundant_in"))
        (dropped if redundant else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def import_keras_oracle():
    """Keras 3 on jax (float64 enabled) for the oracle tests, or skip the calling module where it
    is not installed (CI installs the `oracle` extra: there its absence is a failure)."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("JAX_ENABLE_X64", "1")
    # XLA compiles every jax op of the oracles once (cold) and runs it a few times: its lowest
    # backend optimisation level compiles about 20 % faster (no fast-math at any level).
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
    try:
        import keras
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("Keras 3 (the `oracle` extra) is not installed", allow_module_level=True)
    return keras


def _to_numpy(out):
    if isinstance(out, (tuple, list)):
        return type(out)(_to_numpy(o) for o in out)
    return out.get() if hasattr(out, "get") and not isinstance(out, np.ndarray) else out


def random_input(rng, shape, dtype):
    """Random normal values, never all zero; distinct enough that max pooling has no ties."""
    x = rng.standard_normal(shape)
    return x.astype(dtype)


GPU_SKIP = "no CUDA GPU"  # the reason every GPU-only test gives when it skips


def pytest_terminal_summary(terminalreporter):
    """One line for the GPU-only tests skipped on a machine without a GPU, one per other skip
    (pyproject's -rfEX reports failures, errors and unexpected passes; skips are reported here)."""
    skipped = terminalreporter.stats.get("skipped", [])
    reasons = [(report.nodeid, _skip_reason(report)) for report in skipped]
    gpu = [nodeid for nodeid, reason in reasons if GPU_SKIP in reason]
    other = [(nodeid, reason) for nodeid, reason in reasons if GPU_SKIP not in reason]
    if not gpu and not other:
        return
    terminalreporter.section("skips", sep="-")
    if gpu:
        terminalreporter.write_line(f"{len(gpu)} GPU tests skipped: no CUDA GPU (CuPy missing or no device)")
    for nodeid, reason in other:
        terminalreporter.write_line(f"SKIPPED {nodeid}: {reason}")


def _skip_reason(report) -> str:
    if isinstance(report.longrepr, tuple):  # (path, line, "Skipped: reason")
        return report.longrepr[2].removeprefix("Skipped: ")
    return str(report.longrepr)
