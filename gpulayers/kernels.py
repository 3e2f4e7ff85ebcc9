"""The one place that imports CuPy, reads ``cuda/``, compiles, caches and launches kernels.

Two launchers run the same ``.cu`` sources: CuPy's ``RawModule`` on a GPU, and the
project's CPU kernel simulator (:mod:`gpulayers.simulator`) inside ``with simulate():``.
Layer code calls :func:`kernel_path` to learn which array module to use and whether to
take the kernel path, and :func:`launch` to run a kernel; it never branches on which
launcher runs it.
"""
from __future__ import annotations

import ast
import contextlib
import enum
import functools
import hashlib
import os
import re
import threading
from pathlib import Path

import numpy as np

from .paths import cache_folder, cuda_dir  # noqa: F401  (re-exported)

try:  # CuPy is optional: without it the NumPy path (and the simulator) still work.
    import cupy as _cupy
except Exception:  # pragma: no cover - depends on the machine
    _cupy = None

try:  # NVTX ranges are optional too (the `nvtx` package may be missing).
    import nvtx as _nvtx
except Exception:  # pragma: no cover - depends on the machine
    _nvtx = None

DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))
CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double", np.dtype(np.float16): "__half"}
NVRTC_OPTIONS = ("-std=c++17",)

_KERNELS: dict[str, tuple[str, ...]] = {}  # source file -> name-expression templates ({T} = dtype)
_modules: dict[tuple, object] = {}  # (source, source hash, dtype, device) -> compiled module
_functions: dict[tuple, object] = {}  # (id of a module in _modules, name) -> CuPy kernel function
_lock = threading.Lock()
_state = threading.local()
# (source, source hash, dtype, name expressions, NVRTC options with the arch) -> nvrtc_compile's
# result: each compile happens once per process (the tests and `kernels` compile the same programs).
_nvrtc_results: dict[tuple, dict] = {}


def declare(source: str, templates) -> None:
    """Register the kernels of ``cuda/<source>`` as name-expression templates with ``{T}``.

    Layer code declares through :class:`Kernel` handles instead; this is the low-level form
    (the whole list of a source at once) for sources outside the package's own families."""
    _KERNELS[source] = tuple(templates)


class Kernel:
    """One kernel template of ``cuda/<source>``: declared once, launched through the handle.

    The name and the template parameters after ``T`` (the dtype's C type) are written here
    only, in the kernel's order, each as the set of values the package launches:

    - ``bool``: ``true``/``false`` (a Python or NumPy bool);
    - a tuple of ints;
    - an enum read from the source with :func:`cuda_enum` (spelled ``Enum::member``; only
      members of that enum are taken, never their integer values);
    - a dict {Python value: C++ spelling} (``{T}`` in a spelling is the dtype's C type).

    ``where`` (keyword arguments as the launch takes them -> bool) keeps only the
    combinations that exist: ``Kernel("upsampling.cu", "upsample_nearest_forward",
    channels_last=bool, vec=(1, 2, 4, 8), where=lambda channels_last, vec: channels_last or
    vec == 1)``. ``Kernel("pooling.cu", "pool_forward_rows", is_max=bool)`` declares
    ``pool_forward_rows<T, false>`` and ``pool_forward_rows<T, true>`` for every dtype, and
    ``handle.launch(dtype, grid, block, args, is_max=True)`` runs the second. A value outside the
    declared set, a combination ``where`` excludes, or a missing or unknown parameter raises
    before anything is compiled.
    """

    def __init__(self, source: str, name: str, where=None, **params):
        self.source, self.name, self._where = source, name, where
        self._spellings = {key: _spellings(source, name, key, values) for key, values in params.items()}
        self._kinds = {key: values for key, values in params.items()}
        combos = [{}]
        for key, spelled in self._spellings.items():
            combos = [{**c, key: v} for c in combos for v in spelled]
        self.templates = tuple(self._spell(c) for c in combos if where is None or where(**c))
        _KERNELS[source] = tuple(dict.fromkeys(_KERNELS.get(source, ()) + self.templates))

    def _spell(self, values) -> str:
        parts = "".join(", " + self._spellings[key][value] for key, value in values.items())
        return f"{self.name}<{{T}}{parts}>"

    def template(self, **values) -> str:
        """The name-expression template (with ``{T}``) for these template-parameter values."""
        if values.keys() != self._spellings.keys():
            raise TypeError(f"gpulayers internal: {self.name} takes the template parameters "
                            f"{list(self._spellings)}; got {sorted(values)}")
        checked = {}
        for key, spelled in self._spellings.items():
            value = _declared_value(self._kinds[key], values[key])
            if value is None or value not in spelled:
                raise ValueError(f"gpulayers internal: {self.name} is not declared with {key}={values[key]!r} "
                                 f"(declared: {list(spelled)})")
            checked[key] = value
        if self._where is not None and not self._where(**checked):
            raise ValueError(f"gpulayers internal: {self.name} is not declared for {checked} (excluded by where)")
        return self._spell(checked)

    def launch(self, dtype, grid, block, args, shared_mem: int = 0, **values) -> None:
        """Run the instance for ``dtype`` and ``values`` (see :func:`launch` for ``args``)."""
        launch(self.source, self.template(**values), dtype, grid, block, args, shared_mem)

    def __repr__(self):
        return f"Kernel({self.source!r}, {self.name!r}, {', '.join(self._spellings)})"


