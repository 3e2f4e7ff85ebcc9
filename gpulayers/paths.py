"""Where the kernel sources and the compiled-kernel cache live (shared by kernels and simulator)."""
from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock on the file ``path`` (created if missing) held by one process at a time
    on this machine: processes filling one cache entry wait for the first one. Where no lock can
    be had (no fcntl, a folder that cannot be written, a filesystem without flock) the block runs
    unlocked: cache entries are written atomically, so at worst one is built twice."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    try:
        handle = open(path, "a")
    except OSError:
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
