"""Times every layer's forward and backward against PyTorch and the copy-bandwidth roofline.

    python -m bench [--quick] [--filter pooling] [--cpu] [--runs N] [--out FOLDER]

GPU mode (a CUDA device with CuPy): our kernels timed with CUDA events (median of many runs
after warm-up, rotating among input buffers that together exceed 200 MB so that the L2 cache
does not flatter the numbers), PyTorch (cuDNN on, TF32 off) on the same shapes, and the
device's copy bandwidth measured in the same run (a large device-to-device copy, bytes read
plus written). CPU mode (no GPU, or --cpu): the NumPy reference against PyTorch's CPU
kernels on smaller shapes, one thread each (--threads), the fastest of the runs counting
(on a shared machine other processes only add time). Every case reports our median, PyTorch's, the ratio, the minimal
bytes the op must move (inputs read once, outputs written once), GB/s and the fraction of
the copy bandwidth; recurrent layers also the time per step.

Writes <device>-<yyyy-mm-dd>.json into bench/local/ (ignored by git, so an ad-hoc run never
changes the checkout), or into the folder that --out names: --out bench/results for results
meant to be committed and shown in the README by bench/report.py.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import gpulayers as gl  # noqa: E402
from gpulayers import kernels  # noqa: E402

from bench.cases import all_cases  # noqa: E402

LOCAL_RESULTS = ROOT / "bench" / "local"  # ad-hoc runs: ignored by git (bench/.gitignore)
WORKING_SET = 200 * 2**20  # bytes the rotating buffers must exceed (the H100/H200 L2 is 50 MB)
TARGET_FRACTION = 0.9
CPU_CASE_TARGET, CPU_GEOMEAN_TARGET = 4.0, 2.0  # NumPy reference vs PyTorch CPU: each case, geometric mean  # memory-bound layers: fraction of copy bandwidth to reach on large shapes


def _torch():
    try:
        import torch

        return torch
    except Exception:
        return None


class GpuTimer:
    """Median milliseconds of fn() with CUDA events."""

    def __init__(self, cp):
        self.cp = cp

    def __call__(self, fn, runs, warmup=3):
        for _ in range(warmup):
            fn()
        self.cp.cuda.Device().synchronize()
        start, end = self.cp.cuda.Event(), self.cp.cuda.Event()
        times = []
        for _ in range(runs):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(self.cp.cuda.get_elapsed_time(start, end))
        return statistics.median(times)


def cpu_timer(fn, runs, warmup=1):
    """Fastest of the runs in milliseconds: on a shared CPU, other processes only ever add time,
    so the minimum is the least disturbed measurement (ours and PyTorch's alike)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return min(times)


def copy_bandwidth(xp, timer, nbytes):
    """GB/s of a large copy on the array module's device: bytes read + bytes written."""
    a = xp.ones(nbytes // 4, np.float32)
    b = xp.empty_like(a)
    ms = timer(lambda: b.__setitem__(Ellipsis, a), runs=20)
    return 2 * a.nbytes / ms / 1e6


def _nbytes(arrays):
    total = 0
    for a in arrays:
        if isinstance(a, (list, tuple)):
            total += _nbytes(a)
        elif a is not None:
            total += a.nbytes
    return total


def run_case(case, xp, timer, runs, torch, device):
    rng = np.random.default_rng(0)
    dtype = np.dtype(case.dtype)
    one = int(np.prod(case.shape)) * dtype.itemsize
    k = max(2, -(-WORKING_SET // one)) if xp is not np else 2
    xs = [xp.asarray(rng.standard_normal(case.shape).astype(dtype)) for _ in range(k)]
    layers = [case.make() for _ in range(k)]
    ys = [layer(x, **case.call) for layer, x in zip(layers, xs)]  # builds, and saves state for backward
    dys = [xp.asarray(rng.standard_normal(y.shape).astype(dtype)) for y in ys[:1]] * k
    it = iter(range(10**9))
    fwd = timer(lambda: layers[0](xs[next(it) % k], **case.call), runs)
    for layer, x in zip(layers, xs):
        layer(x, **case.call)
    it = iter(range(10**9))
    bwd = timer(lambda: (lambda i: layers[i].backward(dys[i]))(next(it) % k), runs)
    y, dx = ys[0], layers[0].backward(dys[0])
    saved_extra = 0
    if case.name.startswith("MaxPooling"):
        saved_extra = int(np.prod(y.shape))  # the one-byte window offsets
    row = {"case": case.label(), "layer": case.layer, "shape": list(case.shape), "dtype": case.dtype,
           "layout": case.layout, "ours_forward_ms": fwd, "ours_backward_ms": bwd}
    if not case.recurrent:
        fwd_bytes = xs[0].nbytes + y.nbytes + saved_extra
        bwd_bytes = dys[0].nbytes + dx.nbytes + saved_extra + (xs[0].nbytes if "Batch" in case.name else 0)
        row.update(forward_bytes=fwd_bytes, backward_bytes=bwd_bytes,
                   forward_gbps=fwd_bytes / fwd / 1e6, backward_gbps=bwd_bytes / bwd / 1e6)
    else:
        row.update(forward_ms_per_step=fwd / case.shape[1], backward_ms_per_step=bwd / case.shape[1])
    if torch is not None and _has_module(layers[0]):
        row.update(module_case(torch, layers[0], xs, dys[0], case.call, timer, runs))
    if torch is not None and case.torch_fn is not None:
        try:
            row.update(torch_case(case, torch, timer, runs, device, k))
        except Exception as e:  # PyTorch lacking a kernel for this dtype/device: record, go on
            row["torch_error"] = f"{type(e).__name__}: {e}"[:300]
    return row


def torch_case(case, torch, timer, runs, device, k):
    rng = np.random.default_rng(0)
    shape = case.shape

    def tensor(a):
        t = torch.from_numpy(a).to(device)
        if case.layout == "channels_last":  # our NHWC memory, PyTorch's NCHW logical order
            t = t.movedim(-1, 1)
        return t
    xs = [tensor(rng.standard_normal(shape).astype(case.dtype)).requires_grad_(True) for _ in range(k)]
    it = iter(range(10**9))
    with torch.no_grad():
        fwd = timer(lambda: case.torch_fn(torch, xs[next(it) % k]), runs)
    outs = [case.torch_fn(torch, x) for x in xs]
    dy = torch.randn_like(outs[0])
    it = iter(range(10**9))
    # the gradients ours computes: the input's, and the weights' where the case has any
    params = getattr(case.torch_fn, "parameters", None)
    wrt = [[x, *(params(torch, x) if params else ())] for x in xs]
    bwd = timer(lambda: (lambda i: torch.autograd.grad(outs[i], wrt[i], dy, retain_graph=True))(next(it) % k), runs)
    return {"torch_forward_ms": fwd, "torch_backward_ms": bwd}


def _has_module(layer):
    """True when gpulayers.torch has a module for this layer."""
    import gpulayers.torch as glt

    return type(layer).__name__ in glt.__all__


def module_case(torch, layer, xs, dy, call, timer, runs):
    """The same layer as a gpulayers.torch module on tensors sharing xs's memory: its forward and
    backward milliseconds, and the wrapper's cost over calling the layer directly."""
    import gpulayers.torch as glt

    module = glt.from_layer(layer).to(torch.from_dlpack(xs[0]).device)
    module.train(bool(call.get("training", False)))
    ts = [torch.from_dlpack(x) for x in xs]
    it = iter(range(10**9))
    with torch.no_grad():
        fwd = timer(lambda: module(ts[next(it) % len(ts)]), runs)
    ts = [t.detach().requires_grad_(True) for t in ts]
    outs = [module(t) for t in ts]
    g = torch.from_dlpack(dy)
    it = iter(range(10**9))
    bwd = timer(lambda: (lambda i: torch.autograd.grad(outs[i], ts[i], g, retain_graph=True))(next(it) % len(ts)),
                runs)
    return {"module_forward_ms": fwd, "module_backward_ms": bwd}


OVERHEAD_LAYERS = (("MaxPooling2D", lambda: gl.MaxPooling2D(), (1, 4, 4, 2), {}),
                   ("UpSampling2D", lambda: gl.UpSampling2D(), (1, 4, 4, 2), {}),
                   ("BatchNormalization", lambda: gl.BatchNormalization(), (1, 4, 4, 2), {"training": True}),
                   ("GRU", lambda: gl.GRU(4), (1, 3, 2), {}))


def python_overhead_us(xp, gpu, repeats=300):
    """CPU time of one forward + backward call on a tiny input: the per-call Python cost.

    On a GPU the launches are real (and asynchronous). Without one, the kernel path runs inside
    simulate() with kernel execution stubbed out, so only gpulayers' own Python work is timed.
    """
    out = {}
    real_launch, real_snippet = kernels.launch, kernels._Snippet.__call__
    try:
        if not gpu:
            kernels.launch = lambda *a, **k: None
            kernels._Snippet.__call__ = lambda self, *arrays, **kw: (  # noqa: E731
                np.empty_like(arrays[0]) if self.n_outputs == 1
                else tuple(np.empty_like(arrays[0]) for _ in range(self.n_outputs)))
        ctx = kernels.simulate() if not gpu else contextlib.nullcontext()
        with ctx:
            for name, make, shape, call in OVERHEAD_LAYERS:
                layer = make()
                x = xp.asarray(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
                y = layer(x, **call)
                dy = xp.ones_like(y)
                layer.backward(dy)
                t = time.process_time()
                for _ in range(repeats):
                    layer(x, **call)
                    layer.backward(dy)
                out[name] = (time.process_time() - t) / repeats * 1e6
    finally:
        kernels.launch, kernels._Snippet.__call__ = real_launch, real_snippet
    return out


def limit_threads(threads, torch):
    """One thread team size for PyTorch and for the BLAS under NumPy (threadpoolctl)."""
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        import threadpoolctl

        threadpoolctl.threadpool_limits(threads)
        blas = f"NumPy's BLAS {threads}"
    except ImportError:
        blas = "NumPy's BLAS unlimited (pip install threadpoolctl)"
    print(f"CPU threads: PyTorch {threads if torch is not None else '-'}, {blas}")


def versions(torch, cp):
    info = {"python": platform.python_version(), "numpy": np.__version__, "gpulayers": gl.__version__,
            "cupy": getattr(cp, "__version__", None), "torch": getattr(torch, "__version__", None)}
    if cp is not None and kernels.gpu_available():
        info["cuda_runtime"] = cp.cuda.runtime.runtimeGetVersion()
        info["driver"] = cp.cuda.runtime.driverGetVersion()
        if torch is not None:
            info["cudnn"] = torch.backends.cudnn.version()
    return info


def device_name(gpu, cp):
    if gpu:
        return cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "cpu " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu " + platform.processor()


def verdict(row, gpu):
    """Targets are printed, never asserted: faster than PyTorch; memory-bound >= 90% of copy."""
    misses = []
    ours = row["ours_forward_ms"] + row["ours_backward_ms"]
    if "torch_forward_ms" in row:
        theirs = row["torch_forward_ms"] + row["torch_backward_ms"]
        row["ratio_vs_torch"] = ours / theirs
        if not gpu:  # CPU mode times the NumPy reference: within 4x of PyTorch's CPU kernels per case
            if ours > CPU_CASE_TARGET * theirs:
                misses.append(f"over {CPU_CASE_TARGET:g}x PyTorch CPU")
        elif row["layer"] == "recurrent":
            need = 0.5 if row["shape"][0] <= 8 else 1.0
            if ours > need * theirs:
                misses.append(f"recurrent target {'2x ' if need < 1 else ''}faster than cuDNN")
        elif ours > theirs:
            misses.append("slower than PyTorch")
    if gpu and "forward_fraction" in row and min(row["forward_fraction"], row["backward_fraction"]) < TARGET_FRACTION:
        misses.append(f"below {TARGET_FRACTION:.0%} of copy bandwidth")
    row["misses"] = misses
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few cases (under 2 minutes on one GPU)")
    parser.add_argument("--filter", default="", help="only cases whose layer or name contains this text")
    parser.add_argument("--cpu", action="store_true", help="CPU mode (the NumPy reference) even when a GPU is present")
    parser.add_argument("--runs", type=int, default=None,
                        help="timed runs per measurement, of which the median counts (default 50 on a GPU, 5 on the CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU mode: threads for PyTorch and for NumPy's BLAS (default 1: one core each, as "
                             "NumPy's element-wise code, and a busy machine cannot stall a thread team; "
                             "0 keeps the libraries' own defaults)")
    parser.add_argument("--out", default=str(LOCAL_RESULTS),
                        help="folder of the results JSON (default bench/local, ignored by git; "
                             "bench/results for results to commit)")
    args = parser.parse_args(argv)

    cp = kernels.cupy_module()
    gpu = kernels.gpu_available() and not args.cpu
    torch = _torch()
    if torch is None:
        print('PyTorch is not installed, so there is no baseline to compare with: install it with '
              'pip install ".[bench]" (the torch columns below stay empty)')
    if gpu:
        xp, timer, tdev = cp, GpuTimer(cp), "cuda"
        if torch is not None:
            torch.backends.cudnn.enabled = True
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False  # PyTorch is timed with the same CUDA events
    else:
        xp, timer, tdev = np, cpu_timer, "cpu"
    threads = None if gpu else (1 if args.threads is None else args.threads)
    if threads:
        limit_threads(threads, torch)
    cases = [c for c in all_cases(big=gpu) if (c.quick or not args.quick)
             and (args.filter.lower() in c.layer.lower() or args.filter.lower() in c.name.lower())]
    runs = args.runs or (50 if gpu else 5)
    bw = copy_bandwidth(xp, timer, 1 << 30 if gpu else 1 << 28)
    print(f"device: {device_name(gpu, cp)}; mode {'gpu' if gpu else 'cpu'}; measured copy bandwidth {bw:.1f} GB/s")
    header = (f"{'case':58} {'ours f/b ms':>17} {'torch f/b ms':>17} {'ratio':>6} {'GB/s f/b':>15} "
              f"{'of copy':>11}  target")
    print(header)
    print("-" * len(header))
    rows = []
    for case in cases:
        row = run_case(case, xp, timer, runs, torch, tdev)
        if "forward_gbps" in row:
            row["forward_fraction"], row["backward_fraction"] = row["forward_gbps"] / bw, row["backward_gbps"] / bw
        rows.append(verdict(row, gpu))
        if "module_forward_ms" in row:
            row["module_overhead_ms"] = (row["module_forward_ms"] + row["module_backward_ms"]
                                         - row["ours_forward_ms"] - row["ours_backward_ms"])
        theirs = (f"{row['torch_forward_ms']:8.3f}/{row['torch_backward_ms']:8.3f}" if "torch_forward_ms" in row
                  else f"{'-':>17}")
        ratio = f"{row['ratio_vs_torch']:6.2f}" if "ratio_vs_torch" in row else f"{'-':>6}"
        gbps = (f"{row['forward_gbps']:7.1f}/{row['backward_gbps']:7.1f}" if "forward_gbps" in row
                else f"{row['forward_ms_per_step']:6.3f}/{row['backward_ms_per_step']:6.3f}ms/step")
        frac = (f"{row['forward_fraction']:5.0%}/{row['backward_fraction']:5.0%}" if "forward_fraction" in row
                else f"{'-':>11}")
        print(f"{case.label()[:58]:58} {row['ours_forward_ms']:8.3f}/{row['ours_backward_ms']:8.3f} {theirs} {ratio} "
              f"{gbps:>15} {frac:>11}  {'MISS: ' + '; '.join(row['misses']) if row['misses'] else ('ok' if 'ratio_vs_torch' in row or gpu else 'n/a')}")
        if "module_forward_ms" in row:
            print(f"{'  as a gpulayers.torch module':58} {row['module_forward_ms']:8.3f}/{row['module_backward_ms']:8.3f}"
                  f"  wrapper overhead {row['module_overhead_ms']:+.3f} ms")
    ratios = [r["ratio_vs_torch"] for r in rows if "ratio_vs_torch" in r]
    geomean = float(np.exp(np.mean(np.log(ratios)))) if ratios else None
    if geomean is not None:
        target = f" (target <= {CPU_GEOMEAN_TARGET:g}; each case <= {CPU_CASE_TARGET:g})" if not gpu else ""
        print(f"ours / PyTorch: geometric mean {geomean:.2f}, worst {max(ratios):.2f}{target}")
    overhead = python_overhead_us(xp, gpu)
    print(f"python overhead per forward+backward call on a tiny input ({'GPU' if gpu else 'launches stubbed'}): "
          + ", ".join(f"{k} {v:.0f} us" for k, v in overhead.items()))
    name = device_name(gpu, cp)
    result = {"device": name, "mode": "gpu" if gpu else "cpu", "date": datetime.date.today().isoformat(),
              "quick": args.quick, "filter": args.filter, "runs": runs, "cpu_threads": threads,
              "statistic": "median" if gpu else "min",
              "versions": versions(torch, cp),
              "copy_bandwidth_gbps": bw, "python_overhead_us": overhead, "geomean_ratio_vs_torch": geomean,
              "cases": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()
    path = out / f"{slug}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
