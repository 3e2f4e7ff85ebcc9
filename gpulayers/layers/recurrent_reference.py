"""Recurrent cells' NumPy reference: SimpleRNN, LSTM and GRU as Keras 3 computes them.

Per time step, vectorised over batch and units: the input projection of all steps is one
matmul, the recurrent projection one matmul per step, the weight gradients one matmul over
all steps at the end. :mod:`.recurrent_kernels` is the kernel path with the same signatures
and the same saved record (:class:`RnnSaved`); :mod:`.recurrent` holds the layer classes.

Cells, with xw = x @ kernel + input bias and U = recurrent_kernel (gate blocks in Keras
order, each ``units`` wide):
  SimpleRNN  h' = act(xw + h U)
  LSTM       [i f c o] = xw + h U; i, f, o = ract(.); c' = f c + i act(c~); h' = o act(c')
  GRU        [z r h]: z = ract(xw_z + (h U)_z), r = ract(xw_r + (h U)_r),
             reset_after: h~ = act(xw_h + r * (h U_h + b_rec_h)) (recurrent bias b_rec added
             to h U), else h~ = act(xw_h + (r h) U_h); h' = z h + (1 - z) h~
Masked steps (mask False) keep the state, and their output is the carried state h (as
Keras: the output repeats the previous state, the initial state before the first unmasked
step), or zeros with ``zero_output_for_mask`` (which Bidirectional sets for sequences).
``go_backwards`` processes time reversed and returns the output sequence in that (reversed)
order, as Keras.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._common import acc_dtype as _acc_dtype

ACTIVATIONS = ("linear", "tanh", "sigmoid", "relu", "hard_sigmoid")
CELLS = ("simple_rnn", "lstm", "gru", "gru_reset_before")
GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3, "gru_reset_before": 3}


@dataclass(frozen=True)
class Spec:
    """What a recurrent layer computes (everything but the weights)."""
    cell: str  # one of CELLS
    units: int
    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"
    go_backwards: bool = False
    zero_output_for_mask: bool = False

    @property
    def gates(self):
        return GATES[self.cell]

    @property
    def has_cell_state(self):
        return self.cell == "lstm"



def activate(name, a):
    """Keras 3's activations (hard_sigmoid = relu6(a + 3) / 6)."""
    if name == "tanh":
        return np.tanh(a)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-a))
    if name == "relu":
        return np.maximum(a, 0)
    if name == "hard_sigmoid":
        return np.clip(a / 6 + 0.5, 0, 1)
    return a


def activation_grad(name, a):
    """d act(a) / da from the pre-activation a."""
    if name == "tanh":
        return 1 - np.tanh(a) ** 2
    if name == "sigmoid":
        s = 1 / (1 + np.exp(-a))
        return s * (1 - s)
    if name == "relu":
        return (a > 0).astype(a.dtype)
    if name == "hard_sigmoid":
        return ((a > -3) & (a < 3)).astype(a.dtype) / 6
    return np.ones_like(a)


def _activation_and_grad(name, a):
    """(act(a), d act / da), the derivative from the activation's value where it has one."""
    if name == "tanh":
        t = np.tanh(a)
        return t, 1 - t * t
    if name == "sigmoid":
        s = activate(name, a)
        return s, s * (1 - s)
    return activate(name, a), activation_grad(name, a)


@dataclass
class RnnSaved:
    """What backward needs from a forward call: the same record for the NumPy reference and the
    kernel path. Arrays are in processing order (reversed for go_backwards) and in the
    accumulate dtype (float32 for float16)."""
    xs: object  # (T, B, F) the inputs
    mask: object  # (T, B) the mask (bool or uint8), or None: every step counts
    pre: object  # (T, B, G u) pre-activations of every gate
    h_prev: object  # (T, B, u) the state h before each step
    c_prev: object  # LSTM: (T, B, u) the cell state before each step; else None
    extra: object  # (T, B, u) LSTM: c'; GRU: h U_h + b_rec_h (reset_after) or r h
    W: object  # kernel, as used by this call
    U: object  # recurrent_kernel, as used by this call
    dtype: object  # the input's dtype (dx is returned in it)
    has_bias: bool


def split_bias(spec, bias, u, dtype):
    """(input-side bias (G u,), recurrent bias (G u,) or None) from Keras's bias."""
    if bias is None:
        return np.zeros(spec.gates * u, dtype), None
    if spec.cell == "gru":
        return bias[0], bias[1]
    return bias, None


# ----------------------------------------------------------------------------- forward and backward