def _spellings(source, name, key, values) -> dict:
    """{Python value: C++ spelling} of one template parameter's declared values."""
    if values is bool:
        return {False: "false", True: "true"}
    if isinstance(values, type) and issubclass(values, enum.Enum):
        return {member: f"{values.__name__}::{member.name}" for member in values}
    if isinstance(values, dict):
        return dict(values)
    if isinstance(values, tuple) and values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return {v: str(v) for v in values}
    raise TypeError(f"gpulayers internal: template parameter {key} of {name} ({source}) must be bool, a tuple "
                    f"of ints, an enum from cuda_enum or a dict of spellings; got {values!r}")


def _declared_value(kind, value):
    """``value`` as a key of the parameter's spellings, or None when it has the wrong type (an
    int for a bool or an enum member, a bool for an int): equal hashes must not stand in."""
    if kind is bool:
        return bool(value) if isinstance(value, (bool, np.bool_)) else None
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return value if isinstance(value, kind) else None
    if isinstance(kind, tuple):
        return int(value) if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) else None
    return value


_ENUM = re.compile(r"\benum\s+class\s+(\w+)\s*(?::\s*[\w\s]+?)?\{([^}]*)\}")


@functools.lru_cache(maxsize=None)
def cuda_enum(source: str, name: str) -> type[enum.IntEnum]:
    """The ``enum class name`` of ``cuda/<source>`` as a Python IntEnum (same names, same values).

    Lets Python pass codes by name: a template argument ``Enum::member`` (through
    :class:`Kernel`) or a runtime ``int`` argument ``np.int32(member)``, the value read from the
    source itself rather than matched by position. The enum must be defined once in the file,
    at namespace scope; enumerators are plain identifiers with optional integer initialisers;
    comments in the body are ignored."""
    text = _uncommented(_read_source(source)[0])
    bodies = [body for enum_name, body in _ENUM.findall(text) if enum_name == name]
    if not bodies:
        raise LookupError(f"gpulayers: cuda/{source} defines no `enum class {name}`")
    if len(bodies) > 1:
        raise LookupError(f"gpulayers: cuda/{source} defines `enum class {name}` {len(bodies)} times")
    members, value = {}, 0
    for item in filter(None, (part.strip() for part in bodies[0].split(","))):
        member, _, init = (s.strip() for s in item.partition("="))
        value = int(init, 0) if init else value
        members[member] = value
        value += 1
    return enum.IntEnum(name, members)


def _uncommented(text: str) -> str:
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)


_CONSTEXPR = re.compile(r"\bconstexpr\s+int\s+([^;{}]*);")


