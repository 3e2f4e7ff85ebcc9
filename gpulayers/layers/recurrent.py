"""Recurrent layers: SimpleRNN, LSTM, GRU (Keras 3's arguments, weight layouts and gate
orders) and the Bidirectional wrapper.

Each call runs :func:`.recurrent_reference.rnn_forward` (NumPy) or
:func:`.recurrent_kernels.rnn_forward_kernel` (GPU, or the simulator inside
``gpulayers.simulate()``); the two return the same saved record, which backward hands to the
matching backward function. The cell equations are in :mod:`.recurrent_reference`; the
PyTorch state-dict converters in :mod:`.torch_weights`.
"""
from __future__ import annotations

import dataclasses
import numbers
from collections.abc import MutableMapping

import numpy as np

from .. import kernels, validation
from ._common import INITIALIZERS as _INITIALIZERS
from ._common import acc_dtype as _acc_dtype
from ._common import glorot_uniform, orthogonal  # noqa: F401  (re-exported)
from ._signature import with_signature
from .base import Layer
from .recurrent_kernels import Activation, Cell, rnn_backward_kernel, rnn_forward_kernel  # noqa: F401
from .recurrent_reference import (ACTIVATIONS, CELLS, GATES, RnnSaved, Spec, activate,  # noqa: F401
                                  activation_grad, rnn_backward, rnn_forward)

# the layers, and (re-exported) the reference's and kernel path's names a user of this module reaches
__all__ = ["SimpleRNN", "LSTM", "GRU", "Bidirectional", "merge_directions", "Spec", "RnnSaved", "rnn_forward",
           "rnn_backward", "rnn_forward_kernel", "rnn_backward_kernel", "activate", "activation_grad", "ACTIVATIONS",
           "CELLS", "GATES", "Cell", "Activation", "glorot_uniform", "orthogonal"]


