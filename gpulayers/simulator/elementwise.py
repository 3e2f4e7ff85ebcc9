"""CuPy ``ElementwiseKernel``/``ReductionKernel`` snippets on the CPU simulator.

The same parameter lists and C snippets that CuPy compiles for the GPU are turned into a
C++ loop (one iteration per output element; for reductions an inner loop over the reduced
elements), compiled with the host compiler and cached like the raw kernels. Broadcast
inputs are materialised first; reduced axes are moved last.
"""
from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass

import numpy as np

from . import build_source

C_TYPES = {
    "float16": "__half", "float32": "float", "float64": "double", "int8": "signed char",
    "int16": "short", "int32": "int", "int64": "long long", "uint8": "unsigned char",
    "uint16": "unsigned short", "uint32": "unsigned int", "uint64": "unsigned long long", "bool": "bool",
}


@dataclass(frozen=True)
class Param:
    ctype: str  # a NumPy dtype name, or a type placeholder such as T
    name: str
    raw: bool

    @property
    def placeholder(self) -> bool:
        return self.ctype not in C_TYPES


def parse_params(text: str) -> list[Param]:
    """CuPy's parameter list syntax: ``"T x, raw T y, float32 eps"``."""
    params = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        words = item.split()
        raw = words[0] == "raw"
        words = words[1:] if raw else words
        if len(words) != 2 or not re.fullmatch(r"[A-Za-z_]\w*", words[1]):
            raise ValueError(f"bad kernel parameter {item!r} in {text!r}")
        params.append(Param(words[0], words[1], raw))
    return params


def _resolve(params, args):
    """Type placeholder -> NumPy dtype, from the array (or typed scalar) arguments."""
    types = {}
    for p, a in zip(params, args):
        if p.placeholder and a is not None and hasattr(a, "dtype"):
            types.setdefault(p.ctype, np.dtype(a.dtype))
    return types


def _dtype_of(p, types):
    if p.placeholder:
        if p.ctype not in types:
            raise TypeError(f"cannot resolve type {p.ctype} of parameter {p.name}")
        return types[p.ctype]
    return np.dtype(p.ctype)


def _source(kind, params, types, body, preamble, reduce_parts=None):
    lines = ['#include "cuda_sim.h"', "#include <cuda_fp16.h>"]
    for placeholder, dt in types.items():
        lines.append(f"typedef {C_TYPES[dt.name]} {placeholder};")
    lines += [preamble, "struct Index { long long n; long long size() const { return n; } };",
              'extern "C" void glsim_ew(long long n_out, long long n_red, void** args) {']
    for k, p in enumerate(params):
        ct = p.ctype if p.placeholder else C_TYPES[p.ctype]
        lines.append(f"  {ct}* const {p.name}_ptr_ = ({ct}*)args[{k}];")
    if kind == "elementwise":
        lines += ["  Index _ind{n_out};", "  for (long long i = 0; i < n_out; ++i) {"]
        for p in params:
            ct = p.ctype if p.placeholder else C_TYPES[p.ctype]
            if p.raw:
                lines.append(f"    {ct}* const {p.name} = {p.name}_ptr_;")
            else:
                lines.append(f"    {ct}& {p.name} = {p.name}_ptr_[p_stride_{p.name} * i];")
        lines += [f"    {body};", "  }", "}"]
        return "\n".join(lines)
    map_expr, reduce_expr, post_map, identity, reduce_type, n_in = reduce_parts
    lines += ["  Index _in_ind{n_out * n_red}, _out_ind{n_out};",
              f"  typedef {reduce_type} _type_reduce;",
              "  for (long long m = 0; m < n_out; ++m) {",
              f"    _type_reduce a = ({identity});",
              "    for (long long r = 0; r < n_red; ++r) {",
              "      const long long i = m * n_red + r;"]
    for p in params[:n_in]:
        ct = p.ctype if p.placeholder else C_TYPES[p.ctype]
        lines.append(f"      const {ct}& {p.name} = {p.name}_ptr_[p_stride_{p.name} * i];")
    lines += [f"      const _type_reduce b = ({map_expr});", f"      a = ({reduce_expr});", "    }",
              "    const long long i = m;"]
    for p in params[n_in:]:
        ct = p.ctype if p.placeholder else C_TYPES[p.ctype]
        lines.append(f"    {ct}& {p.name} = {p.name}_ptr_[i];")
    lines += [f"    {post_map};", "  }", "}"]
    return "\n".join(lines)


def _bind_scalars(src, params, scalar_flags):
    """Scalars are read through a stride-0 pointer; arrays with stride 1."""
    for p, scalar in zip(params, scalar_flags):
        src = src.replace(f"p_stride_{p.name} ", f"{0 if scalar else 1}LL ")
    return src


class _Compiled:
    def __init__(self, source: str, name: str):
        from .. import paths

        path = build_source(source, f"ew_{name}", paths.cache_folder())
        self.fn = ctypes.CDLL(str(path)).glsim_ew
        self.fn.restype = None

    def __call__(self, n_out, n_red, arrays):
        argv = (ctypes.c_void_p * max(len(arrays), 1))(*[a.ctypes.data for a in arrays])
        self.fn(ctypes.c_longlong(n_out), ctypes.c_longlong(n_red), argv)