def rnn_forward(spec, x, kernel, recurrent_kernel, bias=None, initial_state=None, mask=None):
    """Runs the layer over x (batch, time, features).

    Returns (outputs (time, batch, units) in processing order, final states [h(, c)], saved),
    where ``saved`` is what :func:`rnn_backward` needs. float16 is computed in float32.
    """
    acc = _acc_dtype(x.dtype)
    u = spec.units
    xs = np.swapaxes(x, 0, 1).astype(acc)  # (T, B, F)
    ms = np.ones(xs.shape[:2], bool) if mask is None else np.swapaxes(mask, 0, 1)
    if spec.go_backwards:
        xs, ms = xs[::-1], ms[::-1]
    W, U = kernel.astype(acc), recurrent_kernel.astype(acc)
    b_in, b_rec = split_bias(spec, bias, u, acc)
    xw = xs @ W + b_in.astype(acc)  # (T, B, G u): the input projection of every step at once
    batch = xs.shape[1]
    h = np.zeros((batch, u), acc) if initial_state is None else initial_state[0].astype(acc)
    c = None
    if spec.has_cell_state:
        c = np.zeros((batch, u), acc) if initial_state is None else initial_state[1].astype(acc)
    act, ract = spec.activation, spec.recurrent_activation
    steps = len(xs)
    pre = np.empty((steps, batch, spec.gates * u), acc)  # pre-activations of every gate
    h_prev_all = np.empty((steps, batch, u), acc)
    extra = np.empty((steps, batch, u), acc)  # lstm: c'; gru: (h U_h + b) or r h
    c_prev_all = np.empty((steps, batch, u), acc) if c is not None else None
    outputs = np.empty((steps, batch, u), acc)
    masked = mask is not None
    for t in range(steps):
        h_prev_all[t] = h
        a = pre[t]  # the pre-activations of this step, written in place
        if spec.cell == "simple_rnn":
            np.matmul(h, U, out=a)  # the one GEMM of the step
            a += xw[t]
            h_new = activate(act, a)
        elif spec.cell == "lstm":
            np.matmul(h, U, out=a)
            a += xw[t]
            gates = activate(ract, a)  # i, f and o (the c block is not used)
            g = activate(act, a[:, 2 * u:3 * u])
            c_prev_all[t] = c
            c_new = gates[:, u:2 * u] * c
            c_new += gates[:, :u] * g
            extra[t] = c_new
            h_new = gates[:, 3 * u:] * activate(act, c_new)
        else:
            if spec.cell == "gru":
                inner = h @ U
                if b_rec is not None:
                    inner += b_rec.astype(acc)
                np.add(xw[t, :, :2 * u], inner[:, :2 * u], out=a[:, :2 * u])
                zr = activate(ract, a[:, :2 * u])
                extra[t] = inner[:, 2 * u:]
                np.multiply(zr[:, u:], extra[t], out=a[:, 2 * u:])
                a[:, 2 * u:] += xw[t, :, 2 * u:]
            else:  # reset before: a second GEMM on r h, as the kernel path
                np.matmul(h, U[:, :2 * u], out=a[:, :2 * u])
                a[:, :2 * u] += xw[t, :, :2 * u]
                zr = activate(ract, a[:, :2 * u])
                np.multiply(zr[:, u:], h, out=extra[t])
                np.matmul(extra[t], U[:, 2 * u:], out=a[:, 2 * u:])
                a[:, 2 * u:] += xw[t, :, 2 * u:]
            z = zr[:, :u]
            hh = activate(act, a[:, 2 * u:])
            h_new = z * h
            h_new += (1 - z) * hh
        if not masked:
            h = h_new
            c = c_new if c is not None else None
            outputs[t] = h
            continue
        m = ms[t][:, None]
        h = np.where(m, h_new, h)
        if c is not None:
            c = np.where(m, c_new, c)
        outputs[t] = np.where(m, h_new, 0) if spec.zero_output_for_mask else h
    saved = RnnSaved(xs=xs, mask=ms if mask is not None else None, pre=pre, h_prev=h_prev_all, c_prev=c_prev_all,
                     extra=extra, W=W, U=U, dtype=x.dtype, has_bias=bias is not None)
    states = [h] + ([c] if c is not None else [])
    return outputs, states, saved


