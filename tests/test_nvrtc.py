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
    # the options resource_report uses, so that test_no_kernel_spills_registers and the `kernels`
    # command below reuse these compilations (nvrtc_compile keeps its results in the process and
    # on disk, for the other test workers)
    result = kernels.nvrtc_compile(source, dtype, arch, ["--ptxas-options=-v"])
    assert len(result["cubin"]) > 0
    names = kernels.name_expressions(source, dtype)
    assert sorted(result["lowered"]) == sorted(names)
    assert all(mangled for mangled in result["lowered"].values())


def test_compile_error_reports_the_file_and_line(tmp_path, monkeypatch):
    """A real source, then the same file with a planted error, compiled through the package's own
    path (cuda_dir()): the edited file is compiled again (results are kept per source hash) and
    the error names cuda/<file> and the planted line."""
    _require_nvrtc()
    real = kernels.cuda_dir()
    for header in real.glob("*.cuh"):
        (tmp_path / header.name).write_bytes(header.read_bytes())
    lines = (real / "conv.cu").read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith(("template", "__global__")))
    broken = lines[:at] + ["const int planted_error = undeclared_name_for_this_test;\n"] + lines[at:]
    monkeypatch.setattr(kernels, "cuda_dir", lambda: tmp_path)
    monkeypatch.setenv("GPULAYERS_CACHE_DIR", str(tmp_path / "cache"))  # leave the user's cache alone
    kernels.declare("edited_for_test.cu", kernels.declared()["conv.cu"])
    try:
        (tmp_path / "edited_for_test.cu").write_text("".join(lines))
        kernels._read_source.cache_clear()
        assert kernels.nvrtc_compile("edited_for_test.cu", np.float32, "sm_80")["cubin"]  # the copy compiles
        (tmp_path / "edited_for_test.cu").write_text("".join(broken))
        kernels._read_source.cache_clear()
        with pytest.raises(RuntimeError) as failure:
            kernels.nvrtc_compile("edited_for_test.cu", np.float32, "sm_80")
    finally:
        kernels._KERNELS.pop("edited_for_test.cu")
        monkeypatch.undo()
        kernels._read_source.cache_clear()
    message = str(failure.value)
    assert f"cuda/edited_for_test.cu({at + 1}): error" in message, message
    assert "undeclared_name_for_this_test" in message


