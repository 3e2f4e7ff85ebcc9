"""The simulator's analysis mode classifies planted kernels (tests/sim_kernels/analysis_checks.cu)."""
from pathlib import Path

import numpy as np
import pytest

import gpulayers as gl
import gpulayers.simulator as sim
from gpulayers.simulator import analysis

FILE = Path(__file__).parent / "sim_kernels" / "analysis_checks.cu"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def test_coalesced_copy_four_sectors_per_request(rng):
    n = 1024
    x, y = rng.standard_normal(n).astype(np.float32), np.zeros(n, np.float32)
    r = sim.analyze(FILE, "coalesced_copy", n // 256, 256, [x, y, np.int32(n)])
    assert np.array_equal(y, x)  # the arrays hold the results, as after a normal launch
    assert (r.load_requests, r.load_sectors, r.load_ideal_sectors) == (n // 32, 4 * n // 32, 4 * n // 32)
    assert (r.store_requests, r.store_sectors, r.store_ideal_sectors) == (n // 32, 4 * n // 32, 4 * n // 32)
    assert (r.dram_read_bytes, r.dram_write_bytes) == (4 * n, 4 * n)
    assert r.shared_requests == 0 and r.hazards == [] and r.hazard_count == 0


def test_stride_32_copy_one_sector_per_lane(rng):
    n = 256
    x, y = rng.standard_normal(32 * n).astype(np.float32), np.zeros(n, np.float32)
    r = sim.analyze(FILE, "strided_copy", 2, 128, [x, y, np.int32(n)])
    assert np.array_equal(y, x[::32])
    assert r.load_sectors == 32 * r.load_requests and r.load_ideal_sectors == 4 * r.load_requests
    assert r.load_efficiency == 8.0 and r.store_efficiency == 1.0
    assert r.dram_read_bytes == 32 * n  # one sector per element read, each counted once


def test_broadcast_read_one_sector(rng):
    x, y = rng.standard_normal(4).astype(np.float32), np.zeros(256, np.float32)
    r = sim.analyze(FILE, "broadcast_read", 2, 128, [x, y, np.int32(256)])
    assert (r.load_requests, r.load_sectors, r.load_ideal_sectors) == (8, 8, 8)
    assert r.dram_read_bytes == 32


def test_missing_syncthreads_is_a_shared_race(rng):
    x, y = rng.standard_normal(256).astype(np.float32), np.zeros(256, np.float32)
    r = sim.analyze(FILE, "reverse_missing_barrier", 2, 128, [x, y])
    assert r.hazard_count > 0
    h = r.hazards[0]
    assert (h.kind, h.space) == ("RAW", "shared")
    assert h.first_line.endswith("analysis_checks.cu:27") and h.second_line.endswith("analysis_checks.cu:28")
    assert h.first_thread != h.second_thread and h.first_block == h.second_block
    assert "tile" in h.address and "__syncthreads" in str(h)
    fixed = sim.analyze(FILE, "reverse_with_barrier", 2, 128, [x, y])
    assert fixed.hazard_count == 0 and np.array_equal(y, x.reshape(2, 128)[:, ::-1].ravel())


@pytest.mark.parametrize("sync", [0, 1])
def test_warp_synchronous_exchange_needs_syncwarp(rng, sync):
    x, y = rng.standard_normal(32).astype(np.float32), np.zeros(32, np.float32)
    r = sim.analyze(FILE, "warp_exchange", 1, 32, [x, y, np.int32(sync)])
    if sync:
        assert r.hazard_count == 0
    else:  # lockstep is never assumed: the neighbour's write is unordered without __syncwarp
        assert r.hazard_count == 32 and {h.kind for h in r.hazards} == {"RAW"}


def test_bank_conflict_and_padded_fix(rng):
    x, y = rng.standard_normal(1024).astype(np.float32), np.zeros(32, np.float32)
    conflicted = sim.analyze(FILE, "column_read", 1, 32, [x, y, np.int32(0)])
    np.testing.assert_allclose(y, x.reshape(32, 32).sum(1), rtol=1e-4, atol=1e-5)
    # 32 row writes of 1 wavefront, then 32 column reads of 32 wavefronts each (all in bank 0)
    assert (conflicted.shared_requests, conflicted.shared_wavefronts, conflicted.shared_ideal_wavefronts) == \
        (64, 32 + 32 * 32, 64)
    padded = sim.analyze(FILE, "column_read", 1, 32, [x, y, np.int32(1)])
    assert (padded.shared_wavefronts, padded.shared_ideal_wavefronts) == (64, 64)
    assert padded.bank_conflict_factor == 1.0 and conflicted.bank_conflict_factor == pytest.approx(1056 / 64)


def test_wide_shared_accesses_are_served_per_half_and_quarter_warp(rng):
    x, y = rng.standard_normal(64), np.zeros(32)
    r = sim.analyze(FILE, "wide_shared", 1, 32, [x, y])
    assert (r.shared_requests, r.shared_wavefronts, r.shared_ideal_wavefronts) == (4, 8, 8)


def test_inter_block_write_write_conflict():
    y = np.zeros(4, np.float32)
    r = sim.analyze(FILE, "every_block_writes_one", 4, 32, [y])
    assert r.hazard_count == 3 and r.hazards[0].kind == "WAW" and r.hazards[0].space == "global"
    assert r.hazards[0].first_block != r.hazards[0].second_block
    assert "argument 0, byte 0" in r.hazards[0].address


def test_reading_what_another_block_writes():
    r = sim.analyze(FILE, "read_neighbour_block", 4, 32, [np.zeros(128, np.float32)])
    assert r.hazard_count == 3 and {(h.kind, h.space) for h in r.hazards} == {("RAW", "global")}


def test_uninitialized_shared_read():
    r = sim.analyze(FILE, "uninitialized_shared", 1, 64, [np.zeros(64, np.float32)])
    assert r.hazard_count == 32 and r.hazards[0].kind == "uninitialized" and "scratch" in r.hazards[0].address
    assert r.hazards[0].second_line.endswith("analysis_checks.cu:80")


def test_lanes_with_different_trip_counts_are_not_merged_across_iterations(rng):
    counts = np.array([1, 2, 3, 0] * 8, np.int32)
    x, y = rng.standard_normal(128).astype(np.float32), np.zeros(32, np.float32)
    r = sim.analyze(FILE, "ragged_loops", 1, 32, [x, counts, y])
    expected = np.array([2 * x[lane + 32 * np.arange(c)].sum() for lane, c in enumerate(counts)], np.float32)
    np.testing.assert_allclose(y, expected, rtol=1e-5)
    # counts (1 request, 4 sectors), then per outer iteration 3 inner ones: iteration j has the
    # lanes with count > j (24, 16, 8 of them), 4 sectors each; ideal 3, 2, 1.
    assert (r.load_requests, r.load_sectors, r.load_ideal_sectors) == (1 + 2 * 3, 4 + 2 * 12, 4 + 2 * 6)


def test_atomics_are_counted_and_exempt():
    counter = np.zeros(1, np.uint32)
    r = sim.analyze(FILE, "atomic_count", 2, 64, [counter])
    assert counter[0] == 128 and r.atomic_requests == 4 and r.hazard_count == 0


def test_bad_input_names_file_kernel_and_argument(tmp_path):
    x = np.zeros(32, np.float32)
    with pytest.raises(FileNotFoundError, match="nowhere.cu"):
        sim.analyze(tmp_path / "nowhere.cu", "k", 1, 32, [x])
    with pytest.raises(ValueError, match="no kernel named 'not_there'"):
        sim.analyze(FILE, "not_there", 1, 32, [x])
    broken = tmp_path / "broken.cu"
    broken.write_text('extern "C" __global__ void broken(float* y) { y[0] = undefined_name; }\n')
    with pytest.raises(sim.CompileError, match="broken.cu"):
        sim.analyze(broken, "broken", 1, 32, [x])
    with pytest.raises(sim.KernelError, match=r"coalesced_copy.*takes 3 arguments, 2 were passed"):
        sim.analyze(FILE, "coalesced_copy", 1, 32, [x, x])
    with pytest.raises(sim.KernelError, match=r"argument 2: the kernel takes a 4-byte value, a 8-byte scalar"):
        sim.analyze(FILE, "coalesced_copy", 1, 32, [x, x, np.int64(32)])
    with pytest.raises(sim.KernelError, match=r"argument 1: the kernel takes a pointer"):
        sim.analyze(FILE, "coalesced_copy", 1, 32, [x, np.float32(1), np.int32(32)])


def test_an_unseen_kernel_with_a_template(tmp_path, rng):
    src = tmp_path / "saxpy.cu"
    src.write_text("template <typename T> __global__ void saxpy(T a, const T* x, T* y, int n) {\n"
                   "  int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
                   "  if (i < n) y[i] = a * x[i] + y[i];\n}\n")
    x, y = rng.standard_normal(100), rng.standard_normal(100)
    expected = 2 * x + y
    r = sim.analyze(src, "saxpy<double>", 1, 128, [np.float64(2), x, y, np.int32(100)])
    np.testing.assert_allclose(y, expected)
    # 100 doubles: 4 warps (the last with 4 lanes), 8-byte lanes -> 8 sectors per full request
    assert r.load_requests == 2 * 4 and r.load_sectors == 2 * (8 + 8 + 8 + 1)
    assert r.dram_read_bytes == 2 * 800 and r.dram_write_bytes == 800


def test_checking_fails_on_a_hazard_and_recording_collects_reports(rng):
    x = rng.standard_normal((2, 9, 11, 5)).astype(np.float32)
    with gl.simulate(), analysis.recording() as reports, analysis.checking():
        layer = gl.MaxPooling2D(3, 2, "same")
        y = layer(x)
        layer.backward(np.ones_like(y))
    assert [r.kernel for r in reports] == ["max_pool_forward<float, true>", "max_pool_backward<float, true>"]
    assert all(r.hazard_count == 0 and r.load_requests > 0 for r in reports)


# ---- more hazards, schedules and errors

def test_reusing_a_tile_without_a_barrier_is_a_war_race(rng):
    x, y = rng.standard_normal(64).astype(np.float32), np.zeros(64, np.float32)
    r = sim.analyze(FILE, "reuse_without_barrier", 1, 64, [x, y])
    kinds = {(h.kind, h.space) for h in r.hazards}
    assert ("WAR", "shared") in kinds and r.hazards[0].first_block == r.hazards[0].second_block
    two = sim.analyze(FILE, "two_warps_write_one_word", 1, 64, [np.zeros(64, np.float32)])
    assert two.hazard_count == 1 and two.hazards[0].kind == "WAW" and "word" in two.hazards[0].address


def test_in_place_shift_is_a_global_war_race_naming_the_reader():
    x = np.arange(100, dtype=np.float32)
    r = sim.analyze(FILE, "shift_in_place", 2, 64, [x, np.int32(100)])
    assert r.hazard_count > 0 and {h.kind for h in r.hazards} == {"WAR"}
    h = r.hazards[0]
    # thread t reads x[t + 1] (first), which thread t + 1 then writes (second): both are named
    assert h.first_thread[0] + 1 == h.second_thread[0] and h.first_block == h.second_block


def test_syncwarp_orders_global_accesses_of_its_lanes():
    y = np.zeros(64, np.float32)
    r = sim.analyze(FILE, "global_exchange_syncwarp", 1, 32, [y])
    assert r.hazard_count == 0 and np.array_equal(y[32:], (np.arange(32) ^ 1).astype(np.float32))


def test_disjoint_syncwarp_masks_and_shuffles_do_not_order():
    r = sim.analyze(FILE, "disjoint_syncwarp", 1, 32, [np.zeros(32, np.float32)])
    assert r.hazard_count == 32 and {h.kind for h in r.hazards} == {"RAW"}
    r = sim.analyze(FILE, "shuffle_is_not_a_fence", 1, 32, [np.zeros(32, np.float32)])
    assert r.hazard_count == 32 and {h.kind for h in r.hazards} == {"RAW"}


def test_atomics_race_with_plain_accesses_and_serialise_on_one_word():
    out = np.zeros(1, np.uint32)
    r = sim.analyze(FILE, "init_then_atomic", 1, 64, [out])
    assert r.hazard_count > 0 and r.hazards[0].kind == "WAW"
    r = sim.analyze(FILE, "shared_atomic_one_word", 1, 64, [out])
    assert out[0] == 64 and r.hazard_count == 0
    # the two warps' atomic requests take 32 wavefronts each (one word, 32 lanes)
    assert r.shared_wavefronts >= 2 * 32


def test_dynamic_shared_memory_past_the_launch_size_and_reads_past_an_array():
    y = np.zeros(64, np.float32)
    ok = sim.analyze(FILE, "dynamic_fill", 1, 64, [y, np.int32(32)], shared_mem=128)
    assert ok.hazard_count == 0 and y[:32].sum() == 32
    with pytest.raises(sim.KernelError, match="dynamic shared memory write past the 128 bytes"):
        sim.analyze(FILE, "dynamic_fill", 1, 64, [y, np.int32(64)], shared_mem=128)
    x = np.ones(64, np.float32)
    with pytest.raises(sim.KernelError, match="out-of-bounds global memory read: argument 0 .* byte offset 256"):
        sim.analyze(FILE, "read_one_past", 1, 64, [x, y, np.int32(64)])


def test_lanes_skipping_a_branch_never_merge_two_iterations(rng):
    x, y = rng.standard_normal(128).astype(np.float32), np.zeros(128, np.float32)
    r = sim.analyze(FILE, "branch_in_loop", 1, 32, [x, y])
    # Each request reads one iteration's 128 bytes (4 sectors): iterations are not merged. The
    # lanes that skip the store run on to the next iteration's load and split it (the
    # documented limit of lowest-address-first reconvergence): between 4 and 8 requests.
    assert r.load_sectors == 4 * r.load_requests and 4 <= r.load_requests <= 8 and r.load_ideal_sectors == 16
    assert r.store_requests == 4
    np.testing.assert_allclose(y.reshape(4, 32)[:, 1::2], np.cumsum(x.reshape(4, 32), axis=0)[:, 1::2], rtol=1e-6)


def test_ragged_loops_with_per_iteration_addresses(rng):
    counts = np.array([1, 2, 3, 0] * 8, np.int32)
    x, y = rng.standard_normal(256).astype(np.float32), np.zeros(32, np.float32)
    r = sim.analyze(FILE, "ragged_loops_offset", 1, 32, [x, counts, y])
    # as ragged_loops; merged iterations of different lanes would read two rows per request
    assert (r.load_requests, r.load_sectors, r.load_ideal_sectors) == (1 + 2 * 3, 4 + 2 * 12, 4 + 2 * 6)


def test_dram_reads_exclude_what_the_launch_wrote_and_float4_shared(rng):
    y, z = np.zeros(256, np.float32), np.zeros(256, np.float32)
    r = sim.analyze(FILE, "write_then_read", 2, 128, [y, z])
    assert (r.dram_read_bytes, r.dram_write_bytes) == (0, 2 * 1024) and r.hazard_count == 0
    x, out = rng.standard_normal(128).astype(np.float32), np.zeros(128, np.float32)
    r = sim.analyze(FILE, "float4_shared", 1, 32, [x, out])
    assert np.array_equal(out.reshape(32, 4), x.reshape(32, 4)[::-1])
    assert (r.shared_requests, r.shared_wavefronts, r.shared_ideal_wavefronts) == (2, 8, 8)


def test_checking_raises_on_a_hazard(rng, monkeypatch):
    from gpulayers import kernels

    x, y = rng.standard_normal(256).astype(np.float32), np.zeros(256, np.float32)
    with analysis.checking(), pytest.raises(sim.KernelError, match="RAW race on shared memory"):
        names = analysis._library_kernels(FILE.resolve(), "reverse_missing_barrier")  # the library analyze builds
        analysis.run(FILE.resolve(), names, "reverse_missing_barrier", (2,), (128,), [x, y])
    assert kernels.simulating() is False


def test_kernels_whose_names_the_launcher_could_shadow(tmp_path):
    """A kernel may be called k, args or n, and its dynamic shared array out."""
    src = tmp_path / "short_names.cu"
    src.write_text('extern "C" __global__ void k(const float* x, float* y) {\n'
                   "  extern __shared__ float out[];\n"
                   "  out[threadIdx.x] = x[2 * threadIdx.x];\n  __syncthreads();\n"
                   "  y[threadIdx.x] = out[31 - threadIdx.x];\n}\n"
                   'extern "C" __global__ void args(float* n) { n[threadIdx.x] = 1.f; }\n')
    x, y = np.arange(64, dtype=np.float32), np.zeros(32, np.float32)
    r = sim.analyze(src, "k", 1, 32, [x, y], shared_mem=128)
    assert np.array_equal(y, x[::2][::-1]) and r.load_sectors == 8 and r.load_ideal_sectors == 4
    assert sim.analyze(src, "args", 1, 32, [y]).store_requests == 1


def test_one_library_serves_every_extern_c_kernel_of_a_file(tmp_path, monkeypatch):
    """analyze builds a file's extern "C" kernels into one library (one build for the file, not
    one per kernel); a name that is no kernel (inside #if 0) costs one failed build, then the
    kernel is built alone."""
    monkeypatch.setenv("GPULAYERS_CACHE_DIR", str(tmp_path / "cache"))
    libraries = lambda: sorted((tmp_path / "cache" / "sim").glob("kernels-analysis-*.so"))  # noqa: E731
    src = tmp_path / "kernels.cu"
    src.write_text('extern "C" __global__ void first(float* y) { y[threadIdx.x] = 1.f; }\n'
                   '// extern "C" __global__ void commented_out(float* y) {}\n'
                   '#if 0\nextern "C" __global__ void ghost(float* y) {}\n#endif\n'
                   'extern "C" __global__ void second(float* y) { y[threadIdx.x + 32] = 2.f; }\n')
    assert analysis._library_kernels(src, "second") == ["first", "ghost", "second"]
    y = np.zeros(64, np.float32)
    builds = []
    real_build = analysis.build
    monkeypatch.setattr(analysis, "build", lambda *a, **k: builds.append(tuple(a[1])) or real_build(*a, **k))
    assert sim.analyze(src, "first", 1, 32, [y]).store_requests == 1 and np.all(y[:32] == 1)
    assert len(libraries()) == 1  # "first" alone: the build with ghost's launcher failed
    assert sim.analyze(src, "second", 1, 32, [y]).store_requests == 1
    # the failed whole-file build was tried once, not again for "second"
    assert builds == [("first", "ghost", "second"), ("first",), ("second",)]
    src.write_text(src.read_text().replace("#if 0\n", "").replace("#endif\n", ""))
    assert sim.analyze(src, "first", 1, 32, [y]).store_requests == 1
    assert sim.analyze(src, "second", 1, 32, [y]).store_requests == 1 and np.all(y[32:] == 2)
    assert sim.analyze(src, "ghost", 1, 32, [y]).store_requests == 0
    assert len(libraries()) == 3  # one more library, for all three kernels


def test_extern_c_kernels_with_launch_bounds_are_found():
    text = ('extern "C" __global__ void __launch_bounds__(256) bounded(float* y) {}\n'
            'extern "C" __global__ void\n__launch_bounds__(128, 2)\nbounded_too(float* y) {}\n'
            'extern "C" __global__ void plain(float* y) {}\n')
    assert analysis._PLAIN_KERNEL.findall(text) == ["bounded", "bounded_too", "plain"]
