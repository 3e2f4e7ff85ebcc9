"""Converters between PyTorch's ``nn.RNN``/``nn.LSTM``/``nn.GRU`` state dicts and the Keras-order
weights of gpulayers' SimpleRNN, LSTM and GRU (``layer.set_weights`` / ``layer.get_weights``)."""
from __future__ import annotations

import numpy as np

from .recurrent import GRU


_TORCH_GRU_ORDER = [1, 0, 2]  # PyTorch (r, z, n) blocks -> Keras (z, r, h)


def _blocks(a, order, axis=0):
    parts = np.split(np.asarray(a), len(order), axis=axis)
    return np.concatenate([parts[i] for i in order], axis=axis)


def from_torch_state_dict(kind, state_dict, suffix="_l0"):
    """Keras-order weights [kernel, recurrent_kernel, bias] from a PyTorch nn.RNN/LSTM/GRU state dict.

    ``kind``: "SimpleRNN", "LSTM" or "GRU" (the Keras layer to load them into; a GRU must use
    reset_after=True, PyTorch's formulation). Biases: the two PyTorch biases are summed for
    SimpleRNN and LSTM, and kept as the (2, 3 units) pair for GRU.
    """
    get = lambda k: np.asarray(state_dict[k + suffix].detach().cpu().numpy() if hasattr(  # noqa: E731
        state_dict[k + suffix], "detach") else state_dict[k + suffix])
    w_ih, w_hh = get("weight_ih"), get("weight_hh")
    has_bias = f"bias_ih{suffix}" in state_dict
    if kind == "GRU":
        weights = [_blocks(w_ih, _TORCH_GRU_ORDER).T, _blocks(w_hh, _TORCH_GRU_ORDER).T]
        if has_bias:
            weights.append(np.stack([_blocks(get("bias_ih"), _TORCH_GRU_ORDER),
                                     _blocks(get("bias_hh"), _TORCH_GRU_ORDER)]))
    elif kind in ("LSTM", "SimpleRNN"):
        weights = [w_ih.T, w_hh.T] + ([get("bias_ih") + get("bias_hh")] if has_bias else [])
    else:
        raise ValueError(f"from_torch_state_dict: `kind` must be 'SimpleRNN', 'LSTM' or 'GRU'. Received: kind={kind!r}")
    return [np.ascontiguousarray(w) for w in weights]


def to_torch_state_dict(layer, suffix="_l0"):
    """A PyTorch state dict (NumPy arrays) for ``layer``'s weights; load with
    ``module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``."""
    ws = layer.get_weights()
    if isinstance(layer, GRU):
        if not layer.reset_after:
            raise ValueError("to_torch_state_dict: PyTorch's GRU applies the reset gate after the matmul; "
                             "a GRU with reset_after=False has no PyTorch equivalent. Received: reset_after=False")
        sd = {"weight_ih": _blocks(ws[0].T, _TORCH_GRU_ORDER), "weight_hh": _blocks(ws[1].T, _TORCH_GRU_ORDER)}
        if layer.use_bias:
            sd["bias_ih"] = _blocks(ws[2][0], _TORCH_GRU_ORDER)
            sd["bias_hh"] = _blocks(ws[2][1], _TORCH_GRU_ORDER)
    else:
        sd = {"weight_ih": ws[0].T, "weight_hh": ws[1].T}
        if layer.use_bias:
            sd["bias_ih"], sd["bias_hh"] = ws[2], np.zeros_like(ws[2])
    return {k + suffix: np.ascontiguousarray(v) for k, v in sd.items()}
