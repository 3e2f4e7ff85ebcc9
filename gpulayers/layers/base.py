"""The layer protocol: lazy build, params/grads/state, backward bookkeeping, all-or-nothing calls."""
from __future__ import annotations

import functools
import inspect

import numpy as np

from .. import kernels, validation


@functools.lru_cache(maxsize=None)
def _call_keywords(cls):
    """Keyword arguments that ``cls.forward`` takes besides ``x`` and ``training`` (None: any,
    for a forward with ``**kwargs``)."""
    params = inspect.signature(cls.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return frozenset(n for n in params if n not in ("self", "x", "training"))


class Layer:
    """Base of every gpulayers layer.

    Subclasses implement ``build(input_shape, xp, dtype)`` (create weights, optional),
    ``forward(x, training, **kw)`` returning the output and keeping what backward needs in
    ``self._saved``, and ``backward_impl(dy)`` returning dx (and filling ``self.grads``).
    ``weight_names`` lists params and state in Keras's ``get_weights()`` order.

    Guarantees, for every layer and every path (NumPy reference, simulator, GPU):

    - A call that raises changes nothing: ``layer(x)``, ``layer.backward(dy)`` and
      ``layer.set_weights(ws)`` either succeed or leave weights, moving statistics, the
      built state and the saved forward of the last successful call exactly as they were
      (a failed first call leaves the layer unbuilt).
    - ``backward(dy)`` differentiates the most recent successful call as it was made: it runs
      on the path that call ran on (inside or outside ``gpulayers.simulate()``), ``dy`` must
      be on the same device (NumPy or CuPy), and the layer keeps at call time what backward
      reads, so changing the input array (or a recurrent layer's ``mask`` or
      ``initial_state``) in place after the call does not change the gradient.
    - ``training`` is a bool; a zero-size batch is valid input (empty output, empty
      gradient, no kernel launch).
    """

    weight_names: tuple[str, ...] = ()

    def __init__(self, name=None, dtype=None, trainable=True, seed=None, **kwargs):
        layer = type(self).__name__
        if kwargs:
            raise TypeError(f"{layer}: unknown argument(s) {', '.join(sorted(kwargs))}. "
                            f"Received: {kwargs!r}")
        if dtype is not None and np.dtype(dtype) not in validation.FLOAT_DTYPES:
            raise TypeError(f"{layer}: `dtype` must be float16, float32 or float64. Received: dtype={dtype!r}")
        self.name = name or layer.lower()
        self.dtype = np.dtype(dtype) if dtype is not None else None  # inputs are cast to it, as Keras
        validation.unsupported(layer, trainable=(trainable, True))
        self.trainable = True
        self.seed = seed
        self.params: dict = {}
        self.grads: dict = {}
        self.state: dict = {}
        self.built = False
        self._saved = None
        self._output_meta = None  # (shape, dtype) of the last output, for checking dy
        self._cast_from = None  # the input's own dtype when `dtype` made the layer cast it
        self._xp = None  # array module of the last successful call
        self._on_kernels = False  # path of the last (or the running) call: kernels or NumPy reference
        self._input_is_private = False  # during a call: x is the layer's own copy (a dtype cast)

    # -- protocol ---------------------------------------------------------------
    def __call__(self, x, training=False, **kwargs):
        layer = type(self).__name__
        validation.float_array(layer, "inputs", x, self._array_types())
        training = validation.boolean(layer, "training", training)
        known = _call_keywords(type(self))
        unknown = [] if known is None else sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"{layer}: unknown call argument(s) {', '.join(unknown)}. "
                            f"Received: {', '.join(f'{k}={kwargs[k]!r}' for k in unknown)}")
        cast_from = None
        if self.dtype is not None and x.dtype != self.dtype:  # Keras's dtype policy: compute in it
            cast_from = x.dtype
            x = x.astype(self.dtype)
        self._check_device(x)
        xp, on_kernels = kernels.kernel_path(x)
        with self._all_or_nothing():
            if not self.built:
                self.build(tuple(x.shape), xp, x.dtype)
                self.built = True
            self._on_kernels, self._input_is_private = on_kernels, cast_from is not None
            with kernels.nvtx_range(f"{layer}.forward"):
                y = self.forward(x, training=training, **kwargs)
            self._input_is_private = False
            if isinstance(y, list):
                self._output_meta = [(tuple(o.shape), o.dtype) for o in y]
            else:
                self._output_meta = (tuple(y.shape), y.dtype)
            self._cast_from, self._xp = cast_from, xp
        return y

    def backward(self, dy):
        """Gradient of the loss w.r.t. the input of the most recent call; fills ``grads``."""
        layer = type(self).__name__
        if self._saved is None:
            raise ValueError(f"{layer}: backward() needs a forward call first. Received: backward "
                             f"before any call of the layer")
        if isinstance(self._output_meta, list):  # several outputs: a list, None for no gradient
            if not isinstance(dy, (list, tuple)) or len(dy) != len(self._output_meta):
                raise ValueError(f"{layer}: `dy` must be a list of {len(self._output_meta)} gradients (None "
                                 f"for an output without one), like the output. Received: dy of type "
                                 f"{type(dy).__name__}" + (f" with {len(dy)} items" if isinstance(dy, (list, tuple)) else ""))
            pairs = [(f"dy[{i}]", g, meta) for i, (g, meta) in enumerate(zip(dy, self._output_meta)) if g is not None]
        else:
            pairs = [("dy", dy, self._output_meta)]
        for arg, g, (shape, dtype) in pairs:
            validation.float_array(layer, arg, g, self._array_types())
            validation.same_shape(layer, arg, g, shape, dtype)
            if kernels.array_module(g) is not self._xp:
                where = "CuPy (GPU)" if self._xp is not np else "NumPy"
                raise ValueError(f"{layer}: `{arg}` must be on the same device as the forward input "
                                 f"(a {where} array). Received: {arg} of type {type(g).__name__}")
        with self._all_or_nothing():
            with kernels.nvtx_range(f"{layer}.backward"):
                dx = self.backward_impl(dy)
        if self._cast_from is not None:  # the gradient w.r.t. the input as given, before the cast
            if isinstance(dx, list):
                dx[0] = dx[0].astype(self._cast_from)
            else:
                dx = dx.astype(self._cast_from)
        return dx

    # -- hooks ------------------------------------------------------------------
    def build(self, input_shape, xp, dtype):
        pass

    def forward(self, x, training=False, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward_impl(self, dy):  # pragma: no cover - abstract
        raise NotImplementedError

    def _sublayers(self) -> tuple:
        """Layers this one calls (their state is part of this layer's)."""
        return ()

    # -- helpers for subclasses ---------------------------------------------------
    def _keep(self, x):
        """x as kept for backward: a copy of the caller's array, so in-place edits after the call
        do not reach backward (no copy when x is already the layer's own, e.g. a dtype cast)."""
        return x if self._input_is_private else x.copy()

    @staticmethod
    def _array_types():
        cp = kernels.cupy_module()
        return (np.ndarray,) if cp is None else (np.ndarray, cp.ndarray)

    # -- all or nothing ---------------------------------------------------------
    def _snapshot(self):
        layers, seen = [self], set()
        snap = []
        while layers:
            layer = layers.pop()
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            attrs = dict(layer.__dict__)
            dicts = {k: dict(v) for k, v in attrs.items() if k in ("params", "grads", "state") and isinstance(v, dict)}
            snap.append((layer, attrs, dicts))
            layers.extend(layer._sublayers())
        return snap

    @staticmethod
    def _restore(snap):
        for layer, attrs, dicts in snap:
            layer.__dict__.clear()
            layer.__dict__.update(attrs)
            for k, contents in dicts.items():  # the same dict objects, so references to them stay valid
                attrs[k].clear()
                attrs[k].update(contents)

    def _all_or_nothing(self):
        """Context manager: on any exception, put this layer (and its sublayers) back as before."""
        return _Transaction(self)

    # -- weights ----------------------------------------------------------------
    def _weights(self) -> dict:
        return {**self.params, **self.state}

    def get_weights(self) -> list:
        """Params and state as NumPy arrays, in Keras's order ([] before the layer is built)."""
        if not self.built:
            return []
        w = self._weights()
        cp = kernels.cupy_module()
        return [cp.asnumpy(w[k]) if kernels.is_gpu_array(w[k]) else np.array(w[k]) for k in self.weight_names]

    def set_weights(self, weights) -> None:
        """Set params and state from arrays in Keras's order; all or nothing: every array is
        checked (count, shape, a real floating dtype or values the weight dtype holds exactly)
        before any is assigned. The arrays are copied."""
        self._assign_weights(self._check_weights(weights))

    def _check_weights(self, weights) -> list:
        """[(dict, key, checked copy on the weights' device)] for ``weights``, or raise."""
        layer = type(self).__name__
        if not isinstance(weights, (list, tuple)):
            raise TypeError(f"{layer}: set_weights() takes a list of arrays. "
                            f"Received: weights of type {type(weights).__name__}")
        if not self.built:
            raise ValueError(f"{layer}: set_weights() needs the layer built (call it once first). "
                             f"Received: {len(weights)} arrays for an unbuilt layer")
        if len(weights) != len(self.weight_names):
            raise ValueError(f"{layer}: set_weights() expects {len(self.weight_names)} arrays "
                             f"({', '.join(self.weight_names)}). Received: {len(weights)} arrays")
        w = self._weights()
        checked = []
        for k, new in zip(self.weight_names, weights):
            value = self._checked_weight(f"weight `{k}`", new, tuple(w[k].shape), w[k].dtype)
            target = self.params if k in self.params else self.state
            checked.append((target, k, kernels.array_module(w[k]).asarray(value)))
        return checked

    def _checked_weight(self, what, value, shape, dtype):
        """A NumPy copy of a weight value (set_weights, an initializer's result), or a clear error."""
        if kernels.is_gpu_array(value):
            value = kernels.cupy_module().asnumpy(value)
        return validation.weight_array(type(self).__name__, what, value, shape, dtype)

    @staticmethod
    def _assign_weights(checked) -> None:
        for target, k, value in checked:
            target[k] = value

    def to(self, device: str):
        """Move weights to "gpu" or "cpu"; returns the layer."""
        layer = type(self).__name__
        if device not in ("cpu", "gpu"):
            raise ValueError(f"{layer}: `device` must be 'cpu' or 'gpu'. Received: device={device!r}")
        cp = kernels.cupy_module()
        if device == "gpu":
            if not kernels.gpu_available():
                raise ValueError(f"{layer}: no GPU is available (CuPy missing or no device). "
                                 f"Received: device='gpu'")
            move = cp.asarray
        else:
            move = (lambda a: cp.asnumpy(a) if kernels.is_gpu_array(a) else a)
        for d in (self.params, self.state, self.grads):
            for k in d:
                d[k] = move(d[k])
        self._saved = None
        return self

    def _check_device(self, x) -> None:
        w = self._weights()
        if not w:
            return
        some = next(iter(w.values()))
        if kernels.is_gpu_array(some) != kernels.is_gpu_array(x):
            raise ValueError(f"{type(self).__name__}: the input is on the "
                             f"{'GPU' if kernels.is_gpu_array(x) else 'CPU'} but the weights are on the "
                             f"{'GPU' if kernels.is_gpu_array(some) else 'CPU'}; call layer.to(...) first. "
                             f"Received: inputs of type {type(x).__name__}")

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r} built={self.built}>"

    # -- the classic NumPy layer interface --------------------------------------------
    # forward_pass / backward_pass / initialize(optimizer) / output_shape / parameters, as
    # the from-scratch NumPy tutorials teach, so code written against it runs on gpulayers
    # (shapes there exclude the batch axis).
    def set_input_shape(self, shape):
        """The input shape without the batch axis (classic interface)."""
        self.input_shape = tuple(int(s) for s in shape)

    def layer_name(self):
        return type(self).__name__

    def initialize(self, optimizer):
        """Keep an optimizer for this layer: ``backward_pass`` then updates its weights.

        A gpulayers optimizer is copied (this layer gets its own state); any other object with
        ``update(w, grad) -> new w`` is copied once per weight, as the classic interface does.
        """
        import copy

        if not (hasattr(optimizer, "apply") or hasattr(optimizer, "update")):
            raise TypeError(f"{type(self).__name__}: initialize() needs a gpulayers optimizer or an object with "
                            f"update(w, grad). Received: {type(optimizer).__name__}")
        self._classic_optimizer = copy.deepcopy(optimizer)
        self._classic_copies = {}

    def forward_pass(self, X, training=True):
        """``self(X, training=training)`` (classic interface)."""
        return self(X, training=training)

    def backward_pass(self, accum_grad):
        """The input gradient; after ``initialize(optimizer)`` also updates the weights (with the
        gradient at the weights the forward pass used, which also gave the input gradient)."""
        import copy

        dx = self.backward(accum_grad)
        opt = getattr(self, "_classic_optimizer", None)
        if opt is not None and self.params:
            if hasattr(opt, "apply"):
                opt.apply(self)
            else:
                for k in list(self.params):
                    own = self._classic_copies.setdefault(k, copy.copy(opt))
                    p = self.params[k]
                    p[...] = own.update(p, self.grads[k])
        return dx

    def _classic_input_shape(self):
        shape = getattr(self, "input_shape", None)
        if shape is None:
            raise ValueError(f"{type(self).__name__}: output_shape() needs set_input_shape(shape) first. "
                             f"Received: no input shape")
        return shape

    def output_shape(self):
        """The output shape without the batch axis, for ``set_input_shape``'s input (classic interface)."""
        import copy

        shape = (1,) + self._classic_input_shape()
        if hasattr(self, "compute_output_shape"):
            return tuple(self.compute_output_shape(shape)[1:])
        probe = copy.deepcopy(self)  # run a throwaway copy on zeros: nothing of this layer changes
        y = probe(np.zeros(shape, self.dtype or np.float32))
        return tuple((y[0] if isinstance(y, list) else y).shape[1:])

    def parameters(self):
        """Number of trainable values (classic interface); builds a throwaway copy if needed."""
        import copy

        if not self.built:
            if getattr(self, "input_shape", None) is None:
                return 0
            probe = copy.deepcopy(self)
            probe((np.zeros((1,) + self.input_shape, self.dtype or np.float32)))
            return probe.parameters()
        return int(sum(int(np.prod(p.shape)) for p in self.params.values()))

class _Transaction:
    """Snapshot a layer on entry; restore it if the block raises."""

    def __init__(self, layer):
        self.layer = layer

    def __enter__(self):
        self.snap = self.layer._snapshot()
        return self

    def __exit__(self, kind, value, tb):
        if kind is not None:
            Layer._restore(self.snap)
        return False