@functools.lru_cache(maxsize=None)
def cuda_constant(source: str, name: str) -> int:
    """The value of ``constexpr int name = ...;`` in ``cuda/<source>`` (or ``cuda/common.cuh``
    when the source does not declare it).

    Launch configurations read the block sizes and tile sizes a kernel assumes from here, so
    the two cannot drift apart. The initialiser may use integer literals, earlier constants
    of the same file, unary minus, parentheses and ``+ - * /`` (C++'s truncating division); a
    declaration may list several, comma-separated. A name declared twice in a file, or
    declared with an initialiser outside that grammar, raises LookupError."""
    for file in (source, "common.cuh"):
        values: dict[str, int] = {}
        unreadable: set[str] = set()
        for declaration in _CONSTEXPR.findall(_uncommented(cuda_dir().joinpath(file).read_text())):
            for item in declaration.split(","):
                key, _, init = (part.strip() for part in item.partition("="))
                if not re.fullmatch(r"\w+", key) or not init:
                    continue
                if key in values or key in unreadable:
                    if key == name:
                        raise LookupError(f"gpulayers: cuda/{file} declares `constexpr int {name}` more than once")
                    continue
                try:
                    values[key] = _integer_expression(ast.parse(init, mode="eval").body, values)
                except (SyntaxError, ValueError):
                    unreadable.add(key)  # a template, a cast, a shift: not a constant read here
        if name in unreadable:
            raise LookupError(f"gpulayers: cuda/{file} declares `constexpr int {name}` with an initialiser "
                              f"gpulayers cannot read (integers, + - * / and earlier constants only)")
        if name in values:
            return values[name]
    raise LookupError(f"gpulayers: cuda/{source} defines no `constexpr int {name}` with an integer value")


def _integer_expression(node, names) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _integer_expression(node.operand, names)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        a, b = _integer_expression(node.left, names), _integer_expression(node.right, names)
        if isinstance(node.op, ast.Div):
            if b == 0:
                raise ValueError("division by zero")
            quotient = abs(a) // abs(b)  # C++ truncates toward zero
            return quotient if (a < 0) == (b < 0) else -quotient
        return a + b if isinstance(node.op, ast.Add) else (a - b if isinstance(node.op, ast.Sub) else a * b)
    raise ValueError("not an integer expression")


def declared() -> dict[str, tuple[str, ...]]:
    """Every kernel family: source file -> name-expression templates."""
    return dict(_KERNELS)


def name_expressions(source: str, dtype) -> list[str]:
    ctype = CTYPES[np.dtype(dtype)]
    return [t.format(T=ctype) for t in _KERNELS[source]]


@functools.lru_cache(maxsize=None)
def _read_source(source: str) -> tuple[str, str]:
    """(text with a #line directive, hash of the file and every header in cuda/)."""
    folder = cuda_dir()
    text = (folder / source).read_text()
    digest = hashlib.sha256(text.encode())
    for header in sorted(folder.glob("*.cuh")):
        digest.update(header.name.encode() + header.read_bytes())
    return f'#line 1 "cuda/{source}"\n' + text, digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- devices

def cupy_module():
    """The cupy module, or None when CuPy is not installed."""
    return _cupy