class _Recurrent(Layer):
    """Shared machinery of SimpleRNN, LSTM and GRU."""

    cell = ""

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", bias_initializer="zeros",
                 unit_forget_bias=True, kernel_regularizer=None, recurrent_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, recurrent_constraint=None, bias_constraint=None,
                 dropout=0.0, recurrent_dropout=0.0, seed=None, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, reset_after=True, use_cudnn="auto",
                 zero_output_for_mask=False, name=None, **kwargs):
        super().__init__(name=name, seed=seed, **kwargs)
        layer = type(self).__name__
        if not isinstance(units, (numbers.Integral, np.integer)) or isinstance(units, bool) or units <= 0:
            raise ValueError(f"{layer}: `units` must be a positive int. Received: units={units!r}")
        self.units = int(units)
        self.activation = validation.choice(layer, "activation", activation, ACTIVATIONS)
        self.recurrent_activation = validation.choice(layer, "recurrent_activation", recurrent_activation,
                                                      ACTIVATIONS)
        self.use_bias = validation.boolean(layer, "use_bias", use_bias)
        self.unit_forget_bias = validation.boolean(layer, "unit_forget_bias", unit_forget_bias)
        self.return_sequences = validation.boolean(layer, "return_sequences", return_sequences)
        self.return_state = validation.boolean(layer, "return_state", return_state)
        self.go_backwards = validation.boolean(layer, "go_backwards", go_backwards)
        self.reset_after = validation.boolean(layer, "reset_after", reset_after)
        self.zero_output_for_mask = validation.boolean(layer, "zero_output_for_mask", zero_output_for_mask)
        self.initializers = {}
        for arg, value in (("kernel_initializer", kernel_initializer),
                           ("recurrent_initializer", recurrent_initializer), ("bias_initializer", bias_initializer)):
            if not (callable(value) or value in _INITIALIZERS):
                raise ValueError(f"{layer}: `{arg}` must be one of {', '.join(map(repr, _INITIALIZERS))} or a "
                                 f"callable (shape, dtype) -> array. Received: {arg}={value!r}")
            self.initializers[arg] = value
        validation.unsupported(layer, dropout=(dropout, 0.0), recurrent_dropout=(recurrent_dropout, 0.0),
                               stateful=(stateful, False), unroll=(unroll, False),
                               kernel_regularizer=(kernel_regularizer, None),
                               recurrent_regularizer=(recurrent_regularizer, None),
                               bias_regularizer=(bias_regularizer, None),
                               activity_regularizer=(activity_regularizer, None),
                               kernel_constraint=(kernel_constraint, None),
                               recurrent_constraint=(recurrent_constraint, None),
                               bias_constraint=(bias_constraint, None))
        self.weight_names = ("kernel", "recurrent_kernel") + (("bias",) if self.use_bias else ())
        cell = self.cell
        if cell == "gru" and not self.reset_after:
            cell = "gru_reset_before"
        self.spec = Spec(cell, self.units, self.activation, self.recurrent_activation, self.go_backwards,
                         self.zero_output_for_mask)
        self._config = dict(units=units, activation=activation, recurrent_activation=recurrent_activation,
                            use_bias=use_bias, kernel_initializer=kernel_initializer,
                            recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
                            unit_forget_bias=unit_forget_bias, return_sequences=return_sequences,
                            return_state=return_state, go_backwards=go_backwards, reset_after=reset_after,
                            zero_output_for_mask=zero_output_for_mask, seed=seed)
        for arg in self._not_keras_args:
            self._config.pop(arg)

    _not_keras_args: tuple = ()

    @property
    def state_count(self):
        return 2 if self.spec.has_cell_state else 1

    def _init(self, arg, weight, rng, shape, dtype):
        init = self.initializers[arg]
        if callable(init):  # checked and copied: never the initializer's own array
            return self._checked_weight(f"`{arg}` (for weight `{weight}`)", init(shape, dtype), shape, dtype)
        return _INITIALIZERS[init](rng, shape, dtype)

    def build(self, input_shape, xp, dtype):
        layer = type(self).__name__
        if len(input_shape) != 3:
            raise ValueError(f"{layer}: `inputs` must be 3-D (batch, time, features). "
                             f"Received: inputs.shape={tuple(input_shape)}")
        rng = np.random.default_rng(self.seed)
        wdtype = _acc_dtype(dtype)
        g, u = self.spec.gates, self.units
        self.input_features = int(input_shape[-1])
        weights = {"kernel": self._init("kernel_initializer", "kernel", rng, (self.input_features, g * u), wdtype),
                   "recurrent_kernel": self._init("recurrent_initializer", "recurrent_kernel", rng, (u, g * u),
                                                  wdtype)}
        if self.use_bias:
            shape = (2, g * u) if self.spec.cell == "gru" else (g * u,)
            bias = self._init("bias_initializer", "bias", rng, shape, wdtype)
            if self.cell == "lstm" and self.unit_forget_bias:
                bias[u:2 * u] = 1.0
            weights["bias"] = bias
        self.params.update({k: xp.asarray(v) for k, v in weights.items()})

    def _check_call(self, x, initial_state, mask):
        layer = type(self).__name__
        validation.rank(layer, "inputs", x, 3, "(batch, time, features)")
        if x.shape[-1] != self.input_features:
            raise ValueError(f"{layer}: `inputs` must have {self.input_features} features, as when the layer was "
                             f"built. Received: inputs.shape={tuple(x.shape)}")
        if x.shape[1] == 0:  # a zero-size batch is fine; no time steps is not
            raise ValueError(f"{layer}: `inputs` must have at least one time step. "
                             f"Received: inputs.shape={tuple(x.shape)}")
        xp = kernels.array_module(x)
        if mask is not None:
            if not hasattr(mask, "shape") or tuple(mask.shape) != tuple(x.shape[:2]):
                raise ValueError(f"{layer}: `mask` must have shape (batch, time) = {tuple(x.shape[:2])}. "
                                 f"Received: mask.shape={getattr(mask, 'shape', type(mask).__name__)}")
            if mask.dtype != np.bool_:
                raise TypeError(f"{layer}: `mask` must be a bool array. Received: mask.dtype={mask.dtype}")
            if kernels.array_module(mask) is not xp:
                raise ValueError(f"{layer}: `mask` must be on the same device as the inputs. "
                                 f"Received: mask of type {type(mask).__name__}")
        if initial_state is not None:
            states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
            if len(states) != self.state_count:
                raise ValueError(f"{layer}: `initial_state` must be a list of {self.state_count} arrays. "
                                 f"Received: {len(states)} arrays")
            for k, s in enumerate(states):
                if not hasattr(s, "shape") or tuple(s.shape) != (x.shape[0], self.units):
                    raise ValueError(f"{layer}: `initial_state[{k}]` must have shape (batch, units) = "
                                     f"{(x.shape[0], self.units)}. Received: shape {getattr(s, 'shape', None)}")
                if s.dtype != x.dtype:
                    raise TypeError(f"{layer}: `initial_state[{k}]` must have the inputs' dtype {x.dtype}. "
                                    f"Received: dtype {s.dtype}")
                if kernels.array_module(s) is not xp:
                    raise ValueError(f"{layer}: `initial_state[{k}]` must be on the same device as the inputs. "
                                     f"Received: type {type(s).__name__}")
            return states
        return None

    def forward(self, x, training=False, initial_state=None, mask=None):
        states0 = self._check_call(x, initial_state, mask)
        xp, on_kernels = kernels.array_module(x), self._on_kernels
        batch, steps = x.shape[:2]
        if batch == 0:  # a zero-size batch: empty outputs and states, no kernel launch
            self._saved = (tuple(x.shape), x.dtype, None, states0 is not None)
            y = xp.zeros((0, steps, self.units) if self.return_sequences else (0, self.units), x.dtype)
            return [y] + [xp.zeros((0, self.units), x.dtype) for _ in range(self.state_count)] \
                if self.return_state else y
        if on_kernels:
            validation.int32_sizes(type(self).__name__, **{"inputs.shape": tuple(x.shape)})
        w = self.params
        args = (self.spec, x, w["kernel"], w["recurrent_kernel"], w.get("bias"), states0, mask)
        outputs, states, saved = rnn_forward_kernel(*args) if on_kernels else rnn_forward(*args)
        # backward reads only `saved`: no view of the caller's arrays stays in it, so editing x,
        # mask or initial_state in place after the call does not change the gradient
        saved = _detached(saved, [a for a in (x, mask, *(states0 or ())) if a is not None], xp)
        self._saved = (tuple(x.shape), x.dtype, saved, states0 is not None)
        y = xp.swapaxes(outputs, 0, 1) if self.return_sequences else outputs[-1]
        y = xp.ascontiguousarray(y.astype(x.dtype))
        if self.return_state:
            return [y] + [s.astype(x.dtype) for s in states]
        return y

    def backward_impl(self, dy):
        x_shape, x_dtype, saved, had_initial_state = self._saved
        xp, on_kernels = self._xp, self._on_kernels
        batch, steps = x_shape[:2]
        wdtype = self.params["kernel"].dtype
        if batch == 0:
            dx = xp.zeros(x_shape, x_dtype)
            self.grads = {k: xp.zeros(v.shape, wdtype) for k, v in self.params.items()}
            if had_initial_state:
                return [dx] + [xp.zeros((0, self.units), x_dtype) for _ in range(self.state_count)]
            return dx
        dys = list(dy) if self.return_state else [dy]
        acc = _acc_dtype(x_dtype)
        d_out = xp.zeros((steps, batch, self.units), acc)
        if dys[0] is not None:
            if self.return_sequences:
                d_out[...] = xp.swapaxes(dys[0], 0, 1)
            else:
                d_out[-1] = dys[0]
        d_states = (dys[1:] + [None] * self.state_count)[:self.state_count]
        fn = rnn_backward_kernel if on_kernels else rnn_backward
        dx, d_init, grads = fn(self.spec, saved, d_out, d_states)
        self.grads = {k: v.astype(wdtype) for k, v in grads.items()}
        if had_initial_state:
            return [dx] + [d.astype(x_dtype) for d in d_init]
        return dx