_cache: dict[str, _Compiled] = {}


def _compiled(source, name):
    fn = _cache.get(source)
    if fn is None:
        fn = _cache[source] = _Compiled(source, name)
    return fn


def _as_typed(a, dtype):
    return np.asarray(a, dtype=dtype)


class ElementwiseKernel:
    """``cupy.ElementwiseKernel`` with the same constructor and call, run on the CPU."""

    def __init__(self, in_params, out_params, operation, name="kernel", preamble=""):
        self.in_params, self.out_params = parse_params(in_params), parse_params(out_params)
        self.operation, self.name, self.preamble = operation, name, preamble

    def __call__(self, *args, size=None):
        n_in = len(self.in_params)
        if len(args) not in (n_in, n_in + len(self.out_params)):
            raise TypeError(f"{self.name}: takes {n_in} inputs (and optionally "
                            f"{len(self.out_params)} outputs), {len(args)} given")
        params = self.in_params + self.out_params
        ins = list(args[:n_in])
        outs = list(args[n_in:]) or [None] * len(self.out_params)
        types = _resolve(params, ins + outs)
        shapes = [np.shape(a) for p, a in zip(params, ins + outs) if a is not None and not p.raw
                  and isinstance(a, np.ndarray)]
        shape = np.broadcast_shapes(*shapes) if shapes else ((size,) if size is not None else ())
        values, scalar_flags = [], []
        for p, a in zip(self.in_params, ins):
            dt = _dtype_of(p, types)
            if p.raw:
                values.append(np.ascontiguousarray(a, dtype=dt))
                scalar_flags.append(False)
            elif isinstance(a, np.ndarray) and a.ndim > 0:
                values.append(np.ascontiguousarray(np.broadcast_to(a.astype(dt, copy=False), shape)))
                scalar_flags.append(False)
            else:
                values.append(np.array([a], dtype=dt))
                scalar_flags.append(True)
        results = []
        for p, o in zip(self.out_params, outs):
            dt = _dtype_of(p, types)
            if o is None:
                o = np.empty(shape, dt)
            if o.shape != tuple(shape) or o.dtype != dt or not o.flags.c_contiguous:
                raise ValueError(f"{self.name}: output {p.name} must be a C-contiguous {dt} array of "
                                 f"shape {tuple(shape)}")
            values.append(o)
            scalar_flags.append(False)
            results.append(o)
        src = _bind_scalars(_source("elementwise", params, types, self.operation, self.preamble),
                            params, scalar_flags)
        n = int(np.prod(shape)) if size is None else int(size)
        _compiled(src, self.name)(n, 1, values)
        return results[0] if len(results) == 1 else tuple(results)


class ReductionKernel:
    """``cupy.ReductionKernel`` with the same constructor and call (``axis``, ``keepdims``)."""

    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr, identity,
                 name="reduce_kernel", reduce_type=None, preamble=""):
        self.in_params, self.out_params = parse_params(in_params), parse_params(out_params)
        self.map_expr, self.reduce_expr, self.post_map_expr = map_expr, reduce_expr, post_map_expr
        self.identity, self.name, self.preamble = identity, name, preamble
        self.reduce_type = reduce_type

    def __call__(self, *args, axis=None, keepdims=False):
        n_in = len(self.in_params)
        params = self.in_params + self.out_params
        ins = list(args[:n_in])
        types = _resolve(params, ins)
        shapes = [np.shape(a) for a in ins if isinstance(a, np.ndarray) and a.ndim > 0]
        shape = np.broadcast_shapes(*shapes)
        ndim = len(shape)
        axes = tuple(range(ndim)) if axis is None else tuple(
            a % ndim for a in ((axis,) if np.isscalar(axis) else axis))
        kept = tuple(a for a in range(ndim) if a not in axes)
        out_shape = tuple(1 if a in axes else shape[a] for a in range(ndim)) if keepdims else \
            tuple(shape[a] for a in kept)
        n_red = int(np.prod([shape[a] for a in axes])) if axes else 1
        n_out = int(np.prod([shape[a] for a in kept])) if kept else 1
        values, scalar_flags = [], []
        for p, a in zip(self.in_params, ins):
            dt = _dtype_of(p, types)
            if isinstance(a, np.ndarray) and a.ndim > 0:
                full = np.broadcast_to(a.astype(dt, copy=False), shape)
                values.append(np.ascontiguousarray(np.transpose(full, kept + axes)))
                scalar_flags.append(False)
            else:
                values.append(np.array([a], dtype=dt))
                scalar_flags.append(True)
        results = []
        for p in self.out_params:
            o = np.empty(out_shape, _dtype_of(p, types))
            values.append(o)
            scalar_flags.append(False)
            results.append(o)
        reduce_type = self.reduce_type or (next(iter(types)) if types else "double")
        if reduce_type in C_TYPES:
            reduce_type = C_TYPES[reduce_type]
        src = _bind_scalars(_source("reduction", params, types, None, self.preamble,
                                    (self.map_expr, self.reduce_expr, self.post_map_expr, self.identity,
                                     reduce_type, n_in)), params, scalar_flags)
        _compiled(src, self.name)(n_out, n_red, values)
        return results[0] if len(results) == 1 else tuple(results)
