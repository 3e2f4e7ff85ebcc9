"""Where the kernel sources and the compiled-kernel cache live (shared by kernels and simulator)."""
from __future__ import annotations

import os
from pathlib import Path


def cuda_dir() -> Path:
    """Folder of the .cu/.cuh sources: inside the installed package, else the checkout's cuda/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "cuda", here.parent / "cuda"):
        if (candidate / "common.cuh").is_file():
            return candidate
    raise FileNotFoundError("gpulayers: the cuda/ kernel sources were not found next to the package")


def cache_folder() -> Path:
    """Where the simulator keeps compiled kernel libraries (CuPy keeps its own cache)."""
    root = os.environ.get("GPULAYERS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gpulayers")
    return Path(root)