@functools.lru_cache(maxsize=1)
def gpu_count() -> int:
    if _cupy is None:
        return 0
    try:
        return int(_cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def gpu_available() -> bool:
    return gpu_count() > 0


def is_gpu_array(x) -> bool:
    return _cupy is not None and isinstance(x, _cupy.ndarray)


def simulating() -> bool:
    return getattr(_state, "simulate", False)


@contextlib.contextmanager
def simulate():
    """Inside this block NumPy inputs take the kernel path, run by the CPU kernel simulator.

    The setting is per thread: it holds for layer calls made by the thread that entered the
    block, not for threads started inside it (enter ``simulate()`` in each such thread).
    A ``backward`` runs on the path of the call it differentiates, inside the block or not.
    """
    previous = simulating()
    _state.simulate = True
    try:
        yield
    finally:
        _state.simulate = previous


def kernel_path(x):
    """(array module, True if the kernels run) for an input array."""
    if is_gpu_array(x):
        return _cupy, True
    return np, simulating()


def array_module(x):
    return _cupy if is_gpu_array(x) else np


# ----------------------------------------------------------------------------- compiling

def nvrtc_include_dirs() -> list[str]:
    """Folders that hold cuda_fp16.h: CUDA_PATH, /usr/local/cuda, or the nvidia pip wheels."""
    dirs = []
    for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_fp16.h").is_file():
            dirs.append(str(Path(root) / "include"))
    try:
        import nvidia  # namespace package of the CUDA wheels

        for base in nvidia.__path__:
            for header in sorted(Path(base).glob("*/include/cuda_fp16.h")):
                dirs.append(str(header.parent))
    except Exception:
        pass
    return list(dict.fromkeys(dirs))


def _compile_options() -> tuple[str, ...]:
    includes = [f"-I{cuda_dir()}"] + [f"-I{d}" for d in nvrtc_include_dirs()[:1]]
    return NVRTC_OPTIONS + tuple(includes)


def nvrtc_compile(source: str, dtype, arch: str = "sm_90", extra_options=()) -> dict:
    """Compile every kernel of ``source`` for ``dtype`` with NVRTC (no GPU needed).

    Returns {"cubin": bytes, "log": str, "lowered": {name expression: mangled name}}.
    Raises RuntimeError with NVRTC's log when compilation fails. Results are kept for the
    process and on disk (``cache_folder()/nvrtc``, with NVRTC's version and headers in the key), keyed by
    source, source hash (the file and cuda/*.cuh), dtype, name expressions and options (with the
    arch), so a repeated call does not compile again; failures are not kept.
    """
    if _cupy is None:
        raise RuntimeError("gpulayers: NVRTC compilation needs CuPy (pip install gpulayers[cuda13])")
    from cupy.cuda import nvrtc

    text, digest = _read_source(source)
    names = name_expressions(source, dtype)
    options = list(_compile_options()) + [f"--gpu-architecture={arch}"] + list(extra_options)
    key = (source, digest, np.dtype(dtype).str, tuple(names), tuple(options))
    if key not in _nvrtc_results:
        _nvrtc_results[key] = _nvrtc_cached(
            key, lambda: _nvrtc_run(nvrtc, text, source, dtype, arch, names, options))
    result = _nvrtc_results[key]
    return dict(result, lowered=dict(result["lowered"]))  # a copy: callers may edit it


_NVRTC_CACHE_FORMAT = 2  # bump when what an entry holds changes


@functools.lru_cache(maxsize=1)
def _nvrtc_toolchain() -> str:
    """What a compiled result depends on besides the program: NVRTC's version (the wheel's full
    version where it is installed as one) and the contents of the CUDA headers it includes."""
    from cupy.cuda import nvrtc

    parts = [repr(nvrtc.getVersion())]
    try:
        import importlib.metadata

        parts.append(importlib.metadata.version("nvidia-cuda-nvrtc"))
    except Exception:
        pass
    digest = hashlib.sha256()
    for folder in nvrtc_include_dirs()[:1]:
        for header in sorted(Path(folder).glob("cuda_fp16.h*")) + sorted(Path(folder).glob("cuda_bf16.h*")):
            digest.update(header.name.encode() + header.read_bytes())
    parts.append(digest.hexdigest())
    return "|".join(parts)


def _nvrtc_cached(key: tuple, compile_) -> dict:
    """``compile_()``'s result, kept in ``cache_folder()/nvrtc`` under a hash of ``key``, the
    toolchain (:func:`_nvrtc_toolchain`) and the entry format: written atomically, one process
    compiling while others wait (a lock per entry). An entry that cannot be read or does not
    have the expected fields is compiled again; where the folder cannot be written, the result
    is only returned."""
    import base64
    import json
    import tempfile

    from . import paths

    digest = hashlib.sha256(repr((key, _nvrtc_toolchain(), _NVRTC_CACHE_FORMAT)).encode()).hexdigest()[:24]
    path = cache_folder() / "nvrtc" / f"{Path(key[0]).stem}-{digest}.json"

    def read():
        try:
            kept = json.loads(path.read_text())
            cubin = base64.b64decode(kept["cubin"], validate=True)
            if (hashlib.sha256(cubin).hexdigest() != kept["cubin_sha256"] or not isinstance(kept["log"], str)
                    or not isinstance(kept["lowered"], dict)):
                return None
            return {"cubin": cubin, "log": kept["log"], "lowered": dict(kept["lowered"])}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    result = read()
    if result is not None:
        return result
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return compile_()  # no cache folder to be had: compile, keep nothing
    with paths.file_lock(path.with_suffix(".lock")):
        result = read()
        if result is None:
            result = compile_()
            entry = dict(result, cubin=base64.b64encode(result["cubin"]).decode(),
                         cubin_sha256=hashlib.sha256(result["cubin"]).hexdigest())
            try:
                with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                    (Path(tmp) / path.name).write_text(json.dumps(entry))
                    os.replace(Path(tmp) / path.name, path)
            except OSError:
                pass  # a folder that cannot be written: the result is still good
    return result


def _nvrtc_run(nvrtc, text, source, dtype, arch, names, options) -> dict:
    """One NVRTC compilation of ``text`` (nvrtc_compile's uncached body)."""
    prog = nvrtc.createProgram(text, source, [], [])
    try:
        for name in names:
            nvrtc.addNameExpression(prog, name)
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as e:
            raise RuntimeError(f"NVRTC failed on cuda/{source} ({dtype}, {arch}):\n"
                               f"{nvrtc.getProgramLog(prog)}") from e
        return {
            "cubin": nvrtc.getCUBIN(prog) if arch.startswith("sm_") else nvrtc.getPTX(prog),
            "log": nvrtc.getProgramLog(prog),
            "lowered": {n: nvrtc.getLoweredName(prog, n) for n in names},
        }
    finally:
        nvrtc.destroyProgram(prog)


_PTXAS_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:, (\d+) bytes smem)?")


