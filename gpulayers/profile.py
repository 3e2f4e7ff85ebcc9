"""``python -m gpulayers profile --sim``: every layer's kernels through the simulator's analysis mode.

For each benchmark case, on shapes small enough to simulate in seconds (2 x 28 x 28 x 64 images,
8 x 6 x 64 sequences), the layer's forward and backward run inside
:func:`gpulayers.simulator.analysis.recording`, and every kernel launch is measured: modeled DRAM
bytes against the minimal bytes the call must move, global load and store sectors per request
against the ideal, the shared-memory bank-conflict factor, and hazards. Each case is also
launched (without executing anything) at the benchmark's GPU shape, to count the warps each
launch gives the device against ``min(4096, bytes it moves / 512)``.

Modeled time: per launch, DRAM bytes at the copy bandwidth an H100 (3.0 TB/s) and an H200
(4.3 TB/s) reach, plus a fixed cost per launch (:data:`LAUNCH_US`); shown as the fraction of the
minimal-bytes roofline, once at the profile shape (where launch cost dominates) and once scaled
to the GPU benchmark shape (DRAM bytes scaled with the minimal bytes, launches unchanged).

Minimal bytes (also what ``bench`` reports): every input read once and every output written once,
plus what the layer keeps for backward (max pooling's one-byte window offsets; global max
pooling's int32 position of each maximum; batch normalization's copy of its input, written in
the normalising pass); batch normalization's backward also reads x (d gamma needs it), and in
training it counts two passes over its input (statistics, then normalisation; in backward the
gradient sums, then the input gradient), since no kernel keeps a whole batch on chip.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
from dataclasses import dataclass, field

import numpy as np

from . import kernels
from .simulator import analysis

BANDWIDTH = {"H100": 3.0e12, "H200": 4.3e12}  # bytes/s a device-to-device copy reaches
LAUNCH_US = 2.0  # fixed cost per kernel launch (launch latency and tail), microseconds
TARGETS = {"dram": 1.10, "sectors": 1.25, "bank": 1.10}
MAX_WARPS_NEEDED = 4096  # ~31 warps on each of an H100's 132 SMs: half occupancy

IMAGE_SHAPE = (2, 28, 28, 64)  # channels_last (N, H, W, C) of the profile
GPU_IMAGE_SHAPE = (64, 112, 112, 64)  # the benchmark's first GPU shape
SEQUENCE_SHAPE = (8, 6, 64)  # (batch, time, features)
GPU_SEQUENCE_SHAPE = (64, 100, 512)


@dataclass
class Case:
    name: str  # as in bench: "MaxPooling2D 3x3/2 same"
    family: str  # pooling, upsampling, batchnorm, recurrent
    make: object  # () -> layer
    layout: str = "channels_last"
    dtype: str = "float32"
    call: dict = field(default_factory=dict)
    recurrent: bool = False

    def shape(self, gpu=False):
        if self.recurrent:
            return GPU_SEQUENCE_SHAPE if gpu else SEQUENCE_SHAPE
        n, h, w, c = GPU_IMAGE_SHAPE if gpu else IMAGE_SHAPE
        return (n, h, w, c) if self.layout == "channels_last" else (n, c, h, w)

    def label(self):
        return f"{self.name} {self.layout.replace('channels_', '')} {self.dtype}"


def cases() -> list[Case]:
    """The benchmark's cases (same layers and configurations), for the profile."""
    import gpulayers as gl

    out = []
    for layout in ("channels_last", "channels_first"):
        for dtype in ("float32", "float16"):
            common = dict(layout=layout, dtype=dtype)
            axis = -1 if layout == "channels_last" else 1
            out += [
                Case("MaxPooling2D 2x2/2", "pooling", lambda lay=layout: gl.MaxPooling2D(2, data_format=lay), **common),
                Case("MaxPooling2D 3x3/2 same", "pooling",
                     lambda lay=layout: gl.MaxPooling2D(3, 2, "same", data_format=lay), **common),
                Case("AveragePooling2D 2x2/2", "pooling",
                     lambda lay=layout: gl.AveragePooling2D(2, data_format=lay), **common),
                Case("GlobalAveragePooling2D", "pooling",
                     lambda lay=layout: gl.GlobalAveragePooling2D(data_format=lay), **common),
                Case("GlobalMaxPooling2D", "pooling", lambda lay=layout: gl.GlobalMaxPooling2D(data_format=lay),
                     **common),
                Case("UpSampling2D nearest x2", "upsampling", lambda lay=layout: gl.UpSampling2D(2, data_format=lay),
                     **common),
                Case("UpSampling2D bilinear x2", "upsampling",
                     lambda lay=layout: gl.UpSampling2D(2, data_format=lay, interpolation="bilinear"), **common),
                Case("BatchNormalization train", "batchnorm", lambda a=axis: gl.BatchNormalization(axis=a),
                     call=dict(training=True), **common),
                Case("BatchNormalization inference", "batchnorm", lambda a=axis: gl.BatchNormalization(axis=a),
                     **common),
            ]
    for name in ("GRU", "LSTM", "SimpleRNN"):
        out.append(Case(f"{name} u64", "recurrent",
                        lambda name=name: getattr(gl, name)(64, return_sequences=True, seed=0),
                        layout="batch_time", recurrent=True))
    return out


