"""Writes the README's results section from the newest bench/results/*.json, with a plot.

    python bench/report.py            # newest JSON (GPU results preferred over CPU ones)
    python bench/report.py FILE.json

Rewrites the text between the README markers ``<!-- bench:begin -->`` and
``<!-- bench:end -->`` and saves ``bench/results/<name>.png``: achieved fraction of the
measured copy bandwidth per case, ours next to PyTorch's (matplotlib, the ``bench`` extra).
Numbers come from the JSON only; nothing here is typed by hand.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def newest(folder=RESULTS):
    files = sorted(folder.glob("*.json"), key=lambda p: (json.loads(p.read_text())["mode"] == "gpu",
                                                          json.loads(p.read_text())["date"], p.name))
    return files[-1] if files else None


def _torch_fraction(row, key, bw):
    nbytes = row.get(f"{key}_bytes")
    ms = row.get(f"torch_{key}_ms")
    return None if nbytes is None or ms is None else nbytes / ms / 1e6 / bw


def table(result) -> str:
    lines = [f"Device: **{result['device']}** ({result['mode']} mode, {result['date']}, "
             f"{'quick' if result['quick'] else 'full'} run); measured copy bandwidth "
             f"{result['copy_bandwidth_gbps']:.1f} GB/s; "
             + (f"{result['cpu_threads']} thread(s) for PyTorch and NumPy's BLAS; "
                if result.get("cpu_threads") else "")
             + (f"{result['statistic']} of {result['runs']} runs; " if result.get("statistic") else "") + "versions: "
             + ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v is not None) + ".", "",
             "| case | ours fwd / bwd (ms) | PyTorch fwd / bwd (ms) | ours / PyTorch | of copy bandwidth fwd / bwd | target |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in result["cases"]:
        torch = (f"{r['torch_forward_ms']:.3f} / {r['torch_backward_ms']:.3f}" if "torch_forward_ms" in r else "—")
        ratio = f"{r['ratio_vs_torch']:.2f}" if "ratio_vs_torch" in r else "—"
        frac = (f"{r['forward_fraction']:.0%} / {r['backward_fraction']:.0%}" if "forward_fraction" in r
                else f"{r['forward_ms_per_step']:.3f} / {r['backward_ms_per_step']:.3f} ms per step")
        target = "missed: " + "; ".join(r["misses"]) if r["misses"] else (
            "met" if result["mode"] == "gpu" or "ratio_vs_torch" in r else "n/a")
        lines.append(f"| {r['case']} | {r['ours_forward_ms']:.3f} / {r['ours_backward_ms']:.3f} | {torch} | "
                     f"{ratio} | {frac} | {target} |")
    ratios = [r["ratio_vs_torch"] for r in result["cases"] if "ratio_vs_torch" in r]
    if ratios:
        geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
        worst = max(result["cases"], key=lambda r: r.get("ratio_vs_torch", 0))
        goal = (" (CPU targets: the NumPy reference within 2x of PyTorch's CPU kernels in geometric mean, "
                "within 4x on every case)") if result["mode"] == "cpu" else ""
        lines += ["", f"Ours / PyTorch, forward + backward: geometric mean **{geomean:.2f}** over {len(ratios)} "
                      f"cases, worst {worst['ratio_vs_torch']:.2f} ({worst['case']}){goal}."]
    overhead = ", ".join(f"{k} {v:.0f} µs" for k, v in result["python_overhead_us"].items())
    lines += ["", f"Python-side cost of one forward + backward call on a tiny input: {overhead}."]
    return "\n".join(lines)


def plot(result, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return False
    rows = [r for r in result["cases"] if "forward_fraction" in r]
    if not rows:
        return False
    bw = result["copy_bandwidth_gbps"]
    ours = [(r["forward_fraction"] + r["backward_fraction"]) / 2 for r in rows]
    theirs = [((_torch_fraction(r, "forward", bw) or 0) + (_torch_fraction(r, "backward", bw) or 0)) / 2
              for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.5))
    ys = range(len(rows))
    ax.barh([y + 0.2 for y in ys], ours, height=0.4, label="gpulayers")
    ax.barh([y - 0.2 for y in ys], theirs, height=0.4, label="PyTorch")
    ax.axvline(0.9, color="gray", linestyle="--", linewidth=1, label="90% target")
    ax.set_yticks(list(ys), [r["case"] for r in rows], fontsize=7)
    ax.set_xlabel("fraction of measured copy bandwidth (mean of forward and backward)")
    ax.set_title(f"{result['device']} ({result['mode']}, {result['date']})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    source = Path(argv[0]).resolve() if argv else newest()
    if source is None:
        print("no results in bench/results")
        return 1
    result = json.loads(source.read_text())
    png = source.with_suffix(".png")
    text = table(result)
    if plot(result, png):
        text += f"\n\n![fraction of copy bandwidth]({png.relative_to(ROOT).as_posix()})"
    text += f"\n\n(Generated by `python bench/report.py` from `{source.relative_to(ROOT).as_posix()}`.)"
    if not write_section(BEGIN, END, text):
        print("README.md has no bench markers")
        return 1
    print(f"README results section written from {source.name}")
    return 0


def write_section(begin: str, end: str, text: str) -> bool:
    """Replaces the README's text between the markers ``begin`` and ``end``; False without them."""
    readme = ROOT / "README.md"
    content = readme.read_text()
    if begin not in content or end not in content:
        return False
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{begin}\n{text}\n{end}{tail}")
    return True


if __name__ == "__main__":
    sys.exit(main())
