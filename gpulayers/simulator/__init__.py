"""CPU kernel simulator: runs the unchanged CUDA sources in ``cuda/`` on the CPU.

:func:`load` compiles one ``.cu`` file with the host C++ compiler, together with
``include/cuda_sim.h`` (CUDA's built-ins for the host) and ``include/sim_runtime.h``
(fibers, barriers, warp collectives, guarded global memory), and a generated launcher per
name expression. Libraries are cached on disk, keyed by every source, the compiler and
the flags. :mod:`gpulayers.kernels` launches through this module; :mod:`.analysis` builds the
same sources with every memory access instrumented (``analyze``, ``recording``, ``checking``).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from .. import paths

INCLUDE = Path(__file__).resolve().parent / "include"
CXXFLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-fno-strict-aliasing",
            "-U_FORTIFY_SOURCE", "-D_FORTIFY_SOURCE=0", "-w")
# The analysis build: every load and store calls a hook (sim_analysis.h); -O1 keeps the
# instructions close to the source, -g maps them back to lines. Compiled with -c, then linked
# without libtsan: the hooks are the whole sanitizer runtime.
ANALYSIS_CXXFLAGS = ("-std=c++17", "-O1", "-g", "-fPIC", "-fsanitize=thread", "-DGLSIM_ANALYSIS",
                     "-fno-strict-aliasing", "-U_FORTIFY_SOURCE", "-D_FORTIFY_SOURCE=0", "-w")
DYNAMIC_SHARED_BYTES = 48 * 1024
_EXTERN_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s*)?([A-Za-z_][\w:\s]*?)\s+(\w+)\s*\[\s*\]")
_CTYPES = {
    np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
    np.dtype(np.uint32): ctypes.c_uint32, np.dtype(np.uint64): ctypes.c_uint64,
    np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double,
}
_launch_lock = threading.Lock()
_libraries: dict[str, "SimModule"] = {}
_guard = threading.local()


@contextlib.contextmanager
def guard_at_start():
    """Inside this block, arrays sit flush after the leading guard page: reads and writes before
    an array's start fault (by default they sit flush against the trailing one, so that
    accesses past the end fault). Running a kernel both ways checks both edges."""
    previous = getattr(_guard, "at_start", False)
    _guard.at_start = True
    try:
        yield
    finally:
        _guard.at_start = previous


class KernelError(RuntimeError):
    """A simulated kernel did something that is wrong on a GPU (the message says what)."""


class CompileError(RuntimeError):
    """The host compiler rejected a kernel source (the message holds its output)."""


def compiler() -> str:
    for candidate in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if candidate and shutil.which(candidate):
            return candidate
    raise RuntimeError("gpulayers simulator: no C++ compiler found (install g++ or set CXX)")


@functools.lru_cache(maxsize=None)
def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    except Exception:
        return cxx


def translation_unit(cu_path: Path, names: list[str]) -> str:
    """C++ source of a simulator library: the runtime, the .cu file, one launcher per name."""
    text = cu_path.read_text()
    lines = ['#include "sim_runtime.h"', f'#include "{cu_path}"', ""]
    seen = set()
    for ctype, name in _EXTERN_SHARED.findall(text):
        if name not in seen:
            seen.add(name)
            ctype = " ".join(ctype.split())
            lines.append(f"alignas(16) thread_local {ctype} {name}"
                         f"[{DYNAMIC_SHARED_BYTES} / sizeof({ctype})];")
    shared = [name for _, name in _EXTERN_SHARED.findall(text)]
    lines += ['extern "C" GLSIM_RT int glsim_dynamic_shared(void** glsim_out, int glsim_max) {',
              "  int glsim_n = 0;"] + [f"  if (glsim_n < glsim_max) glsim_out[glsim_n++] = (void*){name};"
                                     for name in dict.fromkeys(shared)] + ["  return glsim_n;", "}"]
    # parameter names that no kernel shadows (a kernel may well be called k or args)
    lines += ['extern "C" GLSIM_RT int glsim_launch(int glsim_k, int glsim_nargs, const unsigned* glsim_grid,',
              "    const unsigned* glsim_block, unsigned long long glsim_shared, void** glsim_args,",
              "    const unsigned long long* glsim_sizes, int glsim_narrays, const int* glsim_index,",
              "    const unsigned long long* glsim_nbytes, int glsim_at_start, char* glsim_err, int glsim_errlen) {",
              "  switch (glsim_k) {"]
    for i, name in enumerate(names):
        lines.append(f"    case {i}: return glsim::launch_kernel(&{name}, glsim_nargs, glsim_grid, glsim_block, "
                     "glsim_shared, glsim_args, glsim_sizes, glsim_narrays, glsim_index, glsim_nbytes, "
                     "glsim_at_start, glsim_err, glsim_errlen);")
    lines += ['    default: std::snprintf(glsim_err, glsim_errlen, "no kernel %d", glsim_k); return 1;', "  }", "}", ""]
    return "\n".join(lines)


def build(cu_path: Path, names: list[str], cache: Path, analysis: bool = False) -> Path:
    """Compile (or find in the cache) the simulator library for ``cu_path``'s kernels."""
    return build_source(translation_unit(cu_path, names), cu_path.stem, cache,
                        extra=sorted(cu_path.parent.glob("*.cuh")) + [cu_path], include=cu_path.parent,
                        analysis=analysis)


