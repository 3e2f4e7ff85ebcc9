"""Optimizers with Keras 3's arguments and update rules: SGD, Adam, AdamW, RMSprop.

``optimizer.apply(model_or_layer)`` updates every array in ``target.params`` IN PLACE (the
same array objects, so every layer and wrapper sees the new values) from ``target.grads``,
or from an explicit ``grads`` dict with the same keys.
One step, as Keras 3's ``Optimizer.apply``:

1. clip the gradients: ``clipnorm`` (each gradient to that L2 norm), or
   ``global_clipnorm`` (all gradients together), or ``clipvalue`` (elementwise);
2. weight decay (``weight_decay``; AdamW's default 0.004): p = p - p * weight_decay * lr;
3. the update rule (below) with lr = ``learning_rate`` (a number, or a callable of the step
   count, as a Keras LearningRateSchedule), then ``iterations += 1``.

Update rules (g the clipped gradient, t = iterations + 1):
  SGD      m = momentum * m - lr * g; p += m (nesterov: p += momentum * m - lr * g);
           without momentum p -= lr * g
  Adam     m += (g - m)(1 - beta_1); v += (g^2 - v)(1 - beta_2);
           p -= m * lr sqrt(1 - beta_2^t) / (1 - beta_1^t) / (sqrt(v) + epsilon);
           amsgrad: v_hat = max(v_hat, v) replaces v in the last step
  RMSprop  v = rho v + (1 - rho) g^2; centered: a = rho a + (1 - rho) g, d = v - a^2 + eps,
           else d = v + eps; step = lr g / sqrt(d); momentum: mo = momentum mo + step, p -= mo,
           else p -= step

On NumPy arrays the step is NumPy code (the reference); on CuPy arrays (and on NumPy inside
``gpulayers.simulate()``) it is one fused elementwise kernel per parameter array that reads
the gradient once and updates the parameter and its slots in place.

State (slots such as Adam's m and v, and ``iterations``) comes out of ``get_state()`` as
NumPy arrays and goes back with ``set_state()``; ``Sequential.save_weights`` stores it.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import kernels


def _number(opt, arg, value, low=0.0, high=math.inf, low_open=False, allow_none=False):
    if value is None and allow_none:
        return None
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) \
            or value < low or value > high or (low_open and value == low):
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise ValueError(f"{opt}: `{arg}` must be a number in {bound}. Received: {arg}={value!r}")
    return float(value)


# One fused kernel per update rule; T is the parameter dtype (float32 or float64).
_PRE = "const T gs = g * scale; p = p - p * wd_lr;"
_KERNELS = {
    "sgd": ("T g, T scale, T wd_lr, T lr", "T p", _PRE + "p = p - gs * lr;"),
    "sgd_momentum": ("T g, T scale, T wd_lr, T lr, T momentum, int32 nesterov", "T p, T m",
                     _PRE + "m = m * momentum - gs * lr;"
                     "if (nesterov) { p = p + (m * momentum - gs * lr); } else { p = p + m; }"),
    "adam": ("T g, T scale, T wd_lr, T alpha, T one_minus_beta_1, T one_minus_beta_2, T epsilon",
             "T p, T m, T v",
             _PRE + "m = m + (gs - m) * one_minus_beta_1; v = v + (gs * gs - v) * one_minus_beta_2;"
             "p = p - m * alpha / (sqrt(v) + epsilon);"),
    "adam_amsgrad": ("T g, T scale, T wd_lr, T alpha, T one_minus_beta_1, T one_minus_beta_2, T epsilon",
                     "T p, T m, T v, T v_hat",
                     _PRE + "m = m + (gs - m) * one_minus_beta_1; v = v + (gs * gs - v) * one_minus_beta_2;"
                     "v_hat = v_hat > v ? v_hat : v; p = p - m * alpha / (sqrt(v_hat) + epsilon);"),
    "rmsprop": ("T g, T scale, T wd_lr, T lr, T rho, T epsilon", "T p, T v",
                _PRE + "v = rho * v + (1 - rho) * gs * gs; p = p - lr * gs / sqrt(v + epsilon);"),
    "rmsprop_momentum": ("T g, T scale, T wd_lr, T lr, T rho, T epsilon, T momentum", "T p, T v, T mo",
                         _PRE + "v = rho * v + (1 - rho) * gs * gs;"
                         "mo = momentum * mo + lr * gs / sqrt(v + epsilon); p = p - mo;"),
    "rmsprop_centered": ("T g, T scale, T wd_lr, T lr, T rho, T epsilon", "T p, T v, T a",
                         _PRE + "v = rho * v + (1 - rho) * gs * gs; a = rho * a + (1 - rho) * gs;"
                         "p = p - lr * gs / sqrt(v - a * a + epsilon);"),
    "rmsprop_centered_momentum": ("T g, T scale, T wd_lr, T lr, T rho, T epsilon, T momentum",
                                  "T p, T v, T a, T mo",
                                  _PRE + "v = rho * v + (1 - rho) * gs * gs; a = rho * a + (1 - rho) * gs;"
                                  "mo = momentum * mo + lr * gs / sqrt(v - a * a + epsilon); p = p - mo;"),
}


def _kernel(name):
    ins, outs, op = _KERNELS[name]
    return kernels.elementwise_kernel(ins, outs, op, f"gpulayers_{name}")


def named_parameters(target):
    """[(name, params dict, key)] of a model or layer: names are the model's keys, or
    "<layer name>/<key>" for a single layer."""
    params = target.params
    prefix = "" if hasattr(target, "layers") else f"{target.name}/"
    return [(prefix + k, k) for k in params]


class Optimizer:
    """Base optimizer: clipping, weight decay, learning rate, slots, state save/restore."""

    slot_names: tuple = ()

    def __init__(self, learning_rate=0.001, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None,
                 loss_scale_factor=None, gradient_accumulation_steps=None, name=None, **kwargs):
        me = type(self).__name__
        if kwargs:
            raise TypeError(f"{me}: unknown argument(s) {', '.join(sorted(kwargs))}. Received: {kwargs!r}")
        if callable(learning_rate):
            self.learning_rate = learning_rate
        else:
            self.learning_rate = _number(me, "learning_rate", learning_rate, low_open=True)
        self.weight_decay = _number(me, "weight_decay", weight_decay, allow_none=True)
        self.clipnorm = _number(me, "clipnorm", clipnorm, low_open=True, allow_none=True)
        self.clipvalue = _number(me, "clipvalue", clipvalue, low_open=True, allow_none=True)
        self.global_clipnorm = _number(me, "global_clipnorm", global_clipnorm, low_open=True, allow_none=True)
        given = [a for a in ("clipnorm", "clipvalue", "global_clipnorm") if getattr(self, a) is not None]
        if len(given) > 1:
            raise ValueError(f"{me}: only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. "
                             f"Received: {', '.join(f'{a}={getattr(self, a)}' for a in given)}")
        for arg, value, default in (("use_ema", use_ema, False), ("ema_overwrite_frequency", ema_overwrite_frequency,
                                    None), ("loss_scale_factor", loss_scale_factor, None),
                                    ("gradient_accumulation_steps", gradient_accumulation_steps, None)):
            if value != default:
                raise NotImplementedError(f"{me}: `{arg}={value!r}` is not supported yet (only {arg}={default!r}).")
        self.name = name or me.lower()
        self.iterations = 0
        self.slots: dict[str, dict] = {}  # parameter name -> slot name -> array

    # -- one step ---------------------------------------------------------------
    def current_learning_rate(self) -> float:
        lr = self.learning_rate
        return float(lr(self.iterations)) if callable(lr) else lr

    def apply(self, target, grads=None):
        """One update of ``target.params`` (a model or a layer), in place, from ``target.grads`` or
        from ``grads``: a dict with the same keys (e.g. gradients accumulated over micro-batches)."""
        me = type(self).__name__
        if not hasattr(target, "params") or not hasattr(target, "grads"):
            raise TypeError(f"{me}: apply() takes a model or a layer (with params and grads). "
                            f"Received: {type(target).__name__}")
        params = target.params
        if grads is None:
            grads = target.grads
        elif not isinstance(grads, dict):
            raise TypeError(f"{me}: `grads` must be a dict keyed like the target's params. "
                            f"Received: grads of type {type(grads).__name__}")
        names = named_parameters(target)
        # validate everything before changing anything
        for full, k in names:
            if k not in grads or grads[k] is None:
                raise ValueError(f"{me}: no gradient for parameter {full!r}; call backward() before apply(). "
                                 f"Received: gradients for {sorted(grads)}")
            p, g = params[k], grads[k]
            if tuple(g.shape) != tuple(p.shape) or kernels.array_module(g) is not kernels.array_module(p):
                raise ValueError(f"{me}: the gradient of {full!r} must match its parameter ({tuple(p.shape)} "
                                 f"on the same device). Received: gradient of shape {tuple(g.shape)}, "
                                 f"type {type(g).__name__}")
            slots = self.slots.get(full)
            if slots and any(tuple(s.shape) != tuple(p.shape) for s in slots.values()):
                raise ValueError(f"{me}: the optimizer state of {full!r} has shape "
                                 f"{tuple(next(iter(slots.values())).shape)} but the parameter has "
                                 f"{tuple(p.shape)}; use a new optimizer for another model")
        if not names:
            return
        lr = self.current_learning_rate()
        scales = self._clip_scales([(params[k], grads[k].astype(params[k].dtype, copy=False)) for _, k in names])
        for (full, k), scale in zip(names, scales):
            p = params[k]
            g = grads[k].astype(p.dtype, copy=False)
            if self.clipvalue is not None:
                g = kernels.array_module(g).clip(g, -self.clipvalue, self.clipvalue)
            slots = self._slots_for(full, p)
            wd_lr = (self.weight_decay or 0.0) * lr
            xp, on_kernels = kernels.kernel_path(p)
            if on_kernels:
                self._update_kernel(p, g, scale, wd_lr, lr, slots)
            else:
                gs = g * scale if scale is not None else g
                if wd_lr:
                    p -= p * (self.weight_decay * lr)
                self._update_reference(p, gs, lr, slots)
        self.iterations += 1

    def _clip_scales(self, pairs):
        """Per-parameter gradient scale factors (None: no scaling), as Keras's clip_by_norm / global norm."""
        if self.clipnorm is not None:
            out = []
            for _, g in pairs:
                xp = kernels.array_module(g)
                norm = xp.sqrt((g * g).sum())
                out.append(g.dtype.type(self.clipnorm) / xp.maximum(norm, g.dtype.type(self.clipnorm)))
            return out
        if self.global_clipnorm is not None:
            xp = kernels.array_module(pairs[0][1])
            total = sum((g.astype(np.float64) ** 2).sum() for _, g in pairs)
            norm = xp.sqrt(total)
            c = self.global_clipnorm
            scale = c * xp.minimum(1 / norm, 1 / c) if float(norm) > 0 else xp.asarray(1.0)
            return [scale.astype(g.dtype) for _, g in pairs]
        return [None] * len(pairs)

    def _slots_for(self, full, p):
        xp = kernels.array_module(p)
        slots = self.slots.get(full)
        if slots is None:
            slots = self.slots[full] = {s: xp.zeros(p.shape, p.dtype) for s in self.active_slots()}
        for s, a in slots.items():  # the model may have moved between devices
            if kernels.array_module(a) is not xp or a.dtype != p.dtype:
                slots[s] = xp.asarray(kernels.cupy_module().asnumpy(a) if kernels.is_gpu_array(a) else a,
                                      dtype=p.dtype)
        return slots

    def _update_kernel(self, p, g, scale, wd_lr, lr, slots):
        t = p.dtype.type
        scale = t(1) if scale is None else scale
        name, scalars, outs = self.kernel_call(t, lr, slots)
        _kernel(name)(g, scale, t(wd_lr), *scalars, p, *outs)

    # -- subclasses ---------------------------------------------------------------
    def active_slots(self) -> tuple:
        return self.slot_names

    def kernel_call(self, t, lr, slots):  # pragma: no cover - abstract
        """(kernel name, scalar arguments after wd_lr, slot arrays in kernel order)."""
        raise NotImplementedError

    def _update_reference(self, p, g, lr, slots):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- state ------------------------------------------------------------------
    def get_state(self) -> dict:
        """{"iterations": int array, "<slot>/<parameter name>": NumPy array}."""
        cp = kernels.cupy_module()
        state = {"iterations": np.array(self.iterations, np.int64)}
        for full, slots in self.slots.items():
            for s, a in slots.items():
                state[f"{s}/{full}"] = cp.asnumpy(a) if kernels.is_gpu_array(a) else np.array(a)
        return state

    def set_state(self, state: dict) -> None:
        """Restore ``get_state()``'s dict (all or nothing)."""
        me = type(self).__name__
        if "iterations" not in state:
            raise ValueError(f"{me}: set_state() needs an 'iterations' entry. Received: keys {sorted(state)}")
        slots: dict[str, dict] = {}
        for key, value in state.items():
            if key == "iterations":
                continue
            slot, _, full = key.partition("/")
            if slot not in self.active_slots() or not full:
                raise ValueError(f"{me}: unknown state entry {key!r} (slots of this optimizer: "
                                 f"{', '.join(self.active_slots()) or 'none'}). Received: keys {sorted(state)}")
            slots.setdefault(full, {})[slot] = np.array(value)
        for full, d in slots.items():
            if set(d) != set(self.active_slots()):
                raise ValueError(f"{me}: state of {full!r} must hold {', '.join(self.active_slots())}. "
                                 f"Received: {', '.join(sorted(d))}")
        self.iterations = int(np.asarray(state["iterations"]))
        self.slots = slots

    def __repr__(self):
        return f"<{type(self).__name__} learning_rate={self.learning_rate} iterations={self.iterations}>"


