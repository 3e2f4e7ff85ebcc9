"""The full constructor signature of a layer class, for ``inspect.signature`` and editors.

Layer classes pass most arguments on to a shared base ``__init__`` through ``**kwargs``;
``with_signature(cls)`` sets ``cls.__signature__`` to the class's own parameters followed by
the keyword arguments its bases accept (Keras names and defaults), so ``inspect.signature``
and interactive completion list every argument instead of ``**kwargs``.
"""
from __future__ import annotations

import inspect


def full_signature(cls, exclude=(), defaults=None):
    """The parameters of cls.__init__ and, keyword-only, those of its bases' __init__ it forwards."""
    params, seen = [], {"self"}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        own = klass is cls or not params
        for p in inspect.signature(init).parameters.values():
            if p.name in seen or p.name in exclude or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            seen.add(p.name)
            if not own:
                p = p.replace(kind=p.KEYWORD_ONLY)
            if defaults and p.name in defaults:
                p = p.replace(default=defaults[p.name])
            params.append(p)
    positional = [p for p in params if p.kind != p.KEYWORD_ONLY]
    keyword = [p for p in params if p.kind == p.KEYWORD_ONLY]
    return inspect.Signature(positional + keyword)


def with_signature(cls, exclude=(), defaults=None):
    """Sets cls.__signature__ (see :func:`full_signature`) and returns cls."""
    cls.__signature__ = full_signature(cls, exclude, defaults)
    return cls