def resource_report(arch: str = "sm_90") -> list[dict]:
    """Registers, shared memory, stack frame and spills of every kernel and dtype (ptxas -v)."""
    rows = []
    for source in sorted(_KERNELS):
        for dtype in DTYPES:
            result = nvrtc_compile(source, dtype, arch, ["--ptxas-options=-v"])
            by_mangled = {m: n for n, m in result["lowered"].items()}
            current = None
            for line in result["log"].splitlines():
                m = _PTXAS_ENTRY.search(line)
                if m:
                    current = {"source": source, "dtype": np.dtype(dtype).name, "arch": arch,
                               "kernel": by_mangled.get(m.group(1), m.group(1))}
                    rows.append(current)
                    continue
                if current is None:
                    continue
                m = _PTXAS_FRAME.search(line)
                if m:
                    current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
                m = _PTXAS_USED.search(line)
                if m:
                    current.update(registers=int(m.group(1)), barriers=int(m.group(2) or 0),
                                   shared=int(m.group(3) or 0))
    return rows


def _module(source: str, dtype, simulated: bool):
    text, digest = _read_source(source)
    device = "sim" if simulated else _cupy.cuda.runtime.getDevice()
    key = (source, digest, np.dtype(dtype).str, device)
    module = _modules.get(key)
    if module is None:
        with _lock:
            module = _modules.get(key)
            if module is None:
                names = name_expressions(source, dtype)
                if simulated:
                    from . import simulator

                    module = simulator.load(source, names)
                else:
                    module = _cupy.RawModule(code=text, options=_compile_options(),
                                             name_expressions=names)
                _modules[key] = module
    return module


# ----------------------------------------------------------------------------- launching

_SCALARS = (np.int32, np.int64, np.uint32, np.uint64, np.float32, np.float64)