class SGD(Optimizer):
    """Gradient descent with optional (Nesterov) momentum, as ``keras.optimizers.SGD``.

    Args: learning_rate=0.01, momentum=0.0 (in [0, 1]), nesterov=False, and the common
    weight_decay, clipnorm, clipvalue, global_clipnorm.
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.momentum = _number("SGD", "momentum", momentum, 0.0, 1.0)
        if not isinstance(nesterov, bool):
            raise TypeError(f"SGD: `nesterov` must be a bool. Received: nesterov={nesterov!r}")
        self.nesterov = nesterov

    def active_slots(self):
        return ("momentum",) if self.momentum > 0 else ()

    def kernel_call(self, t, lr, slots):
        if self.momentum > 0:
            return "sgd_momentum", (t(lr), t(self.momentum), np.int32(self.nesterov)), (slots["momentum"],)
        return "sgd", (t(lr),), ()

    def _update_reference(self, p, g, lr, slots):
        if self.momentum > 0:
            m = slots["momentum"]
            m *= self.momentum
            m -= g * lr
            p += (m * self.momentum - g * lr) if self.nesterov else m
        else:
            p -= g * lr


class Adam(Optimizer):
    """Adam, as ``keras.optimizers.Adam``.

    Args: learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, and
    the common weight_decay, clipnorm, clipvalue, global_clipnorm.
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        me = type(self).__name__
        self.beta_1 = _number(me, "beta_1", beta_1, 0.0, 1.0)
        self.beta_2 = _number(me, "beta_2", beta_2, 0.0, 1.0)
        self.epsilon = _number(me, "epsilon", epsilon)
        if not isinstance(amsgrad, bool):
            raise TypeError(f"{me}: `amsgrad` must be a bool. Received: amsgrad={amsgrad!r}")
        self.amsgrad = amsgrad

    def active_slots(self):
        return ("m", "v", "v_hat") if self.amsgrad else ("m", "v")

    def _alpha(self, lr):
        step = self.iterations + 1
        return lr * math.sqrt(1 - self.beta_2 ** step) / (1 - self.beta_1 ** step)

    def kernel_call(self, t, lr, slots):
        scalars = (t(self._alpha(lr)), t(1 - self.beta_1), t(1 - self.beta_2), t(self.epsilon))
        names = self.active_slots()
        return ("adam_amsgrad" if self.amsgrad else "adam"), scalars, tuple(slots[s] for s in names)

    def _update_reference(self, p, g, lr, slots):
        xp = kernels.array_module(p)
        m, v = slots["m"], slots["v"]
        m += (g - m) * (1 - self.beta_1)
        v += (g * g - v) * (1 - self.beta_2)
        if self.amsgrad:
            xp.maximum(slots["v_hat"], v, out=slots["v_hat"])
            v = slots["v_hat"]
        p -= m * self._alpha(lr) / (xp.sqrt(v) + self.epsilon)


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``keras.optimizers.AdamW`` (weight_decay=0.004)."""

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, **kwargs):
        if weight_decay is None:
            raise ValueError("AdamW: `weight_decay` must be a number (use Adam for none). Received: weight_decay=None")
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         amsgrad=amsgrad, weight_decay=weight_decay, **kwargs)


class RMSprop(Optimizer):
    """RMSprop, as ``keras.optimizers.RMSprop``.

    Args: learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, and the
    common weight_decay, clipnorm, clipvalue, global_clipnorm.
    """

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.rho = _number("RMSprop", "rho", rho, 0.0, 1.0)
        self.momentum = _number("RMSprop", "momentum", momentum, 0.0, 1.0)
        self.epsilon = _number("RMSprop", "epsilon", epsilon)
        if not isinstance(centered, bool):
            raise TypeError(f"RMSprop: `centered` must be a bool. Received: centered={centered!r}")
        self.centered = centered

    def active_slots(self):
        return ("velocity",) + (("average_gradient",) if self.centered else ()) + \
            (("momentum",) if self.momentum > 0 else ())

    def kernel_call(self, t, lr, slots):
        name = "rmsprop" + ("_centered" if self.centered else "") + ("_momentum" if self.momentum > 0 else "")
        scalars = (t(lr), t(self.rho), t(self.epsilon)) + ((t(self.momentum),) if self.momentum > 0 else ())
        return name, scalars, tuple(slots[s] for s in self.active_slots())

    def _update_reference(self, p, g, lr, slots):
        xp = kernels.array_module(p)
        v = slots["velocity"]
        v *= self.rho
        v += (1 - self.rho) * g * g
        if self.centered:
            a = slots["average_gradient"]
            a *= self.rho
            a += (1 - self.rho) * g
            step = lr * g / xp.sqrt(v - a * a + self.epsilon)
        else:
            step = lr * g / xp.sqrt(v + self.epsilon)
        if self.momentum > 0:
            mo = slots["momentum"]
            mo *= self.momentum
            mo += step
            p -= mo
        else:
            p -= step


ALIASES = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def get(identifier) -> Optimizer:
    """An Optimizer instance from an instance or a name ("sgd", "adam", "adamw", "rmsprop")."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in ALIASES:
        return ALIASES[identifier.lower()]()
    raise ValueError(f"compile: `optimizer` must be a gpulayers.optimizers.Optimizer or one of "
                     f"{', '.join(map(repr, ALIASES))}. Received: optimizer={identifier!r}")