def build_source(tu: str, stem: str, cache: Path, extra=(), include=None, analysis: bool = False) -> Path:
    """Compile C++ source ``tu`` into a cached shared library (keyed by every input).

    ``analysis``: the instrumented build of :mod:`.analysis` (compiled, then linked without
    the sanitizer runtime)."""
    cxx = compiler()
    flags = ANALYSIS_CXXFLAGS if analysis else CXXFLAGS
    h = hashlib.sha256(tu.encode())
    for path in sorted(INCLUDE.glob("*")) + list(extra):
        h.update(path.name.encode() + path.read_bytes())
    h.update(_compiler_version(cxx).encode() + " ".join(flags).encode())
    lib = cache / "sim" / f"{stem}{'-analysis' if analysis else ''}-{h.hexdigest()[:20]}.so"
    if lib.is_file():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with paths.file_lock(lib.with_suffix(".lock")):  # processes building the same library: one compiles
        if not lib.is_file():
            _compile(cxx, flags, tu, stem, lib, include, analysis)
    return lib


def _compile(cxx, flags, tu: str, stem: str, lib: Path, include, analysis: bool) -> None:
    """Compile ``tu`` into ``lib`` (written atomically: a temporary folder, then os.replace)."""
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        src = Path(tmp) / f"{stem}_sim.cpp"
        src.write_text(tu)
        out = Path(tmp) / lib.name
        includes = [f"-I{INCLUDE}"] + ([f"-I{include}"] if include else [])
        if analysis:
            obj = Path(tmp) / f"{stem}.o"
            steps = [[cxx, *flags, *includes, "-c", str(src), "-o", str(obj)],
                     [cxx, "-shared", str(obj), "-o", str(out), "-ldl"]]
        else:
            steps = [[cxx, *flags, *includes, str(src), "-o", str(out)]]
        for cmd in steps:
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise CompileError(f"gpulayers simulator: compiling {stem} failed:\n{proc.stderr[-8000:]}")
        os.replace(out, lib)


class SimModule:
    """A compiled simulator library; ``launch`` has the shape of a CuPy kernel call."""

    def __init__(self, path: Path, names: list[str], source: str = ""):
        self.path = path
        self.source = source or path.stem
        self.index = {name: i for i, name in enumerate(names)}
        self._lib = ctypes.CDLL(str(path))
        self._launch = self._lib.glsim_launch
        self._launch.restype = ctypes.c_int

    def launch(self, name, grid, block, args, shared_mem=0):
        """Run kernel ``name`` on the simulator; the NumPy arrays in ``args`` hold the results."""
        if name not in self.index:
            raise KernelError(f"kernel {name}: not declared for {self.source}")
        grid = (tuple(grid) + (1, 1))[:3]
        block = (tuple(block) + (1, 1))[:3]
        keep = []  # ctypes objects that must outlive the call
        argv = (ctypes.c_void_p * max(len(args), 1))()
        arg_index, nbytes, sizes = [], [], []
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray):
                if not a.flags.c_contiguous:
                    raise KernelError(f"kernel {name} ({self.source}): argument {i} is not C-contiguous")
                value = ctypes.c_void_p(a.ctypes.data)
                arg_index.append(i)
                nbytes.append(a.nbytes)
                sizes.append(0)
            elif isinstance(a, np.generic) and a.dtype in _CTYPES:
                value = _CTYPES[a.dtype](a.item())
                sizes.append(a.dtype.itemsize)
            else:
                raise KernelError(f"kernel {name} ({self.source}): argument {i} ({type(a).__name__}) is "
                                  f"neither a NumPy array nor a NumPy scalar of an exact C type")
            keep.append(value)
            argv[i] = ctypes.addressof(value)
        err = ctypes.create_string_buffer(1024)
        with _launch_lock:
            rc = self._launch(
                ctypes.c_int(self.index[name]), ctypes.c_int(len(args)),
                (ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), ctypes.c_ulonglong(shared_mem),
                argv, (ctypes.c_ulonglong * max(len(sizes), 1))(*sizes),
                ctypes.c_int(len(arg_index)), (ctypes.c_int * max(len(arg_index), 1))(*arg_index),
                (ctypes.c_ulonglong * max(len(nbytes), 1))(*nbytes),
                ctypes.c_int(int(getattr(_guard, "at_start", False))), err, ctypes.c_int(len(err)))
            if rc == 0:
                return self._after_launch(name, grid, block)
        raise KernelError(f"kernel {name} ({self.source}): {err.value.decode(errors='replace')}")

    def _after_launch(self, name, grid, block):
        return None


def load(source: str, names: list[str], folder: Path | None = None) -> SimModule:
    """The simulator module for ``cuda/<source>`` (or ``folder/<source>``) with these kernels."""
    cu_path = (folder or paths.cuda_dir()) / source
    lib = build(cu_path, list(names), paths.cache_folder())
    key = f"{lib}"
    module = _libraries.get(key)
    if module is None:
        module = _libraries[key] = SimModule(lib, list(names), source)
    return module


def analyze(path, kernel, grid, block, args, shared_mem=0):
    """Run one kernel of any ``.cu`` file in analysis mode: see :func:`.analysis.analyze`."""
    from .analysis import analyze as _analyze

    return _analyze(path, kernel, grid, block, args, shared_mem)