def _detached(saved, inputs, xp):
    """``saved`` (a dict, list, tuple or dataclass of arrays) with every array that may share
    memory with one of ``inputs`` copied."""
    def own(v):
        if isinstance(v, np.ndarray) or kernels.is_gpu_array(v):
            return v.copy() if any(xp.may_share_memory(v, a) for a in inputs) else v
        if isinstance(v, dict):
            return {k: own(i) for k, i in v.items()}
        if isinstance(v, tuple) and hasattr(v, "_fields"):  # a namedtuple
            return type(v)(*(own(i) for i in v))
        if isinstance(v, (list, tuple)):
            return type(v)(own(i) for i in v)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return dataclasses.replace(v, **{f.name: own(getattr(v, f.name)) for f in dataclasses.fields(v)
                                             if f.init})
        return v
    return own(saved)


_RNN_DOC = """{name} layer, as Keras 3's ``{name}``.

    Args:
        units: positive int, the state size.
        activation: "tanh" (default), "relu", "sigmoid", "linear" or "hard_sigmoid".
        {recurrent}use_bias: add biases (default True).
        kernel_initializer, recurrent_initializer, bias_initializer: "glorot_uniform",
            "orthogonal", "zeros", "ones" or a callable (shape, dtype) -> array; defaults
            glorot_uniform / orthogonal / zeros, as Keras; reproducible through ``seed``.
        {extra}return_sequences: return the whole output sequence, not only the last output.
        return_state: also return the final state(s).
        go_backwards: process time reversed (the output sequence comes back reversed).
        seed: int seed of the initializers.
        ``dropout``, ``recurrent_dropout``, ``stateful``, ``unroll``, regularizers and
        constraints raise NotImplementedError when set.

    Call: ``layer(x, initial_state=None, mask=None)``; x (batch, time, features), mask
    (batch, time) bool. Output: (batch, units), or (batch, time, units) with
    return_sequences; with return_state ``[output, {states}]``.
    Weights (Keras order): kernel (features, {g} units), recurrent_kernel (units, {g} units),
    bias {bias}; gate order {order}.
    """


