"""Command line of gpulayers: selftest, info, kernels, demo and profile (see python -m gpulayers --help)."""
from __future__ import annotations

import argparse
import os
import platform
import re
import sys

import numpy as np

from . import __version__, kernels

ARCH_FORM = re.compile(r"^(sm|compute)_\d{2,3}[af]?$")


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


def _supported_archs():
    try:
        from cupy.cuda import nvrtc

        return [f"sm_{a}" for a in nvrtc.getSupportedArchs()]
    except Exception:
        return []


def _bad_arch(arch, why="") -> int:
    supported = _supported_archs()
    print("gpulayers kernels: `--arch` must be sm_XY or compute_XY (e.g. sm_80, sm_90, sm_90a)"
          + (f" and one that this NVRTC knows ({', '.join(supported)})" if supported else "")
          + f". Received: --arch={arch}{why}", file=sys.stderr)
    return 2


def kernels_report(arch: str, out=print, progress=None) -> int:
    """Registers, shared memory, stack and spills of every kernel, one progress line per source."""
    supported = _supported_archs()
    if not ARCH_FORM.match(arch) or (supported and "sm_" + arch.split("_")[1].rstrip("af") not in supported):
        return _bad_arch(arch)
    if kernels.cupy_module() is None:
        print("gpulayers kernels: NVRTC needs CuPy; install it with pip install \".[cuda13]\" (or cuda12)",
              file=sys.stderr)
        return 1
    if progress is None:
        def progress(line):
            print(line, file=sys.stderr, flush=True)
    real_compile, started = kernels.nvrtc_compile, set()

    def compile_with_progress(source, dtype, *args, **kw):  # one line when a source starts compiling
        if source not in started:
            started.add(source)
            progress(f"compiling cuda/{source} for {arch} ({len(started)}/{len(kernels.declared())})")
        return real_compile(source, dtype, *args, **kw)
    kernels.nvrtc_compile = compile_with_progress
    try:
        rows = kernels.resource_report(arch)
    except RuntimeError as e:
        if "gpu-architecture" in str(e) or "-arch" in str(e):
            return _bad_arch(arch, " (NVRTC refused it)")
        raise
    finally:
        kernels.nvrtc_compile = real_compile
    out(f"{'kernel':58} {'dtype':8} {'regs':>5} {'smem B':>7} {'stack B':>8} {'spill st':>9} {'spill ld':>9}")
    for r in rows:
        out(f"{r['kernel'][:58]:58} {r['dtype']:8} {r.get('registers', 0):5d} {r.get('shared', 0):7d} "
            f"{r.get('stack', 0):8d} {r.get('spill_stores', 0):9d} {r.get('spill_loads', 0):9d}")
    spills = [r for r in rows if r.get("spill_stores") or r.get("spill_loads")]
    out(f"{len(rows)} kernels compiled for {arch}; {len(spills)} spill registers" if spills else
        f"{len(rows)} kernels compiled for {arch}; none spills registers")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gpulayers",
        description="gpulayers command line: check the kernels against the NumPy reference (selftest), "
                    "show versions and devices (info), report the kernels' resources (kernels), train "
                    "a small model on generated data (demo), or measure every kernel's memory behaviour in "
                    "the simulator's analysis mode (profile --sim).")
    sub = p.add_subparsers(dest="command", required=True, metavar="{selftest,info,kernels,demo,profile}",
                           help="the command to run; python -m gpulayers COMMAND --help describes it")
    st = sub.add_parser("selftest", help="run every layer's kernels against the NumPy reference",
                        description="Runs every layer, dtype and layout through its kernels (on the GPU, or on "
                                    "the CPU kernel simulator without one) and compares forward and backward "
                                    "with the NumPy reference. Exits 1 on any mismatch.")
    st.add_argument("--seed", type=int, default=0,
                    help="seed of the random inputs and output gradients (default 0)")
    sub.add_parser("info", help="versions, GPU, kernel cache folder",
                   description="Prints the versions of gpulayers, Python, NumPy, CuPy and NVRTC, the GPUs, "
                               "and the folders of the kernel sources and of the simulator's cache.")
    kr = sub.add_parser("kernels", help="registers, shared memory, stack and spills per kernel (NVRTC, no GPU needed)",
                        description="Compiles every kernel for every dtype with NVRTC (no GPU needed) and "
                                    "prints registers, shared memory, stack frame and register spills.")
    kr.add_argument("--arch", default="sm_90",
                    help="target architecture: sm_XY or compute_XY, e.g. sm_80 or sm_90 (default sm_90)")
    dm = sub.add_parser("demo", help="train a small model on generated data: images, autoencoder or sequence",
                        description="Trains a small model on generated data and writes its loss curve and a "
                                    "summary.")
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
    return p


def _main(argv) -> int:
    args = parser().parse_args(argv)
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


def main(argv=None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # the reader went away (python -m gpulayers selftest | head): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return 1


if __name__ == "__main__":
    sys.exit(main())
