"""Recurrent cells' kernel path: the reference's matmuls through the array module (cuBLAS on
the GPU), and per step one fused kernel from ``cuda/recurrent.cu`` that applies the gates and
the state update (forward) or their gradients (backward).

:func:`rnn_forward_kernel` and :func:`rnn_backward_kernel` take and return what
:func:`.recurrent_reference.rnn_forward` and :func:`~.recurrent_reference.rnn_backward` do,
including the saved record, so a layer (or ``gpulayers.torch``) switches paths per call.
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from ._common import acc_dtype as _acc_dtype
from .recurrent_reference import RnnSaved, split_bias

SOURCE = "recurrent.cu"
BLOCK = 256

# recurrent.cu's enums, read from the source by name: the cell is a template argument
# (Cell::lstm), an activation a runtime int argument (its Activation value).
Cell = kernels.cuda_enum(SOURCE, "Cell")
Activation = kernels.cuda_enum(SOURCE, "Activation")
STEP_FORWARD = kernels.Kernel(SOURCE, "rnn_step_forward", cell=Cell)
STEP_BACKWARD = kernels.Kernel(SOURCE, "rnn_step_backward", cell=Cell)
RESET_GATE_FORWARD = kernels.Kernel(SOURCE, "gru_reset_gate_forward")
RESET_GATE_BACKWARD = kernels.Kernel(SOURCE, "gru_reset_gate_backward")


def _launch(kernel, dtype, total, args, **template):
    kernel.launch(dtype, kernels.grid_1d(total, BLOCK), BLOCK, args, **template)


def _codes(spec):
    """The activation arguments: recurrent.cu's Activation values of the spec's two names."""
    return np.int32(Activation[spec.activation]), np.int32(Activation[spec.recurrent_activation])


def rnn_forward_kernel(spec, x, kernel, recurrent_kernel, bias=None, initial_state=None, mask=None):
    """Kernel path of :func:`.recurrent_reference.rnn_forward` (same returns): GEMMs plus one fused kernel per step."""
    xp = kernels.array_module(x)
    acc = _acc_dtype(x.dtype)
    u, gates = spec.units, spec.gates
    cell = Cell[spec.cell]
    xs = xp.swapaxes(x, 0, 1)
    ms = None if mask is None else xp.swapaxes(mask, 0, 1)
    if spec.go_backwards:
        xs, ms = xs[::-1], (None if ms is None else ms[::-1])
    xs = xp.ascontiguousarray(xs, dtype=acc)
    ms = xp.ones((1,), np.uint8) if ms is None else xp.ascontiguousarray(ms, dtype=np.uint8)
    has_mask = np.int32(mask is not None)
    # copies, as the reference keeps: backward differentiates the weights of this call even if an
    # optimizer updates `params` in place before it
    W, U = kernel.astype(acc), recurrent_kernel.astype(acc)
    b_in, b_rec = split_bias(spec, bias, u, acc) if bias is not None else (xp.zeros(gates * u, acc), None)
    steps, batch = xs.shape[:2]
    xw = xp.matmul(xs, W) + b_in.astype(acc, copy=False)  # (T, B, G u), one GEMM for every step
    # States of every step in one array: step t reads h_all[t] and writes h_all[t + 1], so the
    # states backward needs are kept without a copy per step.
    h_all = xp.empty((steps + 1, batch, u), acc)
    h_all[0] = 0 if initial_state is None else initial_state[0]
    c_all = None
    if spec.has_cell_state:
        c_all = xp.empty((steps + 1, batch, u), acc)
        c_all[0] = 0 if initial_state is None else initial_state[1]
    pre = xp.empty((steps, batch, gates * u), acc)
    extra = xp.empty((steps, batch, u), acc)
    outputs = xp.empty((steps, batch, u), x.dtype)
    act, ract = _codes(spec)
    dims = (np.int32(batch), np.int32(u))
    for t in range(steps):
        h = h_all[t]
        mask_t = ms[t] if mask is not None else ms
        c_prev, c_next = (c_all[t], c_all[t + 1]) if c_all is not None else (h, h_all[t + 1])  # unused if no c
        if spec.cell == "gru_reset_before":
            hu = xp.matmul(h, U[:, :2 * u])
            _launch(RESET_GATE_FORWARD, x.dtype, batch * u,
                    (xw[t], hu, h, pre[t], extra[t], *dims, ract))
            hu = xp.matmul(extra[t], U[:, 2 * u:])
        else:
            hu = xp.matmul(h, U)
            if b_rec is not None:
                hu += b_rec.astype(acc, copy=False)
        _launch(STEP_FORWARD, x.dtype, batch * u,
                (xw[t], hu, h, c_prev, mask_t, has_mask, pre[t], extra[t], h_all[t + 1], c_next,
                 outputs[t], *dims, act, ract, np.int32(spec.zero_output_for_mask)), cell=cell)
    saved = RnnSaved(xs=xs, mask=ms if mask is not None else None, pre=pre, h_prev=h_all[:-1],
                     c_prev=None if c_all is None else c_all[:-1], extra=extra, W=W, U=U, dtype=x.dtype,
                     has_bias=bias is not None)
    return outputs, [h_all[-1]] + ([c_all[-1]] if c_all is not None else []), saved


def rnn_backward_kernel(spec, saved, d_outputs, d_states):
    """Kernel path of :func:`.recurrent_reference.rnn_backward`: per step one fused gate-gradient kernel and the
    GEMM d_inner @ U^T; the weight gradients as one GEMM over all steps at the end."""
    xs, pre, W, U = saved.xs, saved.pre, saved.W, saved.U
    xp = kernels.array_module(xs)
    acc = xs.dtype
    u = spec.units
    cell = Cell[spec.cell]
    steps, batch = xs.shape[:2]
    dh = xp.zeros((batch, u), acc) if d_states[0] is None else xp.ascontiguousarray(d_states[0], dtype=acc)
    dc = None
    if spec.has_cell_state:
        dc = xp.zeros((batch, u), acc) if len(d_states) < 2 or d_states[1] is None else \
            xp.ascontiguousarray(d_states[1], dtype=acc)
    d_outputs = xp.ascontiguousarray(d_outputs, dtype=acc)
    d_xw = xp.empty_like(pre)
    d_inner = xp.empty_like(pre) if spec.cell == "gru" else d_xw
    act, ract = _codes(spec)
    dims = (np.int32(batch), np.int32(u))
    has_mask = np.int32(saved.mask is not None)
    no_mask = xp.ones((1,), np.uint8)
    for t in reversed(range(steps)):
        mask_t = saved.mask[t] if saved.mask is not None else no_mask
        dh_direct = xp.empty_like(dh)
        dc_prev = xp.empty_like(dh) if dc is not None else dh_direct
        _launch(STEP_BACKWARD, saved.dtype, batch * u,
                (d_outputs[t], pre[t], saved.extra[t], saved.h_prev[t],
                 saved.c_prev[t] if dc is not None else dh, mask_t, has_mask, dh, dc if dc is not None else dh,
                 d_xw[t], d_inner[t], dh_direct, dc_prev, *dims, act, ract, np.int32(spec.zero_output_for_mask)),
                cell=cell)
        if spec.cell == "gru_reset_before":
            d_rh = xp.matmul(d_xw[t, :, 2 * u:], U[:, 2 * u:].T)
            _launch(RESET_GATE_BACKWARD, saved.dtype, batch * u,
                    (d_rh, pre[t], saved.h_prev[t], d_xw[t], dh_direct, *dims, ract))
            dh = dh_direct + xp.matmul(d_xw[t, :, :2 * u], U[:, :2 * u].T)
        else:
            dh = dh_direct + xp.matmul(d_inner[t], U.T)
        if dc is not None:
            dc = dc_prev
    flat = lambda v: v.reshape(steps * batch, -1)  # noqa: E731
    grads = {"kernel": xp.matmul(flat(xs).T, flat(d_xw))}
    if spec.cell == "gru_reset_before":
        grads["recurrent_kernel"] = xp.concatenate(
            [xp.matmul(flat(saved.h_prev).T, flat(d_xw[:, :, :2 * u])),
             xp.matmul(flat(saved.extra).T, flat(d_xw[:, :, 2 * u:]))], axis=1)
    else:
        grads["recurrent_kernel"] = xp.matmul(flat(saved.h_prev).T, flat(d_inner))
    if saved.has_bias:
        grads["bias"] = xp.stack([d_xw.sum((0, 1)), d_inner.sum((0, 1))]) if spec.cell == "gru" \
            else d_xw.sum((0, 1))
    dxs = xp.matmul(d_xw, W.T)
    if spec.go_backwards:
        dxs = dxs[::-1]
    dx = xp.ascontiguousarray(xp.swapaxes(dxs, 0, 1)).astype(saved.dtype)
    return dx, [dh] + ([dc] if dc is not None else []), grads