class SimpleRNN(_Recurrent):
    __doc__ = _RNN_DOC.format(name="SimpleRNN", recurrent="", extra="", states="h", g=1, bias="(units,)",
                              order="-")
    cell = "simple_rnn"
    _not_keras_args = ("recurrent_activation", "unit_forget_bias", "reset_after")

    def __init__(self, units, activation="tanh", use_bias=True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros", **kwargs):
        for arg in ("recurrent_activation", "unit_forget_bias", "reset_after"):
            if arg in kwargs:
                raise TypeError(f"SimpleRNN: unknown argument(s) {arg}. Received: {arg}={kwargs[arg]!r}")
        super().__init__(units, activation=activation, use_bias=use_bias, kernel_initializer=kernel_initializer,
                         recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer, **kwargs)


class LSTM(_Recurrent):
    __doc__ = _RNN_DOC.format(
        name="LSTM", recurrent="recurrent_activation: for the i, f, o gates (default \"sigmoid\").\n        ",
        extra="unit_forget_bias: initialise the forget-gate bias to 1 (default True).\n        ",
        states="h, c", g=4, bias="(4 units,)", order="i, f, c, o")
    cell = "lstm"
    _not_keras_args = ("reset_after",)

    def __init__(self, units, **kwargs):
        if "reset_after" in kwargs:
            raise TypeError(f"LSTM: unknown argument(s) reset_after. Received: reset_after={kwargs['reset_after']!r}")
        super().__init__(units, **kwargs)


class GRU(_Recurrent):
    __doc__ = _RNN_DOC.format(
        name="GRU", recurrent="recurrent_activation: for the z, r gates (default \"sigmoid\").\n        ",
        extra="reset_after: apply the reset gate after the recurrent matmul (default True, two biases).\n        ",
        states="h", g=3, bias="(2, 3 units) with reset_after (input then recurrent), else (3 units,)",
        order="z, r, h")
    cell = "gru"
    _not_keras_args = ("unit_forget_bias",)

    def __init__(self, units, **kwargs):
        if "unit_forget_bias" in kwargs:
            raise TypeError(f"GRU: unknown argument(s) unit_forget_bias. "
                            f"Received: unit_forget_bias={kwargs['unit_forget_bias']!r}")
        super().__init__(units, **kwargs)


for _cls in (SimpleRNN, LSTM, GRU):  # inspect.signature lists every argument, not **kwargs
    with_signature(_cls, exclude=_cls._not_keras_args)


def _rebuilt(layer, **overrides):
    """A new, unbuilt layer of ``layer``'s class from its config (as Keras rebuilds wrapped layers)."""
    config = dict(layer._config, dtype=layer.dtype)
    config.update(overrides)
    return type(layer)(**config)


def merge_directions(merge_mode, yf, yb, concatenate):
    """Bidirectional's outputs from its two directions' (``concatenate(a, b)`` joins the last
    axis, so that NumPy, CuPy and torch arrays share this): a list of one output, or both."""
    if merge_mode == "concat":
        return [concatenate(yf, yb)]
    if merge_mode == "sum":
        return [yf + yb]
    if merge_mode == "mul":
        return [yf * yb]
    if merge_mode == "ave":
        return [(yf + yb) / 2]
    return [yf, yb]


class _WrappedParams(MutableMapping):
    """Bidirectional's ``params``: a live view of both directions' params under
    ``forward_<name>`` / ``backward_<name>``. Reading gives the wrapped layer's own array (so
    in-place updates reach it); assigning a key replaces that weight in the wrapped layer."""

    def __init__(self, owner):
        self._owner = owner

    def _find(self, key):
        for prefix, sub in (("forward_", self._owner.forward_layer), ("backward_", self._owner.backward_layer)):
            if isinstance(key, str) and key.startswith(prefix) and key[len(prefix):] in sub.params:
                return sub, key[len(prefix):]
        raise KeyError(f"Bidirectional: no parameter {key!r}; the parameters are {', '.join(self)}")

    def __getitem__(self, key):
        sub, k = self._find(key)
        return sub.params[k]

    def __setitem__(self, key, value):
        sub, k = self._find(key)
        sub.params[k] = value

    def __delitem__(self, key):
        raise TypeError(f"Bidirectional: parameters cannot be removed. Received: del params[{key!r}]")

    def __iter__(self):
        for prefix, sub in (("forward_", self._owner.forward_layer), ("backward_", self._owner.backward_layer)):
            for k in sub.params:
                yield prefix + k

    def __len__(self):
        return len(self._owner.forward_layer.params) + len(self._owner.backward_layer.params)

    def __repr__(self):
        return repr(dict(self))


class Bidirectional(Layer):
    """Runs a recurrent layer forwards and a copy of it backwards, as Keras 3's ``Bidirectional``.

    Args:
        layer: a SimpleRNN, LSTM or GRU instance; the forward direction is a new layer built
            from its config (as Keras), so ``layer`` itself is never changed, built or shared.
        merge_mode: "concat" (default), "sum", "mul", "ave" or None (a list of both outputs).
        backward_layer: optional layer whose config gives the backward direction (default:
            ``layer``'s config with ``go_backwards`` flipped and seed + 1); it too is copied,
            never changed or shared.

    Call: ``layer(x, initial_state=None, mask=None)``; initial_state holds the forward
    layer's states, then the backward layer's. With return_sequences the backward output is
    flipped back to the forward time order before merging, and masked steps give zeros (both
    directions use ``zero_output_for_mask=return_sequences``, as Keras). Weights (Keras
    order): the forward layer's, then the backward layer's; ``params`` is a live view of
    them (``bi.params["forward_kernel"][...] -= lr * g`` updates the forward direction).
    """

    MERGE_MODES = ("concat", "sum", "mul", "ave", None)

    def __init__(self, layer, merge_mode="concat", weights=None, backward_layer=None, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        me = type(self).__name__
        if not isinstance(layer, _Recurrent):
            raise TypeError(f"{me}: `layer` must be a SimpleRNN, LSTM or GRU instance. "
                            f"Received: layer of type {type(layer).__name__}")
        if merge_mode not in self.MERGE_MODES:
            raise ValueError(f"{me}: `merge_mode` must be one of 'concat', 'sum', 'mul', 'ave', None. "
                             f"Received: merge_mode={merge_mode!r}")
        validation.unsupported(me, weights=(weights, None))
        if backward_layer is not None and (
                not isinstance(backward_layer, _Recurrent) or backward_layer.go_backwards == layer.go_backwards
                or backward_layer.return_sequences != layer.return_sequences
                or backward_layer.return_state != layer.return_state):
            raise ValueError(f"{me}: `backward_layer` must be a recurrent layer with the opposite go_backwards "
                             f"and the same return_sequences/return_state. Received: {backward_layer!r}")
        # as Keras: masked steps of returned sequences give zeros in both directions
        zero = layer.return_sequences
        self.forward_layer = _rebuilt(layer, zero_output_for_mask=zero, name=f"forward_{layer.name}")
        if backward_layer is None:
            self.backward_layer = _rebuilt(layer, go_backwards=not layer.go_backwards, zero_output_for_mask=zero,
                                           seed=None if layer.seed is None else layer.seed + 1,
                                           name=f"backward_{layer.name}")
        else:
            self.backward_layer = _rebuilt(backward_layer, zero_output_for_mask=zero, name=backward_layer.name)
        self.merge_mode = merge_mode
        self.return_sequences, self.return_state = layer.return_sequences, layer.return_state

    def _sublayers(self):
        return (self.forward_layer, self.backward_layer)

    @property
    def weight_names(self):
        return tuple(f"forward_{n}" for n in self.forward_layer.weight_names) + \
            tuple(f"backward_{n}" for n in self.backward_layer.weight_names)

    def _weights(self):
        return dict(self.params)

    def to(self, device):
        self.forward_layer.to(device)
        self.backward_layer.to(device)
        return super().to(device)

    @property
    def params(self):
        return _WrappedParams(self)

    @params.setter
    def params(self, value):
        if value:  # the base class initialises an empty dict; the weights live in the wrapped layers
            raise AttributeError("Bidirectional: `params` cannot be replaced; assign single entries "
                                 "(bi.params['forward_kernel'] = w), update them in place, or use set_weights()")

    def forward(self, x, training=False, initial_state=None, mask=None):
        xp = kernels.array_module(x)
        fs = bs = None
        if initial_state is not None:
            if not isinstance(initial_state, (list, tuple)):
                raise TypeError(f"{type(self).__name__}: `initial_state` must be a list of arrays (forward then "
                                f"backward states). Received: initial_state of type {type(initial_state).__name__}")
            states = list(initial_state)
            n = self.forward_layer.state_count
            if len(states) != 2 * n:
                raise ValueError(f"{type(self).__name__}: `initial_state` must hold {2 * n} arrays (forward "
                                 f"then backward states). Received: {len(states)} arrays")
            fs, bs = states[:n], states[n:]
        yf = self.forward_layer(x, training=training, initial_state=fs, mask=mask)
        yb = self.backward_layer(x, training=training, initial_state=bs, mask=mask)
        sf, sb = [], []
        if self.return_state:
            (yf, *sf), (yb, *sb) = yf, yb
        if self.return_sequences:
            yb = xp.ascontiguousarray(xp.flip(yb, axis=1))
        self._saved = (x.dtype, yf, yb, initial_state is not None)
        out = merge_directions(self.merge_mode, yf, yb, lambda a, b: xp.concatenate([a, b], axis=-1)) + sf + sb
        return out if len(out) > 1 else out[0]

    def backward_impl(self, dy):
        x_dtype, yf, yb, had_initial_state = self._saved
        xp = self._xp
        dys = list(dy) if isinstance(dy, (list, tuple)) else [dy]
        n_out = 2 if self.merge_mode is None else 1
        d_out, d_states = dys[:n_out], dys[n_out:]
        g = d_out[0]
        if self.merge_mode is None:
            dyf, dyb = d_out
        elif g is None:
            dyf = dyb = None
        elif self.merge_mode == "concat":
            u = self.forward_layer.units
            dyf, dyb = g[..., :u], g[..., u:]
        elif self.merge_mode == "sum":
            dyf = dyb = g
        elif self.merge_mode == "mul":
            dyf, dyb = g * yb, g * yf
        else:
            dyf = dyb = g / 2
        if dyb is not None and self.return_sequences:
            dyb = xp.flip(dyb, axis=1)
        dyf = None if dyf is None else xp.ascontiguousarray(dyf)
        dyb = None if dyb is None else xp.ascontiguousarray(dyb)
        n = self.forward_layer.state_count
        results = []
        for sub, d, ds in ((self.forward_layer, dyf, d_states[:n]), (self.backward_layer, dyb, d_states[n:])):
            if d is None and not any(s is not None for s in ds):
                d = xp.zeros(sub._output_meta[0][0] if isinstance(sub._output_meta, list) else sub._output_meta[0],
                             x_dtype)
            results.append(sub.backward([d] + list(ds) if sub.return_state else d))
        self.grads = {**{f"forward_{k}": v for k, v in self.forward_layer.grads.items()},
                      **{f"backward_{k}": v for k, v in self.backward_layer.grads.items()}}
        if had_initial_state:
            (dxf, *dsf), (dxb, *dsb) = results
            return [dxf + dxb] + dsf + dsb
        dxf, dxb = results
        return dxf + dxb


with_signature(Bidirectional)  # inspect.signature lists every argument


def __getattr__(name):
    """The PyTorch state-dict converters live in :mod:`gpulayers.layers.torch_weights`."""
    if name in ("from_torch_state_dict", "to_torch_state_dict"):
        from . import torch_weights

        return getattr(torch_weights, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

