"""The CPU kernel simulator's own checks, each with a small purpose-written kernel."""
from pathlib import Path

import numpy as np
import pytest

from gpulayers import simulator

FOLDER = Path(__file__).parent / "sim_kernels"
NAMES = ["block_reverse", "block_reverse_no_barrier", "warp_sums", "warp_votes", "tree_sum", "histogram",
         "rotate_dynamic", "axpy3d<float>", "axpy3d<double>", "half_square", "write_past_end",
         "write_before_start", "divergent_barrier", "uneven_barriers", "read_before_start", "read_past_end"]


@pytest.fixture(scope="module")
def sim():
    return simulator.load("sim_checks.cu", NAMES, folder=FOLDER)


def expected_reverse(x, block):
    n = x.size
    padded = np.concatenate([x, np.zeros(-n % block, x.dtype)])
    return padded.reshape(-1, block)[:, ::-1].ravel()[:n] if n % block == 0 else None


def test_block_reverse_through_shared_memory(sim, rng):
    n, block = 1024, 256
    x = rng.standard_normal(n).astype(np.float32)
    y = np.zeros_like(x)
    sim.launch("block_reverse", (n // block,), (block,), [x, y, np.int32(n)])
    assert np.array_equal(y, x.reshape(-1, block)[:, ::-1].ravel())


def test_missing_barrier_changes_the_result(sim, rng):
    n, block = 512, 256
    x = rng.standard_normal(n).astype(np.float32) + 10
    y = np.zeros_like(x)
    sim.launch("block_reverse_no_barrier", (n // block,), (block,), [x, y, np.int32(n)])
    assert not np.array_equal(y, x.reshape(-1, block)[:, ::-1].ravel())


def test_warp_shuffles(sim, rng):
    n, block = 512, 128
    x = rng.standard_normal(n).astype(np.float32)
    down, butterfly, lane5 = np.zeros(n // 32, np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32)
    sim.launch("warp_sums", (n // block,), (block,), [x, down, butterfly, lane5])
    warps = x.reshape(-1, 32).astype(np.float64)
    np.testing.assert_allclose(down, warps.sum(1), rtol=1e-5)
    np.testing.assert_allclose(butterfly, np.repeat(warps.sum(1), 32), rtol=1e-5)
    assert np.array_equal(lane5, np.repeat(x.reshape(-1, 32)[:, 5], 32))


def test_warp_votes_and_prefix(sim, rng):
    n, block = 256, 64
    x = rng.standard_normal(n).astype(np.float32)
    x[64:96] = np.abs(x[64:96]) + 1  # a warp where all lanes are positive
    x[96:128] = -np.abs(x[96:128]) - 1  # a warp where none are
    ballot, anyv, allv = np.zeros(n // 32, np.uint32), np.zeros(n // 32, np.int32), np.zeros(n // 32, np.int32)
    prefix = np.zeros(n, np.float32)
    sim.launch("warp_votes", (n // block,), (block,), [x, ballot, anyv, allv, prefix])
    pos = (x > 0).reshape(-1, 32)
    expected_ballot = (pos * (1 << np.arange(32, dtype=np.uint64))).sum(1).astype(np.uint32)
    assert np.array_equal(ballot, expected_ballot)
    assert np.array_equal(anyv, pos.any(1).astype(np.int32))
    assert np.array_equal(allv, pos.all(1).astype(np.int32))
    np.testing.assert_allclose(prefix, np.cumsum(x.reshape(-1, 32), axis=1).ravel(), rtol=1e-5, atol=1e-5)


def test_shared_memory_tree_reduction(sim, rng):
    n, block = 1000, 512
    x = rng.standard_normal(n)
    out = np.zeros(2)
    sim.launch("tree_sum", (2,), (block,), [x, out, np.int32(n)])
    np.testing.assert_allclose(out, [x[:512].sum(), x[512:].sum()], rtol=1e-12)


def test_atomic_histogram(sim, rng):
    bins = rng.integers(0, 10, size=5000).astype(np.int32)
    counts = np.zeros(10, np.uint32)
    sim.launch("histogram", (7,), (128,), [bins, counts, np.int32(bins.size)])
    assert np.array_equal(counts, np.bincount(bins, minlength=10))


def test_dynamic_shared_memory(sim, rng):
    x = rng.standard_normal(384).astype(np.float32)
    y = np.zeros_like(x)
    sim.launch("rotate_dynamic", (3,), (128,), [x, y], shared_mem=128 * 4)
    assert np.array_equal(y, np.roll(x.reshape(3, 128), -1, axis=1).ravel())


@pytest.mark.parametrize("dtype,name", [(np.float32, "axpy3d<float>"), (np.float64, "axpy3d<double>")])
def test_templated_kernel_with_3d_grid(sim, dtype, name, rng):
    nz, ny, nx = 5, 7, 19
    x = rng.standard_normal((nz, ny, nx)).astype(dtype)
    y = rng.standard_normal((nz, ny, nx)).astype(dtype)
    expected = dtype(2.5) * x + y
    sim.launch(name, (3, 2, 3), (8, 4, 2), [dtype(2.5), x, y, np.int32(nx), np.int32(ny), np.int32(nz)])
    assert np.array_equal(y, expected)


def test_half_arithmetic_rounds_like_the_gpu(sim, rng):
    x = rng.standard_normal(300).astype(np.float16)
    y = np.zeros_like(x)
    sim.launch("half_square", (2,), (256,), [x, y, np.int32(x.size)])
    assert np.array_equal(y, (x * x) + np.float16(1))  # NumPy rounds each half op too


def test_out_of_bounds_write_past_the_end_is_reported(sim):
    y = np.zeros(100, np.float32)
    with pytest.raises(simulator.KernelError, match=r"write_past_end.*argument 0 \(400 bytes\).*past its end"):
        sim.launch("write_past_end", (1,), (128,), [y, np.int32(100)])


def test_out_of_bounds_write_before_the_start_is_reported(sim):
    y = np.zeros(100, np.float32)
    with pytest.raises(simulator.KernelError, match=r"write_before_start.*before its start"):
        sim.launch("write_before_start", (1,), (128,), [y, np.int32(100)])


def test_out_of_bounds_reads_are_reported_at_either_edge(sim, rng):
    x, y = rng.standard_normal(100).astype(np.float32), np.zeros(100, np.float32)
    with pytest.raises(simulator.KernelError, match=r"read_past_end.*argument 0 \(400 bytes\).*past its end"):
        sim.launch("read_past_end", (1,), (128,), [x, y, np.int32(100)])
    with simulator.guard_at_start():
        with pytest.raises(simulator.KernelError, match=r"read_before_start.*argument 0.*offset -4, before its start"):
            sim.launch("read_before_start", (1,), (128,), [x, y, np.int32(100)])
        with pytest.raises(simulator.KernelError, match=r"write_past_end.*written at byte offset 400, past its end"):
            sim.launch("write_past_end", (1,), (128,), [y, np.int32(100)])
        z = rng.standard_normal(128).astype(np.float32)
        out = np.zeros(128, np.float32)
        sim.launch("block_reverse", (1,), (128,), [z, out, np.int32(128)])  # correct kernels still pass
        assert np.array_equal(out, z[::-1])


@pytest.mark.parametrize("name", ["divergent_barrier", "uneven_barriers"])
def test_divergent_barrier_is_reported_not_hung(sim, name):
    y = np.zeros(64, np.float32)
    with pytest.raises(simulator.KernelError, match=rf"{name}.*divergent __syncthreads"):
        sim.launch(name, (1,), (64,), [y])


def test_simulator_recovers_after_an_error(sim, rng):
    test_out_of_bounds_write_past_the_end_is_reported(sim)
    test_block_reverse_through_shared_memory(sim, rng)


@pytest.mark.parametrize("block,shared,match", [((1025,), 0, "at most 1024 threads"),
                                                ((32, 32, 2), 0, "at most 1024 threads"),
                                                ((128,), 64 * 1024, "dynamic shared memory")])
def test_invalid_launches_are_reported(sim, block, shared, match):
    x = np.zeros(4096, np.float32)
    with pytest.raises(simulator.KernelError, match=match):
        sim.launch("rotate_dynamic", (1,), block, [x, x.copy()], shared_mem=shared)


def test_wrong_argument_count_and_types_are_reported(sim):
    with pytest.raises(simulator.KernelError, match="takes 3 arguments"):
        sim.launch("block_reverse", (1,), (32,), [np.zeros(32, np.float32), np.zeros(32, np.float32)])
    with pytest.raises(simulator.KernelError, match="exact C type"):
        sim.launch("block_reverse", (1,), (32,), [np.zeros(32, np.float32), np.zeros(32, np.float32), 32])


def test_concurrent_builds_of_one_library_compile_it_once(tmp_path, monkeypatch):
    """Two builders of one library (two pytest-xdist workers, say): the second waits for the
    first's lock, then finds the library instead of compiling it again."""
    import ctypes
    import time
    from concurrent.futures import ThreadPoolExecutor

    compiled = []
    real_compile = simulator._compile

    def slow_compile(*args):
        compiled.append(args[3])
        time.sleep(0.3)  # both builders are inside build_source while the first compiles
        real_compile(*args)

    monkeypatch.setattr(simulator, "_compile", slow_compile)
    tu = 'extern "C" int lock_probe_answer() { return 42; }\n'
    with ThreadPoolExecutor(2) as pool:
        libs = list(pool.map(lambda _: simulator.build_source(tu, "lock_probe", tmp_path), range(2)))
    assert compiled == ["lock_probe"] and libs[0] == libs[1]
    assert ctypes.CDLL(str(libs[0])).lock_probe_answer() == 42
