"""The benchmark harness runs end to end in CPU mode and writes a complete results JSON
(timings are measured there, never asserted)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_cpu_mode_writes_results(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench", "--cpu", "--quick", "--filter", "SimpleRNN", "--runs", "1",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "measured copy bandwidth" in proc.stdout and "python overhead" in proc.stdout
    (path,) = tmp_path.glob("*.json")
    result = json.loads(path.read_text())
    assert result["mode"] == "cpu" and result["copy_bandwidth_gbps"] > 0
    assert {"numpy", "gpulayers", "cupy", "torch"} <= set(result["versions"])
    (case,) = result["cases"]
    assert case["layer"] == "recurrent" and case["ours_forward_ms"] > 0 and case["forward_ms_per_step"] > 0
    assert set(result["python_overhead_us"]) == {"MaxPooling2D", "UpSampling2D", "BatchNormalization", "GRU"}


def test_simulator_speed_script_runs_its_kernels(capsys):
    """bench/simulator_speed.py launches pooling kernels directly: it must keep up with their
    arguments (it checks its own results)."""
    sys.path.insert(0, str(ROOT))
    from bench import simulator_speed
    from gpulayers import kernels

    with kernels.simulate():
        simulator_speed.main(repeat=0)
    rows = capsys.readouterr().out.splitlines()
    assert rows[1].startswith("avg_pool_forward") and rows[2].startswith("global_pool_forward_rows")


def test_report_renders_a_results_table(tmp_path):
    sys.path.insert(0, str(ROOT))
    from bench import report

    result = {"device": "test device", "mode": "gpu", "date": "2026-01-01", "quick": True,
              "copy_bandwidth_gbps": 100.0, "versions": {"numpy": "x"}, "python_overhead_us": {"GRU": 5.0},
              "cases": [{"case": "MaxPooling2D a", "ours_forward_ms": 1.0, "ours_backward_ms": 2.0,
                         "torch_forward_ms": 2.0, "torch_backward_ms": 2.0, "ratio_vs_torch": 0.75,
                         "forward_fraction": 0.95, "backward_fraction": 0.5, "forward_bytes": 1, "backward_bytes": 1,
                         "misses": ["below 90% of copy bandwidth"]}]}
    text = report.table(result)
    assert "| MaxPooling2D a | 1.000 / 2.000 | 2.000 / 2.000 | 0.75 | 95% / 50% | missed: below 90%" in text


def test_report_states_the_cpu_targets_and_the_geometric_mean():
    sys.path.insert(0, str(ROOT))
    from bench import report

    def case(name, ours, theirs):
        return {"case": name, "ours_forward_ms": ours, "ours_backward_ms": ours, "torch_forward_ms": theirs,
                "torch_backward_ms": theirs, "ratio_vs_torch": ours / theirs, "forward_fraction": 0.5,
                "backward_fraction": 0.5, "misses": ["over 4x PyTorch CPU"] if ours > 4 * theirs else []}
    result = {"device": "cpu test", "mode": "cpu", "date": "2026-01-01", "quick": False, "runs": 7,
              "statistic": "min", "cpu_threads": 1, "copy_bandwidth_gbps": 10.0, "versions": {"numpy": "x"},
              "python_overhead_us": {"GRU": 5.0}, "cases": [case("A", 1.0, 2.0), case("B", 9.0, 1.0)]}
    text = report.table(result)
    assert "1 thread(s) for PyTorch and NumPy's BLAS; min of 7 runs" in text
    assert "| A | 1.000 / 1.000 | 2.000 / 2.000 | 0.50 | 50% / 50% | met |" in text
    assert "| B | 9.000 / 9.000 | 1.000 / 1.000 | 9.00 | 50% / 50% | missed: over 4x PyTorch CPU |" in text
    assert "geometric mean **2.12** over 2 cases, worst 9.00 (B)" in text  # sqrt(0.5 * 9)
