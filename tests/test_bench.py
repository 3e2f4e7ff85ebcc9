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
