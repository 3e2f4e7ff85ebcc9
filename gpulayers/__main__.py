"""Command line: ``python -m gpulayers selftest`` and ``python -m gpulayers info``."""
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpulayers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("selftest", help="run every layer's kernels against the NumPy reference")
    st.add_argument("--seed", type=int, default=0)
    sub.add_parser("info", help="versions, GPU, kernel cache folder")
    args = parser.parse_args(argv)
    if args.command == "info":
        return info()
    from . import selftest

    return 1 if selftest.run(seed=args.seed) else 0


if __name__ == "__main__":
    sys.exit(main())
