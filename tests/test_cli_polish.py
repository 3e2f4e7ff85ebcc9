"""The command line's manners: pipes, progress, bad arguments, help text, the self-test table,
the benchmark without PyTorch, and the layer classes' signatures."""
import inspect
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpulayers as gl
from gpulayers import __main__ as cli
from gpulayers import kernels, selftest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", [["info"], ["selftest"]])
def test_a_closed_pipe_ends_quietly(command):
    proc = subprocess.Popen([sys.executable, "-m", "gpulayers", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.readline()  # read one line, as `| head -1` does, then go away
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=300)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_help_describes_every_option_in_plain_text():
    parser = cli.parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sub in [("", parser)] + sorted(subparsers.choices.items()):
        text = sub.format_help()
        assert "``" not in text and ":func:" not in text and ":class:" not in text, name
        for action in sub._actions:
            assert action.help, f"{name}: option {action.option_strings or action.dest} has no help"
    from bench import run as bench_run

    bench_help = subprocess.run([sys.executable, "-m", "bench", "--help"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout
    assert "``" not in bench_help and "--out" in bench_help and "bench/local" in bench_help
    assert bench_run.LOCAL_RESULTS == ROOT / "bench" / "local"


@pytest.mark.parametrize("arch", ["sm90", "gfx90a", "sm_10", "compute_1"])
def test_kernels_refuses_a_bad_arch_in_one_line(arch, capsys):
    if arch == "sm_10" and kernels.cupy_module() is None:
        pytest.skip("NVRTC (CuPy) is needed to know the supported architectures")
    assert cli.kernels_report(arch) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"Received: --arch={arch}" in err and "sm_90" in err


def test_kernels_prints_a_progress_line_per_source(monkeypatch, capsys):
    if kernels.cupy_module() is None:
        pytest.skip("NVRTC (CuPy) is needed")

    def fake_report(arch):  # compiles nothing: calls the compiler hook as the real report does
        for source in sorted(kernels.declared()):
            for dtype in (np.float32, np.float64):
                kernels.nvrtc_compile(source, dtype, arch)
        return [{"kernel": "k<float>", "dtype": "float32", "registers": 10}]

    monkeypatch.setattr(kernels, "resource_report", fake_report)
    monkeypatch.setattr(kernels, "nvrtc_compile", lambda source, dtype, arch, *a, **k: {})
    assert cli.kernels_report("sm_80") == 0
    captured = capsys.readouterr()
    progress = [l for l in captured.err.splitlines() if l.startswith("compiling cuda/")]
    assert len(progress) == len(kernels.declared()) and progress[0].endswith(f"(1/{len(kernels.declared())})")
    assert "1 kernels compiled for sm_80" in captured.out


def test_selftest_table_fits_100_columns_and_ends_with_a_count(monkeypatch):
    from gpulayers.layers import pooling, recurrent

    mask = np.ones((2, 3), bool)
    monkeypatch.setattr(selftest, "cases", lambda: iter([
        (pooling.MaxPooling2D, dict(pool_size=(3, 2), strides=2, padding="same", data_format="channels_first"),
         (2, 3, 7, 5)),
        (recurrent.GRU, dict(units=5, reset_after=False, return_sequences=True, go_backwards=True, seed=1),
         (2, 3, 4), dict(mask=mask)),
    ]))
    lines = []
    assert selftest.run(out=lines.append) == 0
    assert max(map(len, lines)) <= 100, max(lines, key=len)
    assert any("MaxPooling2D" in l and "input 2x3x7x5" in l for l in lines)
    words = " ".join(lines)
    assert "reset_after=False" in words and "return_sequences=True" in words  # never cut mid-word
    checks = sum(l.endswith((" ok", " MISMATCH")) for l in lines)
    path = "GPU" if kernels.gpu_available() else "simulator"
    assert re.fullmatch(rf"{checks} checks, 0 mismatches, kernels on the {path}", lines[-1]), lines[-1]
    assert checks == 3 * 2 + 3 * (2 + 3)  # dtypes x (forward, backward [, 3 weight gradients])


def test_bench_without_pytorch_says_how_to_install_it(tmp_path):
    code = ("import sys; sys.modules['torch'] = None; from bench.run import main; "
            f"sys.exit(main(['--cpu', '--quick', '--filter', 'SimpleRNN', '--runs', '1', '--out', {str(tmp_path)!r}]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.count('pip install ".[bench]"') == 1
    assert list(tmp_path.glob("*.json"))


def test_ad_hoc_bench_results_are_ignored_by_git():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    probe = "bench/local/cpu-test-2026-01-01.json"
    proc = subprocess.run(["git", "check-ignore", "-q", probe], cwd=ROOT)
    assert proc.returncode == 0, f"{probe} is not ignored by git"


@pytest.mark.parametrize("name,expected", [
    ("GRU", ["units", "activation", "recurrent_activation", "reset_after", "return_sequences", "dtype", "seed"]),
    ("LSTM", ["units", "unit_forget_bias", "go_backwards", "return_state"]),
    ("SimpleRNN", ["units", "activation", "use_bias", "return_sequences"]),
    ("MaxPooling2D", ["pool_size", "strides", "padding", "data_format", "name", "dtype"]),
    ("GlobalAveragePooling3D", ["data_format", "keepdims"]),
    ("UpSampling2D", ["size", "data_format", "interpolation"]),
    ("BatchNormalization", ["axis", "momentum", "epsilon"]),
])
def test_layer_classes_show_their_real_signature(name, expected):
    sig = inspect.signature(getattr(gl, name))
    assert list(sig.parameters)[:1] == expected[:1]
    assert set(expected) <= set(sig.parameters), sig
    assert not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()), sig
    assert "unit_forget_bias" not in inspect.signature(gl.GRU).parameters  # refused by GRU
    assert inspect.signature(gl.MaxPooling2D).parameters["pool_size"].default == (2, 2)
    assert inspect.signature(gl.MaxPooling1D).parameters["pool_size"].default == 2
    # every listed argument is accepted with its default
    kwargs = {p: v.default for p, v in sig.parameters.items() if v.default is not inspect.Parameter.empty}
    getattr(gl, name)(*([4] if name in ("GRU", "LSTM", "SimpleRNN") else []), **kwargs)


REQUIRED = dict(units=4, filters=2, kernel_size=3, rate=0.5, activation="relu")


@pytest.mark.parametrize("name", [n for n in gl.__all__ if inspect.isclass(getattr(gl, n))
                                  and issubclass(getattr(gl, n), gl.Layer) and getattr(gl, n) is not gl.Layer])
def test_every_layer_class_lists_its_arguments_and_takes_them(name):
    cls = getattr(gl, name)
    sig = inspect.signature(cls)
    assert not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()), sig
    assert {"name", "dtype"} <= set(sig.parameters), sig
    args = {p: (REQUIRED[p] if p in REQUIRED else gl.GRU(2)) for p, v in sig.parameters.items()
            if v.default is inspect.Parameter.empty}
    kwargs = {p: v.default for p, v in sig.parameters.items() if v.default is not inspect.Parameter.empty}
    cls(**args, **kwargs)
