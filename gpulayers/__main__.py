"""Command line: ``python -m gpulayers selftest | info | kernels [--arch sm_90] | demo --task ... | profile --sim``."""
from __future__ import annotations

import argparse
import platform
import sys

import numpy as np

from . import __version__, kernels


def info(out=print) -> int:
    out(f"gpulayers {__version__}")
    out(f"python {platform.python_version()}, numpy {np.__version__}")
    cp = kernels.cupy_module()
    out(f"cupy {cp.__version__ if cp is not None else 'not installed'}")
    if cp is not None:
        try:
            from cupy.cuda import nvrtc

            out(f"nvrtc {'.'.join(map(str, nvrtc.getVersion()))}")
        except Exception as e:
            out(f"nvrtc unavailable ({type(e).__name__}: {e})")
    if kernels.gpu_available():
        for i in range(kernels.gpu_count()):
            props = cp.cuda.runtime.getDeviceProperties(i)
            out(f"gpu {i}: {props['name'].decode()} (sm_{props['major']}{props['minor']}, "
                f"{props['totalGlobalMem'] / 2**30:.1f} GiB)")
    else:
        out("gpu: none (kernels run on the CPU simulator inside gpulayers.simulate())")
    try:
        import nvtx  # noqa: F401

        out("nvtx: available")
    except Exception:
        out("nvtx: not installed (layers run without NVTX ranges)")
    out(f"kernel sources: {kernels.cuda_dir()}")
    out(f"kernel cache folder (simulator libraries): {kernels.cache_folder()}")
    return 0


def kernels_report(arch: str, out=print) -> int:
    rows = kernels.resource_report(arch)
    out(f"{'kernel':58} {'dtype':8} {'regs':>5} {'smem B':>7} {'stack B':>8} {'spill st':>9} {'spill ld':>9}")
    for r in rows:
        out(f"{r['kernel'][:58]:58} {r['dtype']:8} {r.get('registers', 0):5d} {r.get('shared', 0):7d} "
            f"{r.get('stack', 0):8d} {r.get('spill_stores', 0):9d} {r.get('spill_loads', 0):9d}")
    spills = [r for r in rows if r.get("spill_stores") or r.get("spill_loads")]
    out(f"{len(rows)} kernels compiled for {arch}; {len(spills)} spill registers" if spills else
        f"{len(rows)} kernels compiled for {arch}; none spills registers")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpulayers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("selftest", help="run every layer's kernels against the NumPy reference")
    st.add_argument("--seed", type=int, default=0)
    sub.add_parser("info", help="versions, GPU, kernel cache folder")
    kr = sub.add_parser("kernels", help="registers, shared memory, stack and spills per kernel (NVRTC, no GPU needed)")
    kr.add_argument("--arch", default="sm_90", help="target, e.g. sm_80 or sm_90 (default sm_90)")
    dm = sub.add_parser("demo", help="train a small model on generated data: images, autoencoder or sequence")
    dm.add_argument("--task", choices=("images", "autoencoder", "sequence"), default="images",
                    help="images: CNN on generated shapes; autoencoder: conv encoder/decoder; "
                         "sequence: LSTM forecaster of SIR epidemic curves (default images)")
    dm.add_argument("--epochs", type=int, default=None, help="training epochs (default: the task's)")
    dm.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                    help="cpu: the NumPy path; gpu: CuPy arrays and the CUDA kernels (default cpu)")
    dm.add_argument("--out", default=".", help="folder for <task>_loss.png and <task>_summary.txt (default .)")
    pr = sub.add_parser("profile", help="memory behaviour of every layer's kernels in the simulator's analysis mode",
                        description="Runs every benchmark case through the CPU kernel simulator's analysis mode "
                                    "and prints, per layer call and kernel: launches, modeled DRAM bytes against the "
                                    "minimal bytes, global load/store sectors per request against the ideal, the "
                                    "shared-memory bank-conflict factor, hazards, warps at the GPU benchmark shape "
                                    "and a modeled H100/H200 fraction of the memory roofline. No GPU needed.")
    pr.add_argument("--sim", action="store_true", required=True,
                    help="use the CPU kernel simulator's analysis mode (the only mode so far; required)")
    pr.add_argument("--filter", default="", metavar="FAMILY",
                    help="only cases whose family (pooling, upsampling, batchnorm, recurrent) or name contains this")
    pr.add_argument("--json", default=None, metavar="PATH", help="also write the records to this JSON file")
    args = parser.parse_args(argv)
    if args.command == "profile":
        from . import profile

        profile.run(args.filter, args.json)
        return 0
    if args.command == "demo":
        from . import demos

        return demos.main(args.task, epochs=args.epochs, device=args.device, out_dir=args.out)
    if args.command == "info":
        return info()
    if args.command == "kernels":
        return kernels_report(args.arch)
    from . import selftest

    return 1 if selftest.run(seed=args.seed) else 0


if __name__ == "__main__":
    sys.exit(main())