def launch(source: str, template: str, dtype, grid, block, args, shared_mem: int = 0) -> None:
    """Run kernel ``template`` (with {T} = dtype's C type) from ``cuda/<source>``.

    ``args``: arrays of the current array module and NumPy scalars of the exact C type
    (np.int32 for int, np.int64 for long long, ...). Runs on the GPU when the arrays are
    CuPy arrays, else on the simulator.
    """
    for a in args:
        if not (isinstance(a, _SCALARS) or hasattr(a, "__array_interface__")
                or hasattr(a, "__cuda_array_interface__")):
            raise TypeError(f"gpulayers internal: kernel argument {a!r} of {template} must be an "
                            f"array or a NumPy scalar of an exact C type")
    on_gpu = any(is_gpu_array(a) for a in args)
    name = template.format(T=CTYPES[np.dtype(dtype)])
    grid = tuple(int(g) for g in (grid if isinstance(grid, tuple) else (grid,)))
    block = tuple(int(b) for b in (block if isinstance(block, tuple) else (block,)))
    if not on_gpu:
        from .simulator import analysis

        if analysis.wanted():  # inside analysis.recording()/checking(): the instrumented build
            analysis.run(cuda_dir() / source, name_expressions(source, dtype), name, grid, block, args, shared_mem)
            return
    module = _module(source, dtype, simulated=not on_gpu)
    if on_gpu:
        function = _functions.get((id(module), name))
        if function is None:
            function = _functions[(id(module), name)] = module.get_function(name)
        function(grid, block, tuple(args), shared_mem=shared_mem)
    else:
        module.launch(name, grid, block, args, shared_mem)


class _Snippet:
    """A CuPy ElementwiseKernel/ReductionKernel definition, runnable on the GPU or the simulator."""

    def __init__(self, kind: str, args: tuple, kwargs: dict):
        self.kind, self.args, self.kwargs = kind, args, kwargs
        self._gpu = self._sim = None
        self.n_outputs = len([p for p in args[1].split(",") if p.strip()])  # a call returns a tuple when > 1

    def __call__(self, *arrays, **call_kwargs):
        if any(is_gpu_array(a) for a in arrays):
            if self._gpu is None:
                cls = _cupy.ElementwiseKernel if self.kind == "elementwise" else _cupy.ReductionKernel
                self._gpu = cls(*self.args, **self.kwargs)
            return self._gpu(*arrays, **call_kwargs)
        if self._sim is None:
            from .simulator import elementwise

            cls = elementwise.ElementwiseKernel if self.kind == "elementwise" else elementwise.ReductionKernel
            self._sim = cls(*self.args, **self.kwargs)
        out = self._sim(*arrays, **call_kwargs)
        from .simulator import analysis

        records = analysis.active()
        if records is not None:  # CuPy generates these kernels: their traffic is modeled, not simulated
            outs = out if isinstance(out, tuple) else (out,)
            if self.kind == "elementwise":  # (reductions would need their own model; none is used yet)
                records.append(analysis.elementwise_report(self.args[3], arrays, outs, int(outs[0].size)))
        return out


@functools.lru_cache(maxsize=None)
def elementwise_kernel(in_params: str, out_params: str, operation: str, name: str, preamble: str = ""):
    """A ``cupy.ElementwiseKernel`` (same arguments) that also runs on the simulator."""
    return _Snippet("elementwise", (in_params, out_params, operation, name), {"preamble": preamble})


@functools.lru_cache(maxsize=None)
def reduction_kernel(in_params: str, out_params: str, map_expr: str, reduce_expr: str, post_map_expr: str,
                     identity: str, name: str, reduce_type: str | None = None, preamble: str = ""):
    """A ``cupy.ReductionKernel`` (same arguments) that also runs on the simulator."""
    return _Snippet("reduction", (in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, name),
                    {"reduce_type": reduce_type, "preamble": preamble})


def nvtx_range(name: str):
    """An NVTX range (shown on Nsight timelines) when the nvtx package is present."""
    if _nvtx is None:
        return contextlib.nullcontext()
    return _nvtx.annotate(name, domain="gpulayers")


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def grid_1d(total: int, block: int = 256) -> int:
    """Blocks for a grid-stride loop over ``total`` items (at most 2^31 - 1 blocks)."""
    return max(1, min(ceil_div(total, block), 2**31 - 1))