def minimal_bytes(layer, x_nbytes, y_nbytes, direction, training=False, outputs=None) -> int:
    """Bytes a layer call must move at least (see the module docstring)."""
    name = type(layer).__name__
    extra = 0
    if name.startswith("MaxPooling") and math.prod(layer.pool_size) <= 256:
        extra = outputs  # one byte per output: the window offset of its maximum
    elif name.startswith("GlobalMaxPooling"):
        extra = 4 * outputs  # int32 position of each maximum
    if name == "BatchNormalization":
        # forward: the copy of x that backward reads (the caller may change x in place); backward:
        # x (d gamma needs x - mean) besides dy and dx. Training: two passes over the input.
        if direction == "forward":
            return (2 if training else 1) * x_nbytes + y_nbytes + x_nbytes
        return (2 if training else 1) * (x_nbytes + y_nbytes) + x_nbytes
    return x_nbytes + y_nbytes + extra


@contextlib.contextmanager
def _launches_only():
    """Record (name, grid, block, bytes moved) of every launch without executing anything."""
    seen = []
    real_launch, real_snippet = kernels.launch, kernels._Snippet.__call__

    def launch(source, template, dtype, grid, block, args, shared_mem=0):
        name = template.format(T=kernels.CTYPES[np.dtype(dtype)])
        grid = grid if isinstance(grid, tuple) else (grid,)
        block = block if isinstance(block, tuple) else (block,)
        nbytes = sum(a.nbytes for a in args if isinstance(a, np.ndarray))
        seen.append((name, math.prod(grid) * -(-math.prod(block) // 32), nbytes))

    def snippet(self, *arrays, **kw):
        n_out = self.n_outputs
        outs = tuple(np.empty_like(arrays[0]) for _ in range(n_out))
        size = outs[0].size
        nbytes = sum(analysis._footprint(a) for a in arrays if isinstance(a, np.ndarray)) + n_out * outs[0].nbytes
        seen.append((f"cupy elementwise {self.args[3]}", -(-size // 32), nbytes))
        return outs if n_out > 1 else outs[0]

    kernels.launch, kernels._Snippet.__call__ = launch, snippet
    try:
        with kernels.simulate():
            yield seen
    finally:
        kernels.launch, kernels._Snippet.__call__ = real_launch, real_snippet


def _inputs(case, rng, gpu=False):
    shape = case.shape(gpu)
    if gpu:  # launch configuration only: contents never read
        return np.zeros(shape, case.dtype)
    return rng.standard_normal(shape).astype(case.dtype)


def parallelism(case) -> dict:
    """{(direction, kernel): (warps of its smallest launch, warps needed)} at the GPU shape."""
    out = {}
    rng = np.random.default_rng(0)
    layer = case.make()
    x = _inputs(case, rng, gpu=True)
    with _launches_only() as seen, np.errstate(all="ignore"):  # nothing runs: outputs hold garbage
        y = layer(x, **case.call)
        marks = len(seen)
        layer.backward(np.zeros(y.shape if not isinstance(y, list) else y[0].shape, y.dtype))
    for i, (name, warps, nbytes) in enumerate(seen):
        key = ("forward" if i < marks else "backward", name)
        need = min(MAX_WARPS_NEEDED, nbytes // 512)
        have, needed = out.get(key, (warps, need))
        out[key] = (min(have, warps), max(needed, need))
    return out


def profile_case(case, rng) -> list[dict]:
    """One record per (direction, kernel) of the case, at the profile shape."""
    layer = case.make()
    x = _inputs(case, rng)
    rows = []
    with kernels.simulate():
        with analysis.recording() as fwd:
            y = layer(x, **case.call)
        dy = rng.standard_normal(y.shape).astype(y.dtype)
        with analysis.recording() as bwd:
            layer.backward(dy)
    gpu = parallelism(case)
    training = bool(case.call.get("training"))
    scale = math.prod(case.shape(True)) / math.prod(case.shape(False))
    for direction, reports in (("forward", fwd), ("backward", bwd)):
        minimal = minimal_bytes(layer, x.nbytes, y.nbytes, direction, training, int(np.prod(y.shape)))
        by_kernel: dict = {}
        for r in reports:
            by_kernel.setdefault(r.kernel, []).append(r)
        launches = len(reports)
        dram = sum(r.dram_bytes for r in reports)
        timing = {}
        for device, bw in BANDWIDTH.items():
            for where, s in (("profile", 1.0), ("gpu_shape", scale)):
                modeled = dram * s / bw + launches * LAUNCH_US * 1e-6
                timing[f"{device.lower()}_fraction_{where}"] = (minimal * s / bw) / modeled if modeled else 0.0
        for kernel, rs in by_kernel.items():
            total = rs[0]
            for r in rs[1:]:
                total = total.merge(r)
            warps, needed = gpu.get((direction, kernel), (None, None))
            rows.append(dict(
                case=case.label(), layer=type(layer).__name__, family=case.family, layout=case.layout,
                dtype=case.dtype, shape=list(x.shape), direction=direction, kernel=kernel,
                launches=len(rs), steps=(x.shape[1] if case.recurrent else None),
                dram_bytes=total.dram_bytes, call_dram_bytes=dram, minimal_bytes=minimal,
                load_requests=total.load_requests, load_sectors=total.load_sectors,
                load_ideal_sectors=total.load_ideal_sectors, store_requests=total.store_requests,
                store_sectors=total.store_sectors, store_ideal_sectors=total.store_ideal_sectors,
                shared_requests=total.shared_requests, shared_wavefronts=total.shared_wavefronts,
                shared_ideal_wavefronts=total.shared_ideal_wavefronts, hazards=total.hazard_count,
                hazard_details=[str(h) for h in total.hazards[:3]],
                modeled=not kernel.startswith("cupy "), gpu_warps=warps, gpu_warps_needed=needed,
                call_launches=launches, **timing))
    return rows


def verdict(row) -> list[str]:
    """The targets a (case, kernel) record misses, for memory-bound families."""
    misses = []
    if row["family"] == "recurrent":
        return misses
    ratio = lambda a, b: a / b if b else 1.0  # noqa: E731
    if ratio(row["call_dram_bytes"], row["minimal_bytes"]) > TARGETS["dram"]:
        misses.append(f"DRAM x{ratio(row['call_dram_bytes'], row['minimal_bytes']):.2f}")
    for kind in ("load", "store"):
        r = ratio(row[f"{kind}_sectors"], row[f"{kind}_ideal_sectors"])
        if r > TARGETS["sectors"]:
            misses.append(f"{kind} sectors x{r:.2f}")
    b = ratio(row["shared_wavefronts"], row["shared_ideal_wavefronts"])
    if b > TARGETS["bank"]:
        misses.append(f"bank conflicts x{b:.2f}")
    if row["hazards"]:
        misses.append(f"{row['hazards']} hazards")
    if row["gpu_warps"] is not None and row["gpu_warps"] < row["gpu_warps_needed"]:
        misses.append(f"{row['gpu_warps']} warps < {row['gpu_warps_needed']}")
    return misses


def _fmt_bytes(n):
    return f"{n / 1e6:.2f}MB" if n >= 1e6 else f"{n / 1e3:.1f}kB"


def table(rows, out=print) -> None:
    header = (f"{'case':40} {'pass':4} {'kernel':44} {'n':>3} {'DRAM/min':>12} {'ld x':>5} {'st x':>5} "
              f"{'bank x':>6} {'hz':>3} {'warps@GPU':>15} {'H100':>5} {'H200':>5}  targets")
    out(header)
    out("-" * len(header))
    previous = None
    for r in rows:
        call = (r["case"], r["direction"])
        ratio = lambda a, b: a / b if b else 1.0  # noqa: E731
        first = call != previous
        previous = call
        dram = f"{ratio(r['call_dram_bytes'], r['minimal_bytes']):.2f}" if first else ""
        h100 = f"{r['h100_fraction_gpu_shape']:.0%}" if first else ""
        h200 = f"{r['h200_fraction_gpu_shape']:.0%}" if first else ""
        warps = f"{r['gpu_warps']}/{r['gpu_warps_needed']}" if r["gpu_warps"] is not None else "-"
        if r["family"] == "recurrent":  # launches and modeled DRAM bytes per time step
            dram = f"{r['launches'] / r['steps']:.0f}/st {_fmt_bytes(r['dram_bytes'] / r['steps'])}"
        misses = verdict(r)
        out(f"{(r['case'] if first else ''):40} {r['direction'][:4] if first else '':4} {r['kernel'][:44]:44} "
            f"{r['launches']:3d} {dram:>12} {ratio(r['load_sectors'], r['load_ideal_sectors']):5.2f} "
            f"{ratio(r['store_sectors'], r['store_ideal_sectors']):5.2f} "
            f"{ratio(r['shared_wavefronts'], r['shared_ideal_wavefronts']):6.2f} {r['hazards']:3d} {warps:>15} "
            f"{h100:>5} {h200:>5}  {'MISS: ' + ', '.join(misses) if misses else 'ok'}")


def run(filter_: str = "", json_path: str | None = None, out=print) -> int:
    """Profiles every case (of the family containing ``filter_``); returns the number of misses."""
    rng = np.random.default_rng(0)
    selected = [c for c in cases() if filter_.lower() in c.family or filter_.lower() in c.name.lower()]
    if not selected:
        out(f"profile: no case matches --filter {filter_!r} (families: pooling, upsampling, batchnorm, recurrent)")
        return 1
    out(f"Simulator analysis of {len(selected)} cases (images {'x'.join(map(str, IMAGE_SHAPE))} NHWC, "
        f"sequences {'x'.join(map(str, SEQUENCE_SHAPE))}); warps counted at the GPU benchmark shapes "
        f"({'x'.join(map(str, GPU_IMAGE_SHAPE))}, {'x'.join(map(str, GPU_SEQUENCE_SHAPE))}); H100/H200: modeled "
        f"fraction of the minimal-bytes roofline at the GPU shape ({LAUNCH_US:g} us per launch)")
    rows = []
    for case in selected:
        rows += profile_case(case, rng)
    table(rows, out)
    misses = [r for r in rows if verdict(r)]
    out(f"{len(rows)} kernel records, {len(misses)} miss a target, "
        f"{sum(r['hazards'] for r in rows)} hazards")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"shapes": {"image": IMAGE_SHAPE, "sequence": SEQUENCE_SHAPE, "gpu_image": GPU_IMAGE_SHAPE,
                                  "gpu_sequence": GPU_SEQUENCE_SHAPE},
                       "bandwidth_bytes_per_s": BANDWIDTH, "launch_us": LAUNCH_US, "targets": TARGETS,
                       "cases": [dict(r, misses=verdict(r)) for r in rows]}, f, indent=1)
            f.write("\n")
        out(f"wrote {json_path}")
    return len(misses)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(1 if run() else 0)