def rnn_backward(spec, saved, d_outputs, d_states):
    """Backpropagation through time.

    d_outputs: (time, batch, units) gradients of the outputs in processing order (zeros
    where none); d_states: [dh(, dc)] gradients of the final states (None for none).
    Returns (dx (batch, time, features), [dh0(, dc0)], {"kernel", "recurrent_kernel", "bias"}).
    """
    xs, pre, W, U = saved.xs, saved.pre, saved.W, saved.U
    ms = saved.mask if saved.mask is not None else np.ones(xs.shape[:2], bool)
    acc = xs.dtype
    u = spec.units
    steps, batch = xs.shape[:2]
    act, ract = spec.activation, spec.recurrent_activation
    dh = np.zeros((batch, u), acc) if d_states[0] is None else d_states[0].astype(acc)
    dc = None
    if spec.has_cell_state:
        dc = np.zeros((batch, u), acc) if len(d_states) < 2 or d_states[1] is None else d_states[1].astype(acc)
    d_xw = np.empty_like(pre)  # gradients of the input-side pre-activations
    d_inner = np.empty_like(pre)  # ... of the recurrent-side (h U) pre-activations
    for t in reversed(range(steps)):
        m = ms[t][:, None]
        g = d_outputs[t].astype(acc)
        if spec.zero_output_for_mask:  # a masked step's output is 0: its gradient goes nowhere
            dh_new, dh_keep = np.where(m, dh + g, 0), np.where(m, 0, dh)
        else:  # the output is the carried state h
            dh_new, dh_keep = np.where(m, dh + g, 0), np.where(m, 0, dh + g)
        h_prev, a = saved.h_prev[t], pre[t]
        if spec.cell == "simple_rnn":
            da = dh_new * activation_grad(act, a)
            d_xw[t] = d_inner[t] = da
            dh = dh_keep + da @ U.T
        elif spec.cell == "lstm":
            gates, d_gates = _activation_and_grad(ract, a)  # i, f, o (the c block is recomputed below)
            i, f, og = gates[:, :u], gates[:, u:2 * u], gates[:, 3 * u:]
            gg, d_gg = _activation_and_grad(act, a[:, 2 * u:3 * u])
            c_new, c_prev = saved.extra[t], saved.c_prev[t]
            act_c, d_act_c = _activation_and_grad(act, c_new)
            dc_new = np.where(m, dc, 0) + dh_new * og * d_act_c
            da = d_xw[t]  # written in place, block by block
            np.multiply(dc_new * gg, d_gates[:, :u], out=da[:, :u])
            np.multiply(dc_new * c_prev, d_gates[:, u:2 * u], out=da[:, u:2 * u])
            np.multiply(dc_new * i, d_gg, out=da[:, 2 * u:3 * u])
            np.multiply(dh_new * act_c, d_gates[:, 3 * u:], out=da[:, 3 * u:])
            d_inner[t] = da
            dh = dh_keep + da @ U.T
            dc = np.where(m, 0, dc) + dc_new * f
        else:
            zr, d_zr = _activation_and_grad(ract, a[:, :2 * u])
            z, r = zr[:, :u], zr[:, u:]
            hh, d_hh = _activation_and_grad(act, a[:, 2 * u:])
            dz = dh_new * (h_prev - hh) * d_zr[:, :u]
            dhp = dh_new * (1 - z) * d_hh
            extra = saved.extra[t]
            if spec.cell == "gru":  # extra = h U_h + b_rec_h
                dr = dhp * extra * d_zr[:, u:]
                d_xw[t] = np.concatenate([dz, dr, dhp], axis=1)
                d_inner[t] = np.concatenate([dz, dr, dhp * r], axis=1)
                dh = dh_keep + dh_new * z + d_inner[t] @ U.T
            else:  # extra = r h
                d_rh = dhp @ U[:, 2 * u:].T
                dr = d_rh * h_prev * d_zr[:, u:]
                d_xw[t] = d_inner[t] = np.concatenate([dz, dr, dhp], axis=1)
                dh = dh_keep + dh_new * z + d_rh * r + d_inner[t, :, :2 * u] @ U[:, :2 * u].T
    # weight gradients: one matmul over all steps
    flat = lambda v: v.reshape(steps * batch, -1)  # noqa: E731
    grads = {"kernel": flat(xs).T @ flat(d_xw)}
    if spec.cell == "gru_reset_before":
        d_u = np.concatenate([flat(saved.h_prev).T @ flat(d_inner[:, :, :2 * u]),
                              flat(saved.extra).T @ flat(d_inner[:, :, 2 * u:])], axis=1)
    else:
        d_u = flat(saved.h_prev).T @ flat(d_inner)
    grads["recurrent_kernel"] = d_u
    if saved.has_bias:
        grads["bias"] = np.stack([d_xw.sum((0, 1)), d_inner.sum((0, 1))]) if spec.cell == "gru" \
            else d_xw.sum((0, 1))
    dxs = d_xw @ W.T
    if spec.go_backwards:
        dxs = dxs[::-1]
    dx = np.swapaxes(dxs, 0, 1).astype(saved.dtype)
    d_init = [dh] + ([dc] if dc is not None else [])
    return dx, d_init, grads
