"""The layer protocol of DESIGN.md: lazy build, params/grads/state, backward bookkeeping."""
from __future__ import annotations

import numpy as np

from .. import kernels, validation


class Layer:
    """Base of every gpulayers layer.

    Subclasses implement ``build(input_shape, xp, dtype)`` (create weights, optional),
    ``forward(x, training, **kw)`` returning the output and keeping what backward needs in
    ``self._saved``, and ``backward_impl(dy)`` returning dx (and filling ``self.grads``).
    ``weight_names`` lists params and state in Keras's ``get_weights()`` order.
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

    # -- protocol ---------------------------------------------------------------
    def __call__(self, x, training=False, **kwargs):
        layer = type(self).__name__
        xp_types = (np.ndarray,) if kernels.cupy_module() is None else (np.ndarray, kernels.cupy_module().ndarray)
        validation.float_array(layer, "inputs", x, xp_types)
        self._cast_from = None
        if self.dtype is not None and x.dtype != self.dtype:  # Keras's dtype policy: compute in it
            self._cast_from = x.dtype
            x = x.astype(self.dtype)
        self._check_device(x)
        if not self.built:
            self.build(tuple(x.shape), kernels.array_module(x), x.dtype)
            self.built = True
        self._saved = None
        with kernels.nvtx_range(f"{layer}.forward"):
            y = self.forward(x, training=training, **kwargs)
        if isinstance(y, list):
            self._output_meta = [(tuple(o.shape), o.dtype) for o in y]
        else:
            self._output_meta = (tuple(y.shape), y.dtype)
        return y

    def backward(self, dy):
        """Gradient of the loss w.r.t. the input of the most recent call; fills ``grads``."""
        layer = type(self).__name__
        if self._saved is None:
            raise ValueError(f"{layer}: backward() needs a forward call first. Received: backward "
                             f"before any call of the layer")
        xp_types = (np.ndarray,) if kernels.cupy_module() is None else (np.ndarray, kernels.cupy_module().ndarray)
        if isinstance(self._output_meta, list):  # several outputs: a list, None for no gradient
            if not isinstance(dy, (list, tuple)) or len(dy) != len(self._output_meta):
                raise ValueError(f"{layer}: `dy` must be a list of {len(self._output_meta)} gradients (None "
                                 f"for an output without one), like the output. Received: dy of type "
                                 f"{type(dy).__name__}" + (f" with {len(dy)} items" if isinstance(dy, (list, tuple)) else ""))
            pairs = [(f"dy[{i}]", g, meta) for i, (g, meta) in enumerate(zip(dy, self._output_meta)) if g is not None]
        else:
            pairs = [("dy", dy, self._output_meta)]
        for arg, g, (shape, dtype) in pairs:
            validation.float_array(layer, arg, g, xp_types)
            validation.same_shape(layer, arg, g, shape, dtype)
            if kernels.array_module(g) is not kernels.array_module(self._saved_input_array()):
                raise ValueError(f"{layer}: `{arg}` must be on the same device as the forward input. "
                                 f"Received: {arg} of type {type(g).__name__}")
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

    def _saved_input_array(self):
        """An array from the last forward call (to check dy's device)."""
        saved = self._saved
        while isinstance(saved, (tuple, list)):
            saved = saved[0]
        return saved

    # -- weights ----------------------------------------------------------------
    def _weights(self) -> dict:
        return {**self.params, **self.state}

    def get_weights(self) -> list:
        """Params and state as NumPy arrays, in Keras's order."""
        w = self._weights()
        cp = kernels.cupy_module()
        return [cp.asnumpy(w[k]) if kernels.is_gpu_array(w[k]) else np.array(w[k]) for k in self.weight_names]

    def set_weights(self, weights) -> None:
        layer = type(self).__name__
        if not self.built:
            raise ValueError(f"{layer}: set_weights() needs the layer built (call it once first). "
                             f"Received: {len(weights)} arrays for an unbuilt layer")
        if len(weights) != len(self.weight_names):
            raise ValueError(f"{layer}: set_weights() expects {len(self.weight_names)} arrays "
                             f"({', '.join(self.weight_names)}). Received: {len(weights)} arrays")
        w = self._weights()
        for k, new in zip(self.weight_names, weights):
            if tuple(np.shape(new)) != tuple(w[k].shape):
                raise ValueError(f"{layer}: weight `{k}` must have shape {tuple(w[k].shape)}. "
                                 f"Received: shape {tuple(np.shape(new))}")
            xp = kernels.array_module(w[k])
            target = self.params if k in self.params else self.state
            target[k] = xp.asarray(new, dtype=w[k].dtype).copy()

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
