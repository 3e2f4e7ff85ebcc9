"""Analysis mode of the CPU kernel simulator: what a kernel does to GPU memory, without a GPU.

The same ``.cu`` source is compiled a second way: with ``g++ -fsanitize=thread``, linked
without the sanitizer's runtime, so that every load and store of the kernel calls a hook of ours
(``include/sim_analysis.h``). The hook knows the address, the size, read or write, and the
instruction (its return address). The simulated thread then waits until its warp issues that
instruction: in each warp, the lanes waiting at the lowest instruction address issue it together
(one *request*) while the others are inactive. Lanes thus advance in lockstep, and a loop whose
trip count differs between lanes runs its extra iterations with the other lanes inactive.

Per launch (Nsight Compute's definitions: a request is one warp-level instruction, a sector an
aligned 32-byte chunk) a :class:`Report` holds:

- global loads and stores separately: requests, sectors, ideal sectors (the fewest sectors that
  could hold the bytes the active lanes asked for);
- modeled DRAM traffic: distinct sectors read and written over the launch, each counted once,
  as a perfect L2 cache would;
- shared memory: requests, wavefronts (32 banks of 4 bytes; lanes reading one 32-bit word are
  a broadcast; 8-byte accesses are served per half-warp, 16-byte ones per quarter-warp) and
  the ideal wavefronts, whose ratio is the bank-conflict factor;
- hazards (:class:`Hazard`): shared-memory RAW/WAR/WAW between two threads of a block with no
  ``__syncthreads()`` between them (lanes of one warp are ordered only by a warp collective or
  ``__syncwarp()`` they both took part in, never implicitly: shuffles and votes order no
  memory); reads of shared memory nothing in the block wrote; the same for global memory
  between threads of different blocks (never ordered within a launch) or of one block without
  a barrier: RAW, WAR, WAW. Atomics race only with plain accesses, not with each other. A
  dynamic shared memory access past the bytes the launch gave, or a global one outside its
  array, fails the launch.

Limits of the model: one warp instruction per access the host compiler emits at -O1 (close to,
not the same as, what NVCC emits: a value kept in a register is no access at all, and a struct
may be copied field by field where NVCC would use one vector access); lowest-address-first is
the reconvergence order of structured code as the host compiler lays it out, which holds for
loops with per-lane trip counts and for branches around code without memory accesses, but not
always for a branch around an access inside a loop: lanes that skip a conditional access run on
to the next iteration's accesses, so the loop's requests split (more requests and sectors than
a GPU issues), or, for a skipped access that the next iteration reaches again (a ``continue``
before it), may be grouped with the lanes still in the previous iteration; caches are perfect (DRAM bytes are the minimum any cache
could achieve for that access set; a sector the launch wrote is not read from DRAM again) and
L1 is not modeled; blocks still run one after another, so inter-block races are found from the
addresses, not observed; shared memory is filled with 0xFF bytes at each block start. Arrays
start page-aligned, as device allocations are (256 bytes or more). Accesses through library
calls (``memcpy``) are not seen.

Entry points: :func:`analyze` for any kernel in any ``.cu`` file; :func:`recording` to collect
a report for every kernel that gpulayers launches on the simulator (``python -m gpulayers
profile --sim``); :func:`checking` to make every simulated launch fail on a hazard (the test
suite runs its kernel tests once more this way).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import CompileError, KernelError, SimModule, _libraries, build
from .. import paths

KINDS = ("RAW", "WAR", "WAW", "uninitialized")
SPACES = ("global", "shared")
MAX_HAZARDS = 256


class _HazardOut(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int), ("space", ctypes.c_int), ("pc1", ctypes.c_ulonglong),
                ("pc2", ctypes.c_ulonglong), ("block1", ctypes.c_uint * 3), ("thread1", ctypes.c_uint * 3),
                ("block2", ctypes.c_uint * 3), ("thread2", ctypes.c_uint * 3), ("arg", ctypes.c_int),
                ("offset", ctypes.c_longlong), ("count", ctypes.c_ulonglong)]


_COUNTERS = ("load_requests", "load_sectors", "load_ideal_sectors", "store_requests", "store_sectors",
             "store_ideal_sectors", "atomic_requests", "atomic_sectors", "dram_read_bytes", "dram_write_bytes",
             "shared_requests", "shared_wavefronts", "shared_ideal_wavefronts", "hazard_count")


class _ReportOut(ctypes.Structure):
    _fields_ = [(name, ctypes.c_ulonglong) for name in _COUNTERS] + [
        ("shared_bytes", ctypes.c_ulonglong), ("hazards_stored", ctypes.c_int), ("global_hazards_checked", ctypes.c_int)]


@dataclass
class Hazard:
    """A race or an uninitialised read found in one launch (``str()`` says it in words)."""
    kind: str  # "RAW", "WAR", "WAW" or "uninitialized"
    space: str  # "shared" or "global"
    kernel: str
    first_line: str | None  # cuda/<file>:<line> of the earlier access (None for "uninitialized")
    second_line: str
    first_thread: tuple | None  # (x, y, z) thread and block of the earlier access
    first_block: tuple | None
    second_thread: tuple = ()
    second_block: tuple = ()
    address: str = ""  # "argument 2, byte 128" or "shared tile[+12]"
    count: int = 1  # occurrences with the same kind, space and instructions

    def __str__(self):
        where = f"{self.space} memory ({self.address})"
        second = f"thread {self.second_thread} of block {self.second_block} at {self.second_line}"
        if self.kind == "uninitialized":
            text = f"uninitialized read of {where} in {self.kernel}: {second} reads bytes no thread of its block wrote"
        else:
            first = f"thread {self.first_thread} of block {self.first_block} at {self.first_line}"
            verbs = {"RAW": ("wrote", "reads"), "WAR": ("read", "writes"), "WAW": ("wrote", "writes")}[self.kind]
            if self.space == "shared":
                order = ("with no __syncthreads() between them (and no __syncwarp() or warp collective, "
                         "for lanes of one warp)")
            else:
                order = "in the same launch, unordered (different blocks, or threads of a block without a barrier)"
            text = f"{self.kind} race on {where} in {self.kernel}: {first} {verbs[0]}, {second} {verbs[1]}, {order}"
        return text + (f" [{self.count} occurrences]" if self.count > 1 else "")


@dataclass
class Report:
    """What one launch did to memory (see the module docstring for the definitions)."""
    kernel: str
    grid: tuple
    block: tuple
    load_requests: int = 0
    load_sectors: int = 0
    load_ideal_sectors: int = 0
    store_requests: int = 0
    store_sectors: int = 0
    store_ideal_sectors: int = 0
    atomic_requests: int = 0
    atomic_sectors: int = 0
    dram_read_bytes: int = 0
    dram_write_bytes: int = 0
    shared_requests: int = 0
    shared_wavefronts: int = 0
    shared_ideal_wavefronts: int = 0
    hazard_count: int = 0
    global_hazards_checked: bool = True
    hazards: list = field(default_factory=list)

    @property
    def warps(self) -> int:
        threads = int(np.prod(self.block))
        return int(np.prod(self.grid)) * -(-threads // 32)

    @property
    def dram_bytes(self) -> int:
        return self.dram_read_bytes + self.dram_write_bytes

    @staticmethod
    def _ratio(a, b):
        return a / b if b else 1.0

    @property
    def load_efficiency(self) -> float:
        """Load sectors per request against the ideal: 1.0 is perfectly coalesced."""
        return self._ratio(self.load_sectors, self.load_ideal_sectors)

    @property
    def store_efficiency(self) -> float:
        return self._ratio(self.store_sectors, self.store_ideal_sectors)

    @property
    def bank_conflict_factor(self) -> float:
        return self._ratio(self.shared_wavefronts, self.shared_ideal_wavefronts)

    def merge(self, other: "Report") -> "Report":
        """The sum of two reports (e.g. every launch of one kernel in a layer call)."""
        out = Report(self.kernel, self.grid, self.block)
        for name in _COUNTERS:
            setattr(out, name, getattr(self, name) + getattr(other, name))
        out.global_hazards_checked = self.global_hazards_checked and other.global_hazards_checked
        out.hazards = self.hazards + other.hazards
        return out

    def __str__(self):
        lines = [f"{self.kernel}: grid {self.grid}, block {self.block}",
                 f"  global loads:  {self.load_requests} requests, {self.load_sectors} sectors "
                 f"(ideal {self.load_ideal_sectors}, x{self.load_efficiency:.2f})",
                 f"  global stores: {self.store_requests} requests, {self.store_sectors} sectors "
                 f"(ideal {self.store_ideal_sectors}, x{self.store_efficiency:.2f})",
                 f"  DRAM (modeled): {self.dram_read_bytes} bytes read, {self.dram_write_bytes} bytes written",
                 f"  shared: {self.shared_requests} requests, {self.shared_wavefronts} wavefronts "
                 f"(ideal {self.shared_ideal_wavefronts}, bank conflicts x{self.bank_conflict_factor:.2f})",
                 f"  hazards: {self.hazard_count}"]
        lines += [f"    {h}" for h in self.hazards]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- source lines

def _shown_path(path: str) -> str:
    p = Path(path)
    try:
        return "cuda/" + p.resolve().relative_to(paths.cuda_dir().resolve()).as_posix()
    except (ValueError, OSError):
        pass
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except (ValueError, OSError):
        return f"{p.parent.name}/{p.name}"


@functools.lru_cache(maxsize=None)
def _line_table(lib: str) -> dict:
    return {}


def source_lines(lib: Path, offsets) -> dict:
    """{instruction offset: "cuda/<file>:<line>"} through addr2line (the library has -g)."""
    table = _line_table(str(lib))
    missing = sorted({o for o in offsets if o and o not in table})
    tool = shutil.which("addr2line")
    if missing and tool:
        proc = subprocess.run([tool, "-e", str(lib), *[hex(o - 1) for o in missing]],
                              capture_output=True, text=True)
        for o, line in zip(missing, proc.stdout.splitlines()):
            file, _, number = line.strip().rpartition(":")
            number = number.split()[0] if number else "?"
            table[o] = f"{_shown_path(file)}:{number}" if file and file != "??" else f"<pc +{o:#x}>"
    for o in missing:
        table.setdefault(o, f"<pc +{o:#x}>")
    return {o: table.get(o) for o in offsets}


@functools.lru_cache(maxsize=None)
def _shared_symbols(lib: str) -> list:
    """[(offset, size, name)] of the thread-local (__shared__) variables of a library."""
    tool = shutil.which("readelf")
    if not tool:
        return []
    proc = subprocess.run([tool, "-sW", "-C", lib], capture_output=True, text=True)
    out = []
    for line in proc.stdout.splitlines():
        parts = line.split(None, 7)
        if len(parts) == 8 and parts[3] == "TLS" and parts[6] != "UND":
            try:
                out.append((int(parts[1], 16), int(parts[2], 0), parts[7]))
            except ValueError:
                continue
    return sorted(out)


def _shared_name(lib: Path, offset: int) -> str:
    for start, size, name in _shared_symbols(str(lib)):
        if start <= offset < start + max(size, 1):
            short = re.sub(r"^.*::", "", name.split("(")[0]) if "::" in name else name
            return f"shared {short}[+{offset - start}]"
    return f"shared byte {offset}"


# ----------------------------------------------------------------------------- launcher

class AnalysisModule(SimModule):
    """A simulator library built for analysis: ``launch`` returns a :class:`Report`."""

    def __init__(self, path: Path, names: list[str], source: str = ""):
        super().__init__(path, names, source)
        self._report = self._lib.glsim_analysis_report
        self._report.restype = ctypes.c_int

    def _after_launch(self, name, grid, block):
        out = _ReportOut()
        hazards = (_HazardOut * MAX_HAZARDS)()
        n = self._report(ctypes.byref(out), hazards, ctypes.c_int(MAX_HAZARDS))
        report = Report(name, tuple(grid), tuple(block),
                        **{k: int(getattr(out, k)) for k in _COUNTERS},
                        global_hazards_checked=bool(out.global_hazards_checked))
        lines = source_lines(self.path, [h.pc1 for h in hazards[:n]] + [h.pc2 for h in hazards[:n]])
        for h in hazards[:n]:
            shared = SPACES[h.space] == "shared"
            report.hazards.append(Hazard(
                kind=KINDS[h.kind], space=SPACES[h.space], kernel=name,
                first_line=lines.get(h.pc1) if h.pc1 else None, second_line=lines.get(h.pc2),
                first_thread=tuple(h.thread1) if h.kind != 3 else None,
                first_block=tuple(h.block1) if h.kind != 3 else None,
                second_thread=tuple(h.thread2), second_block=tuple(h.block2),
                address=_shared_name(self.path, h.offset) if shared else f"argument {h.arg}, byte {h.offset}",
                count=int(h.count)))
        return report


_analysis_lock = threading.Lock()


_loaded: dict = {}  # (source path, its text's hash, kernel names) -> AnalysisModule


def load(cu_path: Path, names: list[str]) -> AnalysisModule:
    """The analysis build of ``cu_path`` with these kernels (cached like the normal build; a
    source edited since it was loaded is built again)."""
    cu_path = Path(cu_path)
    key = (str(cu_path), hash(cu_path.read_bytes()), tuple(names))
    module = _loaded.get(key)
    if module is None:
        with _analysis_lock:
            module = _loaded.get(key)
            if module is None:
                lib = build(cu_path, list(names), paths.cache_folder(), analysis=True)
                module = _libraries.get(str(lib)) or AnalysisModule(lib, list(names), cu_path.name)
                _libraries[str(lib)] = _loaded[key] = module
    return module


_PLAIN_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(')
_failed_whole_file: set = set()  # (path, source hash, names) whose one-library build did not compile
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


def _library_kernels(cu_path: Path, kernel: str) -> list[str]:
    """The kernels :func:`analyze` builds for ``kernel``: every ``extern "C"`` kernel of the file
    too (they need no template arguments), so that one library serves every such kernel of a
    file rather than one library each (a name that is no kernel, say inside ``#if 0``, fails
    that build, and :func:`analyze` then builds ``kernel`` alone)."""
    plain = list(dict.fromkeys(_PLAIN_KERNEL.findall(_COMMENT.sub(" ", cu_path.read_text()))))
    return plain if kernel in plain else plain + [kernel]  # in file order: one library per file


def analyze(path, kernel: str, grid, block, args, shared_mem: int = 0) -> Report:
    """Run one kernel of any ``.cu`` file on the simulator and measure it.

    ``kernel``: its name expression (``"my_kernel<float>"``, or the plain name of an
    ``extern "C"`` kernel). ``grid``, ``block``: ints or tuples of up to 3. ``args`` as
    :func:`gpulayers.kernels.launch` takes them: C-contiguous NumPy arrays (device pointers) and
    NumPy scalars of the kernel parameter's exact C type (``np.int32(n)`` for ``int``). The
    arrays hold the kernel's results afterwards. Returns a :class:`Report`.

    Errors name the file, the kernel and the argument: a missing file or a source that does not
    compile, a kernel name the file does not define, a wrong number or kind of arguments.
    """
    cu_path = Path(path).resolve()
    if not cu_path.is_file():
        raise FileNotFoundError(f"gpulayers.simulator.analyze: no such kernel source file: {path}")
    if not isinstance(kernel, str) or not kernel.strip():
        raise TypeError(f"gpulayers.simulator.analyze: `kernel` must be a name expression such as "
                        f"'my_kernel<float>'. Received: kernel={kernel!r}")
    base = re.split(r"[<\s(]", kernel.strip(), maxsplit=1)[0]
    if not re.search(rf"\b{re.escape(base.split('::')[-1])}\b", cu_path.read_text()):
        raise ValueError(f"gpulayers.simulator.analyze: {cu_path} defines no kernel named {base!r}. "
                         f"Received: kernel={kernel!r}")
    names = _library_kernels(cu_path, kernel)
    whole = (str(cu_path), hash(cu_path.read_bytes()), tuple(names))
    if whole in _failed_whole_file:
        names = [kernel]  # that build failed before: straight to this kernel alone
    try:
        try:
            module = load(cu_path, names)
        except CompileError:
            if names == [kernel]:
                raise
            _failed_whole_file.add(whole)
            module = load(cu_path, [kernel])  # another name's launcher did not compile: this kernel alone
    except CompileError as e:
        raise CompileError(f"gpulayers.simulator.analyze: {cu_path} does not compile with kernel "
                           f"{kernel!r}:\n{e}") from None
    grid = tuple(int(g) for g in (grid if isinstance(grid, (tuple, list)) else (grid,)))
    block = tuple(int(b) for b in (block if isinstance(block, (tuple, list)) else (block,)))
    try:
        return module.launch(kernel, grid, block, list(args), shared_mem)
    except KernelError as e:
        raise KernelError(f"{e} [file {cu_path}]") from None


# ----------------------------------------------------------------------------- layers

_state = threading.local()


def active():
    """The current recording list, or None (thread-local)."""
    return getattr(_state, "records", None)


def hazards_fail() -> bool:
    return getattr(_state, "check", False) or environment_checking()


@contextlib.contextmanager
def recording():
    """Inside this block, every kernel gpulayers launches on the simulator runs in analysis
    mode; the block yields a list that receives one :class:`Report` per launch (CuPy
    element-wise kernels appear as a :class:`Report` modeled from their arrays, see
    :func:`elementwise_report`)."""
    previous = active()
    records: list = []
    _state.records = records
    try:
        yield records
    finally:
        _state.records = previous


@contextlib.contextmanager
def checking():
    """Inside this block, every simulated gpulayers launch runs in analysis mode and raises
    :class:`~gpulayers.simulator.KernelError` on the first launch that has a hazard. (A launch
    whose arrays exceed 6 MB together is checked for shared-memory hazards only; its report's
    ``global_hazards_checked`` is False.)"""
    previous = hazards_fail()
    _state.check = True
    try:
        yield
    finally:
        _state.check = previous


def wanted() -> bool:
    return active() is not None or hazards_fail()


def run(cu_path: Path, names: list[str], name: str, grid, block, args, shared_mem=0) -> Report:
    """Launch through the analysis build; record the report and fail on hazards as asked."""
    records = active()
    report = load(cu_path, names).launch(name, grid, block, args, shared_mem)
    if records is not None:
        records.append(report)
    if hazards_fail() and report.hazard_count:
        shown = "\n  ".join(str(h) for h in report.hazards[:5])
        raise KernelError(f"kernel {name}: {report.hazard_count} hazards:\n  {shown}")
    return report


def elementwise_report(name: str, arrays_in, arrays_out, size: int) -> Report:
    """A CuPy element-wise kernel as CuPy launches it: one thread per output element in blocks
    of 128 (CuPy's default), every array read or written once at its own stride, coalesced.
    Modeled, not simulated: the kernel is CuPy's generated code, not ours."""
    report = Report(f"cupy elementwise {name}", (max(1, -(-size // 128)),), (128,))
    for arrays, kind in ((arrays_in, "load"), (arrays_out, "store")):
        for a in arrays:
            if not isinstance(a, np.ndarray) or a.ndim == 0:
                continue
            nbytes = _footprint(a)
            requests = -(-size // 32)
            sectors = -(-nbytes // 32)
            if a.size == size:  # read element by element, coalesced
                setattr(report, f"{kind}_requests", getattr(report, f"{kind}_requests") + requests)
                setattr(report, f"{kind}_sectors", getattr(report, f"{kind}_sectors") + sectors)
                setattr(report, f"{kind}_ideal_sectors", getattr(report, f"{kind}_ideal_sectors") + sectors)
            else:  # a broadcast operand (per-channel statistics): read through the caches
                per = max(1, -(-min(nbytes, 32 * a.itemsize) // 32))
                setattr(report, f"{kind}_requests", getattr(report, f"{kind}_requests") + requests)
                setattr(report, f"{kind}_sectors", getattr(report, f"{kind}_sectors") + requests * per)
                setattr(report, f"{kind}_ideal_sectors", getattr(report, f"{kind}_ideal_sectors") + requests * per)
            if kind == "load":
                report.dram_read_bytes += sectors * 32
            else:
                report.dram_write_bytes += sectors * 32
    return report


def _footprint(a: np.ndarray) -> int:
    """Bytes of the distinct elements of a (possibly broadcast) array."""
    distinct = int(np.prod([n for n, s in zip(a.shape, a.strides) if s != 0])) if a.ndim else 1
    return distinct * a.itemsize


def environment_checking() -> bool:
    """GPULAYERS_SIM_HAZARDS=1 makes every simulated launch hazard-checked (as :func:`checking`)."""
    return os.environ.get("GPULAYERS_SIM_HAZARDS", "") not in ("", "0")