def test_each_compilation_happens_once(monkeypatch, tmp_path):
    """Once per process (kept in memory) and once per cache folder (kept on disk: another process,
    such as a second pytest-xdist worker, reads it back)."""
    _require_nvrtc()
    monkeypatch.setenv("GPULAYERS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(kernels, "_nvrtc_results", {})
    runs = []
    real_run = kernels._nvrtc_run
    monkeypatch.setattr(kernels, "_nvrtc_run", lambda *a: runs.append(a[3:]) or real_run(*a))
    first = kernels.nvrtc_compile("conv.cu", np.float64, "sm_80", ["-DGPULAYERS_CACHE_TEST"])
    first["lowered"].clear()  # a caller editing its result does not edit the kept one
    again = kernels.nvrtc_compile("conv.cu", np.float64, "sm_80", ["-DGPULAYERS_CACHE_TEST"])
    other = kernels.nvrtc_compile("conv.cu", np.float32, "sm_80", ["-DGPULAYERS_CACHE_TEST"])
    assert len(runs) == 2 and again["lowered"] and again["cubin"] == first["cubin"]
    assert sorted(again["lowered"]) == sorted(kernels.name_expressions("conv.cu", np.float64))
    assert sorted(other["lowered"]) == sorted(kernels.name_expressions("conv.cu", np.float32))
    assert len(list((tmp_path / "nvrtc").glob("conv-*.json"))) == 2
    monkeypatch.setattr(kernels, "_nvrtc_results", {})  # a new process: read from disk, not compiled
    from_disk = kernels.nvrtc_compile("conv.cu", np.float64, "sm_80", ["-DGPULAYERS_CACHE_TEST"])
    assert len(runs) == 2 and from_disk == dict(again)
    other_arch = kernels.nvrtc_compile("conv.cu", np.float64, "sm_90", ["-DGPULAYERS_CACHE_TEST"])
    assert len(runs) == 3 and other_arch["cubin"] != again["cubin"]  # the arch is in the key


@pytest.mark.parametrize("damage", ["truncated", "a list", "no lowered", "another cubin", "not base64"])
def test_a_damaged_disk_entry_is_compiled_again(damage, monkeypatch, tmp_path):
    import json

    _require_nvrtc()
    monkeypatch.setenv("GPULAYERS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(kernels, "_nvrtc_results", {})
    good = kernels.nvrtc_compile("conv.cu", np.float32, "sm_80", ["-DGPULAYERS_DAMAGE_TEST"])
    (entry,) = (tmp_path / "nvrtc").glob("conv-*.json")
    text = entry.read_text()
    kept = json.loads(text)
    entry.write_text({"truncated": text[:len(text) // 2],
                      "a list": json.dumps([kept]),
                      "no lowered": json.dumps({k: v for k, v in kept.items() if k != "lowered"}),
                      "another cubin": json.dumps(dict(kept, cubin=kept["cubin"][:-8] + "AAAAAAA=")),
                      "not base64": json.dumps(dict(kept, cubin="%%%"))}[damage])
    runs = []
    real_run = kernels._nvrtc_run
    monkeypatch.setattr(kernels, "_nvrtc_run", lambda *a: runs.append(a[3:]) or real_run(*a))
    monkeypatch.setattr(kernels, "_nvrtc_results", {})  # a new process
    again = kernels.nvrtc_compile("conv.cu", np.float32, "sm_80", ["-DGPULAYERS_DAMAGE_TEST"])
    assert len(runs) == 1 and again == good
    assert json.loads(entry.read_text())["lowered"] == good["lowered"]  # the entry was written anew


def test_compiling_needs_no_writable_cache_folder(monkeypatch, tmp_path):
    _require_nvrtc()
    (tmp_path / "a file").write_text("")
    monkeypatch.setenv("GPULAYERS_CACHE_DIR", str(tmp_path / "a file" / "cache"))  # cannot be created
    monkeypatch.setattr(kernels, "_nvrtc_results", {})
    result = kernels.nvrtc_compile("conv.cu", np.float32, "sm_80", ["-DGPULAYERS_NO_CACHE_TEST"])
    assert result["cubin"] and sorted(result["lowered"]) == sorted(kernels.name_expressions("conv.cu", np.float32))


def test_file_lock_runs_the_block_where_no_lock_can_be_had(monkeypatch, tmp_path):
    import errno
    import fcntl

    from gpulayers import paths

    def no_flock(*a):
        raise OSError(errno.ENOLCK, "No locks available")

    ran = []
    monkeypatch.setattr(fcntl, "flock", no_flock)
    with paths.file_lock(tmp_path / "entry.lock"):  # a filesystem without flock
        ran.append("no flock")
    with paths.file_lock(tmp_path / "missing folder" / "entry.lock"):  # a lock file that cannot be made
        ran.append("no lock file")
    assert ran == ["no flock", "no lock file"]


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_no_kernel_spills_registers(arch):
    _require_nvrtc()
    rows = kernels.resource_report(arch)
    expected = sum(len(kernels.name_expressions(s, d)) for s in kernels.declared() for d in DTYPES)
    assert len(rows) == expected and all("registers" in r and "spill_stores" in r for r in rows)
    spilling = [(r["kernel"], r["spill_stores"], r["spill_loads"]) for r in rows
                if r["spill_stores"] or r["spill_loads"]]
    assert not spilling, f"kernels spilling registers on {arch}: {spilling}"
    shared = {r["kernel"]: r["shared"] for r in rows}
    assert shared["global_pool_forward_rows<float, true>"] > 0  # block reduction scratch is reported


def test_kernels_cli_prints_a_row_per_kernel(capsys):
    _require_nvrtc()
    from gpulayers import __main__ as cli

    assert cli.main(["kernels", "--arch", "sm_80"]) == 0  # in this process: the compilations are kept
    out = capsys.readouterr().out
    assert "max_pool_forward<float, true>" in out and "none spills registers" in out
