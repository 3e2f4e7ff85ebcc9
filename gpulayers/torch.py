"""gpulayers as PyTorch modules: ``torch.nn.Module`` classes whose forward and backward run the
gpulayers kernels (CUDA tensors) or the NumPy reference (CPU tensors).

Every class has the name and constructor arguments of its gpulayers (Keras 3) layer::

    import gpulayers.torch as glt
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), glt.BatchNormalization(axis=1),
                                glt.MaxPooling2D(2, data_format="channels_first"))

- Each forward and backward is a ``torch.library.custom_op`` in the namespace ``gpulayers``
  (``torch.ops.gpulayers.pool_forward`` ...), with a fake (shape) implementation and an
  autograd formula whose backward is itself an op; autograd, optimizers, ``state_dict``,
  ``torch.compile`` and DDP see ordinary PyTorch ops. A gradient of a gradient (double
  backward) raises NotImplementedError.
- CUDA tensors reach the CUDA kernels without a copy (DLPack), on the tensor's device and
  on PyTorch's current stream. CPU tensors reach the NumPy reference without a copy, and
  the kernel simulator inside ``with gpulayers.simulate():``.
- Weights: ``nn.Parameter``s (``kernel``, ``recurrent_kernel``, ``bias``, ``gamma``,
  ``beta``) and buffers (``moving_mean``, ``moving_variance``), named as in
  ``get_weights()``. They are created, with Keras's initializers, from the first input's
  shape (lazy modules, as ``torch.nn.LazyLinear``): run one forward before building an
  optimizer or wrapping the model in DDP. ``get_weights()`` / ``set_weights()`` take Keras's
  order and shapes; the recurrent modules also load and save PyTorch ``nn.RNN/LSTM/GRU``
  state dicts (``load_torch_state_dict`` / ``torch_state_dict``).
- ``module.training`` selects training or inference (BatchNormalization, Dropout).
- dtypes float16, float32, float64; bfloat16 raises NotImplementedError.
"""
import contextlib
import copy
import math
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

import gpulayers as _gl
from gpulayers import distributed, kernels, validation
from gpulayers.layers import convolution as _conv
from gpulayers.layers._common import acc_dtype as _acc_dtype
from gpulayers.layers import core as _core
from gpulayers.layers import normalization as _bn
from gpulayers.layers import pooling as _pool
from gpulayers.layers import recurrent as _rnn
from gpulayers.layers import recurrent_kernels as _rnn_kernels
from gpulayers.layers import recurrent_reference as _rnn_reference
from gpulayers.layers import torch_weights as _torch_weights
from gpulayers.layers import upsampling as _up

_FLOATS = (torch.float16, torch.float32, torch.float64)


# ----------------------------------------------------------------------------- tensors <-> arrays

def _check_dtype(layer, arg, t):
    if t.dtype == torch.bfloat16:
        raise NotImplementedError(f"{layer}: bfloat16 is not supported by the gpulayers kernels (float16, "
                                  f"float32 or float64). Received: {arg}.dtype=torch.bfloat16")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{layer}: `{arg}` must have dtype float16, float32 or float64. "
                        f"Received: {arg}.dtype={t.dtype}")


@contextlib.contextmanager
def _device_of(t):
    """For a CUDA tensor: CuPy on its device and on PyTorch's current stream of that device."""
    if t.device.type != "cuda":
        yield
        return
    cp = kernels.cupy_module()
    if cp is None:
        raise RuntimeError("gpulayers.torch: CUDA tensors need CuPy (pip install 'gpulayers[cuda12]' or "
                           "'gpulayers[cuda13]'). Received: a tensor on " + str(t.device))
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    with cp.cuda.Device(index):
        stream = cp.cuda.ExternalStream(torch.cuda.current_stream(index).cuda_stream, index)
        with stream:
            yield


def _array(t):
    """The tensor's memory as a NumPy (CPU) or CuPy (CUDA) array, without a copy."""
    if t is None:
        return None
    t = t.detach()
    if t.dtype == torch.bfloat16:
        raise NotImplementedError("gpulayers.torch: bfloat16 tensors are not supported (float16, float32 or "
                                  "float64). Received: dtype=torch.bfloat16")
    if t.device.type == "cuda":
        return kernels.cupy_module().from_dlpack(t)
    return t.numpy()


def _tensor(a, inputs=()):
    """A contiguous tensor owning (or sharing) array a; copies when a is a view of an input,
    read-only, or not C-contiguous, so an op never returns an alias of its inputs."""
    if kernels.is_gpu_array(a):
        cp = kernels.cupy_module()
        if not a.flags.c_contiguous or any(b is not None and kernels.is_gpu_array(b)
                                           and cp.may_share_memory(a, b) for b in inputs):
            a = cp.array(a, order="C")
        return torch.from_dlpack(a)
    a = np.asarray(a)
    if (not a.flags.c_contiguous or not a.flags.writeable
            or any(isinstance(b, np.ndarray) and np.may_share_memory(a, b) for b in inputs)):
        a = np.array(a, order="C")
    return torch.from_numpy(a)


def _empty(like, dtype=None):
    return torch.empty((0,), dtype=dtype or like.dtype, device=like.device)


def _torch_dtype(np_dtype):
    return {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32,
            np.dtype(np.float64): torch.float64}[np.dtype(np_dtype)]


def _acc(t_dtype):
    return torch.float64 if t_dtype == torch.float64 else torch.float32


def _refuse_double_backward(name):
    def backward(ctx, *grads):
        raise NotImplementedError(f"gpulayers.torch: the gradient of {name} (double backward, e.g. "
                                  f"create_graph=True) is not supported.")
    return backward


def _no_setup(ctx, inputs, output):
    pass


# ----------------------------------------------------------------------------- pooling ops

@torch.library.custom_op("gpulayers::pool_forward", mutates_args=())
def pool_forward(x: Tensor, op: str, pool_size: List[int], strides: List[int], padding: str,
                 data_format: str) -> Tuple[Tensor, Tensor]:
    """Windowed max ("max") or average ("avg") pooling: (y, one-byte argmax or an empty tensor)."""
    args = (tuple(pool_size), tuple(strides), padding, data_format)
    if x.numel() == 0:  # an empty batch (or channel axis): an empty output, no kernel launch
        return (x.new_zeros(_pool_out_shape(tuple(x.shape), *args)), _empty(x, torch.uint8))
    with _device_of(x):
        xa = _array(x)
        _, on_kernels = kernels.kernel_path(xa)
        argmax = None
        if op == "max":
            y, argmax = _pool.max_pool_forward_kernel(xa, *args) if on_kernels else (_pool.max_pool_forward(xa, *args), None)
            if x.device.type != "cuda":  # CPU (simulator): backward recomputes, so the shapes depend on the device only
                argmax = None
        else:
            y = _pool.avg_pool_forward_kernel(xa, *args) if on_kernels else _pool.avg_pool_forward(xa, *args)
        return _tensor(y, [xa]), (_tensor(argmax, [xa]) if argmax is not None else _empty(x, torch.uint8))


def _pool_out_shape(shape, pool_size, strides, padding, data_format):
    spatial = shape[2:] if data_format == "channels_first" else shape[1:-1]
    out, _ = _pool.pool_geometry(spatial, pool_size, strides, padding)
    return (shape[0], shape[1], *out) if data_format == "channels_first" else (shape[0], *out, shape[-1])


@pool_forward.register_fake
def _(x, op, pool_size, strides, padding, data_format):
    y_shape = _pool_out_shape(tuple(x.shape), pool_size, strides, padding, data_format)
    saves = op == "max" and x.device.type == "cuda" and math.prod(pool_size) <= _pool.MAX_SAVED_WINDOW
    return x.new_empty(y_shape), x.new_empty(y_shape if saves else (0,), dtype=torch.uint8)


@torch.library.custom_op("gpulayers::pool_backward", mutates_args=())
def pool_backward(x: Tensor, argmax: Tensor, dy: Tensor, op: str, pool_size: List[int], strides: List[int],
                  padding: str, data_format: str) -> Tensor:
    """d(loss)/dx of :func:`pool_forward`."""
    args = (tuple(pool_size), tuple(strides), padding, data_format)
    if x.numel() == 0:
        return torch.zeros_like(x, memory_format=torch.contiguous_format)
    with _device_of(x):
        xa, dya = _array(x), _array(dy)
        _, on_kernels = kernels.kernel_path(xa)
        if op == "max":
            if on_kernels:
                am = _array(argmax) if argmax.numel() else None
                dx = _pool.max_pool_backward_kernel(xa, am, dya, *args)
            else:
                dx = _pool.max_pool_backward(xa, dya, *args)
        else:
            dx = _pool.avg_pool_backward_kernel(xa.shape, dya, *args) if on_kernels \
                else _pool.avg_pool_backward(xa.shape, dya, *args)
        return _tensor(dx, [xa, dya])


@pool_backward.register_fake
def _(x, argmax, dy, op, pool_size, strides, padding, data_format):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _pool_setup(ctx, inputs, output):
    x, op, pool_size, strides, padding, data_format = inputs
    ctx.save_for_backward(x, output[1])
    ctx.config = (op, pool_size, strides, padding, data_format)


def _pool_grad(ctx, dy, _d_argmax):
    x, argmax = ctx.saved_tensors
    return (pool_backward(x, argmax, dy, *ctx.config),) + (None,) * 5


torch.library.register_autograd("gpulayers::pool_forward", _pool_grad, setup_context=_pool_setup)
torch.library.register_autograd("gpulayers::pool_backward", _refuse_double_backward("gpulayers::pool_backward"),
                                setup_context=_no_setup)


@torch.library.custom_op("gpulayers::global_pool_forward", mutates_args=())
def global_pool_forward(x: Tensor, op: str, data_format: str, keepdims: bool) -> Tensor:
    """Global max ("max") or average ("avg") pooling over every spatial axis."""
    if x.numel() == 0:
        return x.new_zeros(_global_out_shape(tuple(x.shape), data_format, keepdims))
    with _device_of(x):
        xa = _array(x)
        _, on_kernels = kernels.kernel_path(xa)
        fn = _pool.global_pool_forward_kernel if on_kernels else _pool.global_pool_forward
        return _tensor(fn(xa, op, data_format, keepdims), [xa])


def _global_out_shape(shape, data_format, keepdims):
    n, c = shape[0], (shape[1] if data_format == "channels_first" else shape[-1])
    if not keepdims:
        return (n, c)
    ones = (1,) * (len(shape) - 2)
    return (n, c, *ones) if data_format == "channels_first" else (n, *ones, c)


@global_pool_forward.register_fake
def _(x, op, data_format, keepdims):
    return x.new_empty(_global_out_shape(tuple(x.shape), data_format, keepdims))


@torch.library.custom_op("gpulayers::global_pool_backward", mutates_args=())
def global_pool_backward(x: Tensor, dy: Tensor, op: str, data_format: str) -> Tensor:
    """d(loss)/dx of :func:`global_pool_forward`."""
    if x.numel() == 0:
        return torch.zeros_like(x, memory_format=torch.contiguous_format)
    with _device_of(x):
        xa, dya = _array(x), _array(dy)
        c = xa.shape[1] if data_format == "channels_first" else xa.shape[-1]
        dya = dya.reshape(xa.shape[0], c)
        _, on_kernels = kernels.kernel_path(xa)
        fn = _pool.global_pool_backward_kernel if on_kernels else _pool.global_pool_backward
        return _tensor(fn(xa, dya, op, data_format), [xa, dya])


@global_pool_backward.register_fake
def _(x, dy, op, data_format):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _global_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.config = (inputs[1], inputs[2])


def _global_grad(ctx, dy):
    (x,) = ctx.saved_tensors
    return global_pool_backward(x, dy, *ctx.config), None, None, None


torch.library.register_autograd("gpulayers::global_pool_forward", _global_grad, setup_context=_global_setup)
torch.library.register_autograd("gpulayers::global_pool_backward",
                                _refuse_double_backward("gpulayers::global_pool_backward"), setup_context=_no_setup)


# ----------------------------------------------------------------------------- upsampling ops

@torch.library.custom_op("gpulayers::upsample_forward", mutates_args=())
def upsample_forward(x: Tensor, size: List[int], data_format: str, interpolation: str) -> Tensor:
    """Nearest or bilinear upsampling by integer factors ``size`` per spatial axis."""
    size = tuple(size)
    if x.numel() == 0:
        return x.new_zeros(_up._out_shape(tuple(x.shape), size, data_format))
    with _device_of(x):
        xa = _array(x)
        _, on_kernels = kernels.kernel_path(xa)
        if on_kernels:
            y = _up.upsample_kernel(xa, size, data_format, interpolation)
        elif interpolation == "bilinear":
            y = _up.upsample_bilinear(xa, size, data_format)
        else:
            y = _up.upsample_nearest(xa, size, data_format)
        return _tensor(y, [xa])


@upsample_forward.register_fake
def _(x, size, data_format, interpolation):
    shape = list(x.shape)
    for axis, s in zip(_up._spatial_axes(x.dim(), data_format), size):
        shape[axis] = shape[axis] * s
    return x.new_empty(shape)


@torch.library.custom_op("gpulayers::upsample_backward", mutates_args=())
def upsample_backward(dy: Tensor, x_shape: List[int], size: List[int], data_format: str,
                      interpolation: str) -> Tensor:
    """d(loss)/dx of :func:`upsample_forward` for an input of shape ``x_shape``."""
    size = tuple(size)
    if dy.numel() == 0:
        return dy.new_zeros(x_shape)
    with _device_of(dy):
        dya = _array(dy)
        _, on_kernels = kernels.kernel_path(dya)
        if on_kernels:
            dx = _up.upsample_backward_kernel(dya, tuple(x_shape), size, data_format, interpolation)
        elif interpolation == "bilinear":
            dx = _up.upsample_bilinear_backward(dya, size, data_format)
        else:
            dx = _up.upsample_nearest_backward(dya, size, data_format)
        return _tensor(dx, [dya])


@upsample_backward.register_fake
def _(dy, x_shape, size, data_format, interpolation):
    return dy.new_empty(x_shape)


def _upsample_setup(ctx, inputs, output):
    x, size, data_format, interpolation = inputs
    ctx.config = (list(x.shape), size, data_format, interpolation)


def _upsample_grad(ctx, dy):
    return upsample_backward(dy, *ctx.config), None, None, None


torch.library.register_autograd("gpulayers::upsample_forward", _upsample_grad, setup_context=_upsample_setup)
torch.library.register_autograd("gpulayers::upsample_backward",
                                _refuse_double_backward("gpulayers::upsample_backward"), setup_context=_no_setup)


# ----------------------------------------------------------------------------- batch norm ops

@torch.library.custom_op("gpulayers::batch_norm_forward", mutates_args=())
def batch_norm_forward(x: Tensor, gamma: Optional[Tensor], beta: Optional[Tensor], moving_mean: Tensor,
                       moving_variance: Tensor, axes: List[int], epsilon: float, training: bool,
                       group: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Batch normalization: (y, mean, var, inv_std, count).

    ``axes``: the positive axes that keep their statistics; ``training``: batch statistics
    (else the moving ones); ``group``: -1 for this process's statistics, else the key of a
    torch.distributed group (0: the default group) whose processes' statistics are merged.
    mean/var/inv_std have the parameter shape (float32, float64 for float64 inputs); count
    (shape (1,), float64) is the number of values per channel over every process.
    """
    axes = tuple(axes)
    with _device_of(x):
        xa = _array(x)
        xp, on_kernels = kernels.kernel_path(xa)
        acc = _acc_dtype(xa.dtype)
        shape = tuple(xa.shape[a] for a in axes)
        b = _bn._broadcast_shape(xa.shape, axes)
        g = _array(gamma).astype(acc, copy=False) if gamma is not None else xp.ones(shape, acc)
        be = _array(beta).astype(acc, copy=False) if beta is not None else xp.zeros(shape, acc)
        per_channel = xa.size // max(math.prod(shape), 1)
        count = xp.full((1,), float(per_channel), np.float64)
        if training:
            if xa.size == 0:  # an empty batch: no statistics of its own (count 0: nothing moves)
                mean, var = xp.zeros(shape, acc), xp.zeros(shape, acc)
                inv_std = 1 / xp.sqrt(var + acc.type(epsilon))
            elif on_kernels:
                mean, var, inv_std = _bn.batch_norm_statistics_kernel(xa, axes, epsilon)
                mean, var, inv_std = mean.reshape(shape), var.reshape(shape), inv_std.reshape(shape)
            else:
                mean, var = _bn.batch_norm_statistics(xa, axes)
                inv_std = 1 / np.sqrt(var + acc.type(epsilon))
            if group >= 0:  # even with an empty batch: the other processes wait for this one
                count, mean, var = distributed.merge_moments(per_channel, mean, var, distributed.group_from_key(group))
                inv_std = 1 / xp.sqrt(var + acc.type(epsilon))
        else:
            mean = _array(moving_mean).astype(acc)
            var = _array(moving_variance).astype(acc)
            inv_std = 1 / xp.sqrt(var + acc.type(epsilon))
        if xa.size == 0:
            y = xp.zeros(xa.shape, xa.dtype)
        elif on_kernels:
            y = _bn._normalize(xa, mean.reshape(b), inv_std.reshape(b), g.reshape(b), be.reshape(b))
        else:
            y = _bn.batch_norm_forward(xa, mean, var, g, be, epsilon, axes)
        inputs = [xa, _array(moving_mean), _array(moving_variance)]
        return (_tensor(y, inputs), _tensor(mean, inputs), _tensor(var, inputs), _tensor(inv_std, inputs),
                _tensor(count))


@batch_norm_forward.register_fake
def _(x, gamma, beta, moving_mean, moving_variance, axes, epsilon, training, group):
    shape = tuple(x.shape[a] for a in axes)
    acc = _acc(x.dtype)
    return (x.new_empty(x.shape), x.new_empty(shape, dtype=acc), x.new_empty(shape, dtype=acc),
            x.new_empty(shape, dtype=acc), x.new_empty((1,), dtype=torch.float64))


@torch.library.custom_op("gpulayers::batch_norm_backward", mutates_args=())
def batch_norm_backward(x: Tensor, dy: Tensor, gamma: Optional[Tensor], mean: Tensor, inv_std: Tensor,
                        count: Tensor, axes: List[int], training: bool, group: int) -> Tuple[Tensor, Tensor, Tensor]:
    """(dx, d gamma, d beta) of :func:`batch_norm_forward`. With a group, the input gradient
    uses the gradient sums of every process (one all-reduce); d gamma and d beta stay this
    process's own (DDP averages them)."""
    axes = tuple(axes)
    with _device_of(x):
        xa, dya = _array(x), _array(dy)
        xp, on_kernels = kernels.kernel_path(xa)
        acc = _acc_dtype(xa.dtype)
        shape = tuple(mean.shape)
        b = _bn._broadcast_shape(xa.shape, axes)
        ma, inv = _array(mean), _array(inv_std)
        g = _array(gamma).astype(acc, copy=False) if gamma is not None else xp.ones(shape, acc)
        if xa.size == 0:  # an empty batch: zero sums (still summed with the other processes')
            dx, sum_dy, sum_dy_xhat = xp.zeros(xa.shape, xa.dtype), xp.zeros(shape, acc), xp.zeros(shape, acc)
            if training and group >= 0:
                distributed.sum_gradients(sum_dy, sum_dy_xhat, distributed.group_from_key(group))
        elif on_kernels:
            sum_dy, sum_dy_xhat = _bn.batch_norm_grad_sums_kernel(xa, dya, ma.reshape(-1), inv.reshape(-1), axes)
            sum_dy, sum_dy_xhat = sum_dy.reshape(shape), sum_dy_xhat.reshape(shape)
        elif training and group >= 0:
            _, sum_dy_xhat, sum_dy = _bn.batch_norm_backward(xa, dya, ma, inv, g, axes, False)
        else:
            dx, sum_dy_xhat, sum_dy = _bn.batch_norm_backward(xa, dya, ma, inv, g, axes, training)
        if xa.size and training and (on_kernels or group >= 0):
            g_dy, g_dy_xhat = sum_dy, sum_dy_xhat
            if group >= 0:  # the gradient statistics of every process: one all-reduce
                g_dy, g_dy_xhat = distributed.sum_gradients(sum_dy, sum_dy_xhat, distributed.group_from_key(group))
            m = _array(count).astype(acc)
            if on_kernels:
                dx = _bn._train_input_grad(xa, dya, ma.reshape(b), inv.reshape(b), g.reshape(b),
                                           (g_dy / m).reshape(b), (g_dy_xhat / m).reshape(b))
            else:
                xhat = (xa.astype(acc) - ma.reshape(b)) * inv.reshape(b)
                dx = (g.reshape(b) * inv.reshape(b) * (dya.astype(acc) - (g_dy / m).reshape(b)
                                                       - xhat * (g_dy_xhat / m).reshape(b))).astype(xa.dtype)
        elif xa.size and on_kernels:
            dx = _bn._scale(dya, (g * inv).reshape(b))
        return _tensor(dx, [xa, dya]), _tensor(sum_dy_xhat), _tensor(sum_dy)


@batch_norm_backward.register_fake
def _(x, dy, gamma, mean, inv_std, count, axes, training, group):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(mean), torch.empty_like(mean)


def _bn_setup(ctx, inputs, output):
    x, gamma, beta, moving_mean, moving_variance, axes, epsilon, training, group = inputs
    _, mean, _, inv_std, count = output
    ctx.save_for_backward(x, gamma, mean, inv_std, count)
    ctx.config = (axes, training, group)
    ctx.beta_dtype = beta.dtype if beta is not None else None


def _bn_grad(ctx, dy, _dmean, _dvar, _dinv, _dcount):
    x, gamma, mean, inv_std, count = ctx.saved_tensors
    dx, dgamma, dbeta = batch_norm_backward(x, dy, gamma, mean, inv_std, count, *ctx.config)
    dgamma = dgamma.to(gamma.dtype) if gamma is not None else None
    dbeta = dbeta.to(ctx.beta_dtype) if ctx.beta_dtype is not None else None
    return dx, dgamma, dbeta, None, None, None, None, None, None


torch.library.register_autograd("gpulayers::batch_norm_forward", _bn_grad, setup_context=_bn_setup)
torch.library.register_autograd("gpulayers::batch_norm_backward",
                                _refuse_double_backward("gpulayers::batch_norm_backward"), setup_context=_no_setup)


# ----------------------------------------------------------------------------- recurrent ops

def _spec(cell, units, activation, recurrent_activation, go_backwards, zero_output_for_mask):
    return _rnn_reference.Spec(cell, units, activation, recurrent_activation, go_backwards, zero_output_for_mask)


@torch.library.custom_op("gpulayers::rnn_forward", mutates_args=())
def rnn_forward(x: Tensor, kernel: Tensor, recurrent_kernel: Tensor, bias: Optional[Tensor], h0: Optional[Tensor],
                c0: Optional[Tensor], mask: Optional[Tensor], cell: str, units: int, activation: str,
                recurrent_activation: str, go_backwards: bool,
                zero_output_for_mask: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """A SimpleRNN/LSTM/GRU over x (batch, time, features).

    Returns (outputs (time, batch, units) in processing order, final h, final c (LSTM; else
    empty), and what the backward needs: pre-activations, h before each step, c before each
    step (LSTM; else empty), the cell's extra per-step values).
    """
    spec = _spec(cell, units, activation, recurrent_activation, go_backwards, zero_output_for_mask)
    if x.shape[0] == 0:  # an empty batch: empty outputs and states, no kernel launch
        return tuple(t.zero_() for t in _rnn_forward_fake(
            x, kernel, recurrent_kernel, bias, h0, c0, mask, cell, units, activation, recurrent_activation,
            go_backwards, zero_output_for_mask))
    with _device_of(x):
        xa = _array(x)
        _, on_kernels = kernels.kernel_path(xa)
        states0 = None if h0 is None else [_array(h0)] + ([_array(c0)] if c0 is not None else [])
        fn = _rnn_kernels.rnn_forward_kernel if on_kernels else _rnn_reference.rnn_forward
        outputs, states, saved = fn(spec, xa, _array(kernel), _array(recurrent_kernel), _array(bias), states0,
                                    _array(mask))
        none = _empty(x)
        acc = _acc(x.dtype)
        return (_tensor(outputs.astype(xa.dtype)), _tensor(states[0].astype(xa.dtype)),
                _tensor(states[1].astype(xa.dtype)) if len(states) > 1 else none,
                _tensor(saved.pre).to(acc), _tensor(saved.h_prev).to(acc),
                _tensor(saved.c_prev).to(acc) if saved.c_prev is not None else _empty(x, acc),
                _tensor(saved.extra).to(acc))


@rnn_forward.register_fake
def _rnn_forward_fake(x, kernel, recurrent_kernel, bias, h0, c0, mask, cell, units, activation, recurrent_activation,
      go_backwards, zero_output_for_mask):
    batch, steps = x.shape[0], x.shape[1]
    acc = _acc(x.dtype)
    lstm = cell == "lstm"
    return (x.new_empty((steps, batch, units)), x.new_empty((batch, units)),
            x.new_empty((batch, units) if lstm else (0,)),
            x.new_empty((steps, batch, _rnn_reference.GATES[cell] * units), dtype=acc),
            x.new_empty((steps, batch, units), dtype=acc),
            x.new_empty((steps, batch, units) if lstm else (0,), dtype=acc),
            x.new_empty((steps, batch, units), dtype=acc))


def _rnn_saved(spec, xa, W, U, mask, pre, h_prev, c_prev, extra, has_bias, on_kernels):
    """The forward's :class:`~gpulayers.layers.recurrent_reference.RnnSaved` record, rebuilt from the op's outputs."""
    xp = kernels.array_module(xa)
    acc = _acc_dtype(xa.dtype)
    xs = xp.swapaxes(xa, 0, 1)
    ms = None if mask is None else xp.swapaxes(mask, 0, 1)
    if spec.go_backwards:
        xs, ms = xs[::-1], (None if ms is None else ms[::-1])
    if on_kernels:
        xs = xp.ascontiguousarray(xs, dtype=acc)
        ms = None if ms is None else xp.ascontiguousarray(ms, dtype=np.uint8)
    else:
        xs = xs.astype(acc)
    return _rnn_reference.RnnSaved(xs=xs, mask=ms, pre=pre, h_prev=h_prev, c_prev=c_prev, extra=extra,
                         W=W.astype(acc, copy=False), U=U.astype(acc, copy=False), dtype=xa.dtype, has_bias=has_bias)


@torch.library.custom_op("gpulayers::rnn_backward", mutates_args=())
def rnn_backward(d_outputs: Tensor, dh: Tensor, dc: Tensor, x: Tensor, kernel: Tensor, recurrent_kernel: Tensor,
                 bias: Optional[Tensor], mask: Optional[Tensor], pre: Tensor, h_prev: Tensor, c_prev: Tensor,
                 extra: Tensor, cell: str, units: int, activation: str, recurrent_activation: str,
                 go_backwards: bool,
                 zero_output_for_mask: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backpropagation through time: (dx, d kernel, d recurrent_kernel, d bias (or empty), dh0, dc0 (or empty))."""
    spec = _spec(cell, units, activation, recurrent_activation, go_backwards, zero_output_for_mask)
    if x.shape[0] == 0:  # an empty batch: zero weight gradients, no kernel launch
        return tuple(t.zero_() for t in _rnn_backward_fake(
            d_outputs, dh, dc, x, kernel, recurrent_kernel, bias, mask, pre, h_prev, c_prev, extra, cell, units,
            activation, recurrent_activation, go_backwards, zero_output_for_mask))
    with _device_of(x):
        xa = _array(x)
        _, on_kernels = kernels.kernel_path(xa)
        lstm = spec.has_cell_state
        saved = _rnn_saved(spec, xa, _array(kernel), _array(recurrent_kernel), _array(mask), _array(pre),
                           _array(h_prev), _array(c_prev) if lstm else None, _array(extra), bias is not None,
                           on_kernels)
        d_states = [_array(dh)] + ([_array(dc)] if lstm else [])
        fn = _rnn_kernels.rnn_backward_kernel if on_kernels else _rnn_reference.rnn_backward
        dx, d_init, grads = fn(spec, saved, _array(d_outputs), d_states)
        inputs = [_array(t) for t in (d_outputs, dh, dc, x)]
        none = _empty(kernel)
        return (_tensor(dx, inputs), _tensor(grads["kernel"]).to(kernel.dtype),
                _tensor(grads["recurrent_kernel"]).to(recurrent_kernel.dtype),
                _tensor(grads["bias"]).to(bias.dtype) if bias is not None else none,
                _tensor(d_init[0], inputs).to(x.dtype),
                _tensor(d_init[1], inputs).to(x.dtype) if lstm else _empty(x))


@rnn_backward.register_fake
def _rnn_backward_fake(d_outputs, dh, dc, x, kernel, recurrent_kernel, bias, mask, pre, h_prev, c_prev, extra, cell, units,
      activation, recurrent_activation, go_backwards, zero_output_for_mask):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(kernel),
            torch.empty_like(recurrent_kernel), torch.empty_like(bias) if bias is not None else kernel.new_empty((0,)),
            x.new_empty((x.shape[0], units)), x.new_empty((x.shape[0], units) if cell == "lstm" else (0,)))


def _rnn_setup(ctx, inputs, output):
    x, kernel, recurrent_kernel, bias, h0, c0, mask, *config = inputs
    _, _, _, pre, h_prev, c_prev, extra = output
    ctx.save_for_backward(x, kernel, recurrent_kernel, bias, mask, pre, h_prev, c_prev, extra)
    ctx.config = config
    ctx.has_bias, ctx.has_h0, ctx.has_c0 = bias is not None, h0 is not None, c0 is not None


def _rnn_grad(ctx, d_outputs, dh, dc, *_unused):
    x, kernel, recurrent_kernel, bias, mask, pre, h_prev, c_prev, extra = ctx.saved_tensors
    if dc is None or dc.numel() == 0:
        dc = _empty(x)
    dx, dk, dr, db, dh0, dc0 = rnn_backward(d_outputs, dh, dc, x, kernel, recurrent_kernel, bias, mask, pre,
                                            h_prev, c_prev, extra, *ctx.config)
    return (dx, dk, dr, db if ctx.has_bias else None, dh0 if ctx.has_h0 else None, dc0 if ctx.has_c0 else None,
            None) + (None,) * 6


torch.library.register_autograd("gpulayers::rnn_forward", _rnn_grad, setup_context=_rnn_setup)
torch.library.register_autograd("gpulayers::rnn_backward", _refuse_double_backward("gpulayers::rnn_backward"),
                                setup_context=_no_setup)


# ----------------------------------------------------------------------------- dense, conv, activation, dropout ops

def _act_grad(activation, g, z):
    """d(loss)/dz from g = d(loss)/d act(z), act(z) recomputed from the saved pre-activation z."""
    if activation == "linear":
        return g
    return _core.activation_backward(activation, g, z, _core.activation_forward(activation, z))


@torch.library.custom_op("gpulayers::dense_forward", mutates_args=())
def dense_forward(x: Tensor, kernel: Tensor, bias: Optional[Tensor], activation: str) -> Tuple[Tensor, Tensor]:
    """y = activation(x @ kernel + bias) over the last axis: (y in x's dtype, the pre-activation
    z of shape (batch * ..., units) in the kernel's dtype, or an empty tensor for "linear")."""
    units = kernel.shape[1]
    with _device_of(x):
        xa, ka = _array(x), _array(kernel)
        z = xa.reshape(-1, xa.shape[-1]).astype(ka.dtype, copy=False) @ ka
        if bias is not None:
            z += _array(bias)
        y = _core.activation_forward(activation, z).astype(xa.dtype, copy=False).reshape(*xa.shape[:-1], units)
        inputs = [xa, ka]
        return _tensor(y, inputs), (_tensor(z, inputs) if activation != "linear" else _empty(kernel))


@dense_forward.register_fake
def _(x, kernel, bias, activation):
    units = kernel.shape[1]
    z_shape = (math.prod(x.shape[:-1]), units) if activation != "linear" else (0,)
    return x.new_empty((*x.shape[:-1], units)), kernel.new_empty(z_shape)


@torch.library.custom_op("gpulayers::dense_backward", mutates_args=())
def dense_backward(dy: Tensor, x: Tensor, kernel: Tensor, z: Tensor, has_bias: bool,
                   activation: str) -> Tuple[Tensor, Tensor, Tensor]:
    """(dx, d kernel, d bias (or an empty tensor)) of :func:`dense_forward`."""
    with _device_of(x):
        xa, ka, dya = _array(x), _array(kernel), _array(dy)
        xp = kernels.array_module(xa)
        g = dya.reshape(-1, ka.shape[1]).astype(ka.dtype, copy=False)
        g = _act_grad(activation, g, _array(z))
        x2 = xa.reshape(-1, xa.shape[-1]).astype(ka.dtype, copy=False)
        dkernel = x2.T @ g
        dbias = g.sum(axis=0) if has_bias else xp.zeros((0,), ka.dtype)
        dx = (g @ ka.T).astype(dya.dtype, copy=False).reshape(xa.shape)
        inputs = [xa, ka, dya]
        return _tensor(dx, inputs), _tensor(dkernel, inputs), _tensor(dbias, inputs)


@dense_backward.register_fake
def _(dy, x, kernel, z, has_bias, activation):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(kernel),
            kernel.new_empty((kernel.shape[1],) if has_bias else (0,)))


def _dense_setup(ctx, inputs, output):
    x, kernel, bias, activation = inputs
    ctx.save_for_backward(x, kernel, output[1])
    ctx.has_bias, ctx.activation = bias is not None, activation


def _dense_grad(ctx, dy, _dz):
    x, kernel, z = ctx.saved_tensors
    dx, dk, db = dense_backward(dy, x, kernel, z, ctx.has_bias, ctx.activation)
    return dx, dk, (db if ctx.has_bias else None), None


torch.library.register_autograd("gpulayers::dense_forward", _dense_grad, setup_context=_dense_setup)
torch.library.register_autograd("gpulayers::dense_backward", _refuse_double_backward("gpulayers::dense_backward"),
                                setup_context=_no_setup)


def _conv_args(transpose, strides, padding, dilation, output_padding, data_format):
    """The positional arguments after (x, kernel, bias) of the convolution functions."""
    if transpose:
        pads = tuple(None if p < 0 else p for p in output_padding)
        return tuple(strides), padding, tuple(dilation), pads, data_format
    return tuple(strides), padding, tuple(dilation), data_format


def _conv_out_shape(shape, kernel_shape, transpose, strides, padding, dilation, output_padding, data_format):
    hw = _conv._spatial(shape, data_format)
    k = kernel_shape[:2]
    if transpose:
        out = [_conv.conv_transpose_geometry(hw[a], k[a], strides[a], dilation[a], padding,
                                             None if output_padding[a] < 0 else output_padding[a])[0]
               for a in range(2)]
        filters = kernel_shape[2]
    else:
        out = [_conv.conv_geometry(hw[a], k[a], strides[a], dilation[a], padding)[0] for a in range(2)]
        filters = kernel_shape[3]
    return (shape[0], *out, filters) if data_format == "channels_last" else (shape[0], filters, *out)


@torch.library.custom_op("gpulayers::conv2d_forward", mutates_args=())
def conv2d_forward(x: Tensor, kernel: Tensor, bias: Optional[Tensor], transpose: bool, strides: List[int],
                   padding: str, dilation: List[int], output_padding: List[int], data_format: str,
                   activation: str) -> Tuple[Tensor, Tensor]:
    """Conv2D (``transpose`` False) or Conv2DTranspose: (y in x's dtype, the pre-activation in the
    kernel's dtype, or an empty tensor for "linear"). ``output_padding``: -1 stands for None."""
    args = _conv_args(transpose, strides, padding, dilation, output_padding, data_format)
    with _device_of(x):
        xa, ka = _array(x), _array(kernel)
        _, on_kernels = kernels.kernel_path(xa)
        if transpose:
            fn = _conv.conv2d_transpose_forward_kernel if on_kernels else _conv.conv2d_transpose_forward
        else:
            fn = _conv.conv2d_forward_kernel if on_kernels else _conv.conv2d_forward
        z = fn(xa, ka, _array(bias), *args).astype(ka.dtype, copy=False)
        y = _core.activation_forward(activation, z).astype(xa.dtype, copy=False)
        inputs = [xa, ka]
        return _tensor(y, inputs), (_tensor(z, inputs) if activation != "linear" else _empty(kernel))


@conv2d_forward.register_fake
def _(x, kernel, bias, transpose, strides, padding, dilation, output_padding, data_format, activation):
    shape = _conv_out_shape(tuple(x.shape), tuple(kernel.shape), transpose, strides, padding, dilation,
                            output_padding, data_format)
    return x.new_empty(shape), kernel.new_empty(shape if activation != "linear" else (0,))


@torch.library.custom_op("gpulayers::conv2d_backward", mutates_args=())
def conv2d_backward(dy: Tensor, x: Tensor, kernel: Tensor, z: Tensor, has_bias: bool, transpose: bool,
                    strides: List[int], padding: str, dilation: List[int], output_padding: List[int],
                    data_format: str, activation: str) -> Tuple[Tensor, Tensor, Tensor]:
    """(dx, d kernel, d bias (or an empty tensor)) of :func:`conv2d_forward`."""
    args = _conv_args(transpose, strides, padding, dilation, output_padding, data_format)
    with _device_of(x):
        xa, ka, dya = _array(x), _array(kernel), _array(dy)
        xp, on_kernels = kernels.kernel_path(xa)
        g = _act_grad(activation, dya.astype(ka.dtype, copy=False), _array(z))
        if transpose:
            fn = _conv.conv2d_transpose_backward_kernel if on_kernels else _conv.conv2d_transpose_backward
        else:
            fn = _conv.conv2d_backward_kernel if on_kernels else _conv.conv2d_backward
        dx, dkernel, dbias = fn(xa, xp.ascontiguousarray(g), ka, *args)
        dbias = dbias.astype(ka.dtype, copy=False) if has_bias else xp.zeros((0,), ka.dtype)
        inputs = [xa, ka, dya]
        return (_tensor(dx.astype(dya.dtype, copy=False), inputs),
                _tensor(dkernel.astype(ka.dtype, copy=False), inputs), _tensor(dbias, inputs))


@conv2d_backward.register_fake
def _(dy, x, kernel, z, has_bias, transpose, strides, padding, dilation, output_padding, data_format, activation):
    filters = kernel.shape[2] if transpose else kernel.shape[3]
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(kernel),
            kernel.new_empty((filters,) if has_bias else (0,)))


def _conv_setup(ctx, inputs, output):
    x, kernel, bias, *config = inputs
    ctx.save_for_backward(x, kernel, output[1])
    ctx.has_bias, ctx.config = bias is not None, config


def _conv_grad(ctx, dy, _dz):
    x, kernel, z = ctx.saved_tensors
    dx, dk, db = conv2d_backward(dy, x, kernel, z, ctx.has_bias, *ctx.config)
    return (dx, dk, db if ctx.has_bias else None) + (None,) * 7


torch.library.register_autograd("gpulayers::conv2d_forward", _conv_grad, setup_context=_conv_setup)
torch.library.register_autograd("gpulayers::conv2d_backward", _refuse_double_backward("gpulayers::conv2d_backward"),
                                setup_context=_no_setup)


@torch.library.custom_op("gpulayers::activation_forward", mutates_args=())
def activation_forward(x: Tensor, activation: str) -> Tensor:
    """activation(x), computed in float32 for float16 inputs; softmax over the last axis."""
    with _device_of(x):
        xa = _array(x)
        y = _core.activation_forward(activation, xa.astype(_acc_dtype(xa.dtype)))
        return _tensor(y.astype(xa.dtype, copy=False), [xa])


@activation_forward.register_fake
def _(x, activation):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("gpulayers::activation_backward", mutates_args=())
def activation_backward(dy: Tensor, x: Tensor, activation: str) -> Tensor:
    """d(loss)/dx of :func:`activation_forward` (the activation recomputed from x)."""
    with _device_of(x):
        xa, dya = _array(x), _array(dy)
        acc = _acc_dtype(xa.dtype)
        dx = _act_grad(activation, dya.astype(acc), xa.astype(acc))
        return _tensor(dx.astype(dya.dtype, copy=False), [xa, dya])


@activation_backward.register_fake
def _(dy, x, activation):
    return torch.empty_like(dy, memory_format=torch.contiguous_format)


def _activation_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.activation = inputs[1]


def _activation_grad(ctx, dy):
    (x,) = ctx.saved_tensors
    return activation_backward(dy, x, ctx.activation), None


torch.library.register_autograd("gpulayers::activation_forward", _activation_grad, setup_context=_activation_setup)
torch.library.register_autograd("gpulayers::activation_backward",
                                _refuse_double_backward("gpulayers::activation_backward"), setup_context=_no_setup)


@torch.library.custom_op("gpulayers::dropout_forward", mutates_args=())
def dropout_forward(x: Tensor, rate: float, seed: Tensor) -> Tuple[Tensor, Tensor]:
    """Inverted dropout in training: (x * keep / (1 - rate), keep as a uint8 tensor of x's shape).
    The mask is a function of ``seed`` (a one-element int64 CPU tensor, read without a device
    synchronisation) and of the device: keep = uniform[0, 1) >= rate."""
    seed = int(seed.item())
    with _device_of(x):
        xa = _array(x)
        xp = kernels.array_module(xa)
        if xp is np:
            u = np.random.default_rng(seed).random(xa.shape, dtype=np.float32)
        else:
            u = xp.random.RandomState(seed).random_sample(xa.shape, dtype=np.float32)
        keep = u >= rate
        scale = _acc_dtype(xa.dtype).type(1 / (1 - rate))
        y = (xa * keep * scale).astype(xa.dtype, copy=False)
        return _tensor(y, [xa]), _tensor(keep.astype(np.uint8), [xa])


@dropout_forward.register_fake
def _(x, rate, seed):
    return torch.empty_like(x, memory_format=torch.contiguous_format), \
        torch.empty_like(x, dtype=torch.uint8, memory_format=torch.contiguous_format)


@torch.library.custom_op("gpulayers::dropout_backward", mutates_args=())
def dropout_backward(dy: Tensor, keep: Tensor, rate: float) -> Tensor:
    """d(loss)/dx of :func:`dropout_forward`: dy * keep / (1 - rate), with the forward's mask."""
    with _device_of(dy):
        dya, ka = _array(dy), _array(keep)
        scale = _acc_dtype(dya.dtype).type(1 / (1 - rate))
        return _tensor((dya * ka.astype(bool) * scale).astype(dya.dtype, copy=False), [dya, ka])


@dropout_backward.register_fake
def _(dy, keep, rate):
    return torch.empty_like(dy, memory_format=torch.contiguous_format)


def _dropout_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.rate = inputs[1]


def _dropout_grad(ctx, dy, _dkeep):
    (keep,) = ctx.saved_tensors
    return dropout_backward(dy, keep, ctx.rate), None, None


torch.library.register_autograd("gpulayers::dropout_forward", _dropout_grad, setup_context=_dropout_setup)
torch.library.register_autograd("gpulayers::dropout_backward", _refuse_double_backward("gpulayers::dropout_backward"),
                                setup_context=_no_setup)


# ----------------------------------------------------------------------------- modules

def _config_copy(layer):
    """An unbuilt copy of a gpulayers layer, holding its configuration only."""
    new = copy.copy(layer)
    new.__dict__.update(params={}, grads={}, state={}, built=False, _saved=None, _output_meta=None)
    return new


class _Module(nn.Module):
    """Shared part: the gpulayers layer that holds (and validated) the configuration."""

    _layer_class = None

    def __init__(self, *args, _layer=None, **kwargs):
        super().__init__()
        self._gl = _config_copy(_layer) if _layer is not None else self._layer_class(*args, **kwargs)

    @property
    def name(self):
        return self._gl.name

    def _layer_name(self):
        return type(self).__name__

    def _named_weights(self):
        return [(n, getattr(self, n)) for n in self._gl.weight_names]

    def _check(self, x):
        layer = self._layer_name()
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{layer}: `inputs` must be a torch.Tensor. Received: inputs of type {type(x).__name__}")
        _check_dtype(layer, "inputs", x)
        if self._gl.dtype is not None:  # Keras's dtype policy: compute in the layer's dtype
            x = x.to(_torch_dtype(self._gl.dtype))
        return x

    def get_weights(self) -> list:
        """Parameters and buffers as NumPy arrays, in Keras's ``get_weights()`` order."""
        if any(isinstance(t, (UninitializedParameter, UninitializedBuffer)) for _, t in self._named_weights()):
            raise ValueError(f"{self._layer_name()}: get_weights() needs the module built (call it once first). "
                             f"Received: get_weights() on an unbuilt module")
        return [t.detach().cpu().numpy().copy() for _, t in self._named_weights()]

    def set_weights(self, weights) -> None:
        """Set parameters and buffers from arrays in Keras's order and shapes (all or nothing)."""
        layer = self._layer_name()
        named = self._named_weights()
        if any(isinstance(t, (UninitializedParameter, UninitializedBuffer)) for _, t in named):
            raise ValueError(f"{layer}: set_weights() needs the module built (call it once first). "
                             f"Received: {len(weights)} arrays for an unbuilt module")
        if len(weights) != len(named):
            raise ValueError(f"{layer}: set_weights() expects {len(named)} arrays "
                             f"({', '.join(n for n, _ in named)}). Received: {len(weights)} arrays")
        for (n, t), new in zip(named, weights):
            if tuple(np.shape(new)) != tuple(t.shape):
                raise ValueError(f"{layer}: weight `{n}` must have shape {tuple(t.shape)}. "
                                 f"Received: shape {tuple(np.shape(new))}")
        with torch.no_grad():
            for (n, t), new in zip(named, weights):
                t.copy_(torch.as_tensor(np.asarray(new)))

    def extra_repr(self):
        return f"name={self._gl.name!r}"


def _on_kernels(x):
    """True when the ops run the kernels for x: a CUDA tensor, or the simulator."""
    return x.device.type == "cuda" or kernels.simulating()


_LAYOUT = {"channels_last": "(batch, spatial..., channels)", "channels_first": "(batch, channels, spatial...)"}


def _channels_last_view(x, data_format):
    """True when a channels_first input is stored channels_last (torch.channels_last/_3d):
    the op then runs on the NHWC view, with the channels_last kernels, without a copy."""
    if data_format != "channels_first" or x.dim() not in (4, 5) or x.is_contiguous():
        return False
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return x.is_contiguous(memory_format=fmt)


def _to_nhwc(x):
    return x.permute(0, *range(2, x.dim()), 1)


def _to_nchw(y):
    return y.permute(0, y.dim() - 1, *range(1, y.dim() - 1))


class _Pooling(_Module):
    def forward(self, x):
        x = self._check(x)
        gl, layer = self._gl, self._layer_name()
        validation.rank(layer, "inputs", x, gl.rank + 2, _LAYOUT[gl.data_format])
        _pool._check_geometry(layer, tuple(x.shape), gl.pool_size, gl.strides, gl.padding, gl.data_format,
                              _on_kernels(x))
        op = "max" if gl.op == "max" else "avg"
        config = (op, list(gl.pool_size), list(gl.strides), gl.padding)
        if _channels_last_view(x, gl.data_format):
            y, _ = torch.ops.gpulayers.pool_forward(_to_nhwc(x), *config, "channels_last")
            return _to_nchw(y)
        y, _ = torch.ops.gpulayers.pool_forward(x, *config, gl.data_format)
        return y


class _GlobalPooling(_Module):
    def forward(self, x):
        x = self._check(x)
        gl, layer = self._gl, self._layer_name()
        validation.rank(layer, "inputs", x, gl.rank + 2, _LAYOUT[gl.data_format])
        spatial = x.shape[2:] if gl.data_format == "channels_first" else x.shape[1:-1]
        if 0 in spatial:
            raise ValueError(f"{layer}: `inputs` must not have an empty spatial axis. "
                             f"Received: inputs.shape={tuple(x.shape)}")
        if _on_kernels(x):  # the kernels take N and C as 32-bit ints
            validation.int32_sizes(layer, **{"inputs.shape": (x.shape[0], x.shape[1 if gl.data_format
                                                                                 == "channels_first" else -1])})
        op = "max" if gl.op == "max" else "avg"
        if _channels_last_view(x, gl.data_format):
            y = torch.ops.gpulayers.global_pool_forward(_to_nhwc(x), op, "channels_last", gl.keepdims)
            return _to_nchw(y) if gl.keepdims else y
        return torch.ops.gpulayers.global_pool_forward(x, op, gl.data_format, gl.keepdims)


class _UpSampling(_Module):
    def forward(self, x):
        x = self._check(x)
        gl, layer = self._gl, self._layer_name()
        validation.rank(layer, "inputs", x, gl.rank + 2, _LAYOUT[gl.data_format])
        if _on_kernels(x) and x.numel():
            spatial = x.shape[2:] if gl.data_format == "channels_first" else x.shape[1:-1]
            validation.int32_sizes(layer, size=gl.size, **{"inputs.shape": tuple(x.shape)})
            if any((n + 1) * s >= validation.INT32_LIMIT for n, s in zip(spatial, gl.size)):
                raise ValueError(f"{layer}: the output's spatial sizes must stay below 2**31 on the kernel path "
                                 f"(the kernels use 32-bit sizes). Received: size={gl.size}, "
                                 f"inputs.shape={tuple(x.shape)}")
        config = (list(gl.size),)
        if _channels_last_view(x, gl.data_format):
            return _to_nchw(torch.ops.gpulayers.upsample_forward(_to_nhwc(x), *config, "channels_last",
                                                                 gl.interpolation))
        return torch.ops.gpulayers.upsample_forward(x, *config, gl.data_format, gl.interpolation)


def _make(name, base):
    layer_class = getattr(_gl, name)
    cls = type(name, (base,), {"_layer_class": layer_class, "__module__": __name__,
                               "__doc__": f"PyTorch module of gpulayers.{name} (same arguments).\n\n    "
                                          + (layer_class.__doc__ or "")})
    return cls


MaxPooling1D, MaxPooling2D, MaxPooling3D = (_make(f"MaxPooling{k}D", _Pooling) for k in (1, 2, 3))
AveragePooling1D, AveragePooling2D, AveragePooling3D = (_make(f"AveragePooling{k}D", _Pooling) for k in (1, 2, 3))
GlobalMaxPooling1D, GlobalMaxPooling2D, GlobalMaxPooling3D = (
    _make(f"GlobalMaxPooling{k}D", _GlobalPooling) for k in (1, 2, 3))
GlobalAveragePooling1D, GlobalAveragePooling2D, GlobalAveragePooling3D = (
    _make(f"GlobalAveragePooling{k}D", _GlobalPooling) for k in (1, 2, 3))
UpSampling1D, UpSampling2D, UpSampling3D = (_make(f"UpSampling{k}D", _UpSampling) for k in (1, 2, 3))


class _Lazy(LazyModuleMixin, _Module):
    """Weights created from the first input (Keras's lazy build), as torch's Lazy* modules."""

    def _materialize(self, x, input_shape):
        xp_dtype = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}[x.dtype]
        self._gl.build(tuple(input_shape), np, np.dtype(xp_dtype))
        self._gl.built = True
        values = {**self._gl.params, **self._gl.state}
        with torch.no_grad():
            for name, t in self._named_weights():
                if isinstance(t, (UninitializedParameter, UninitializedBuffer)):  # else loaded from a state dict
                    value = torch.from_numpy(np.ascontiguousarray(values[name]))
                    t.materialize(value.shape, device=x.device, dtype=value.dtype)
                    t.copy_(value)
        self._gl.params, self._gl.state = {}, {}  # the module's tensors are the one place weights live


class BatchNormalization(_Lazy):
    __doc__ = ("PyTorch module of gpulayers.BatchNormalization (same arguments). ``module.training`` "
               "selects batch statistics (and updates the buffers moving_mean/moving_variance) or the "
               "moving ones. ``synchronized=True`` merges the batch statistics of every process of "
               "``process_group`` (default: torch.distributed's default group), as torch.nn.SyncBatchNorm.\n\n    "
               + (_gl.BatchNormalization.__doc__ or ""))
    _layer_class = _gl.BatchNormalization

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # the op takes the process group as an int (0: the default group); -1: not synchronized
        self._group_key = distributed.group_key(self._gl.process_group) if self._gl.synchronized else -1
        for name in self._gl.weight_names:
            if name.startswith("moving"):
                self.register_buffer(name, UninitializedBuffer())
            else:
                setattr(self, name, UninitializedParameter())

    def initialize_parameters(self, x, *args, **kwargs):
        x = self._check(x)
        self._materialize(x, x.shape)

    def forward(self, x):
        x = self._check(x)
        gl, layer = self._gl, self._layer_name()
        if x.dim() != gl._input_rank:
            raise ValueError(f"{layer}: `inputs` must be {gl._input_rank}-D like the first call. "
                             f"Received: inputs.shape={tuple(x.shape)}")
        shape = tuple(x.shape[a] for a in gl._axes)
        if shape != tuple(self.moving_mean.shape):
            raise ValueError(f"{layer}: `inputs` must have sizes {tuple(self.moving_mean.shape)} on "
                             f"axis {gl.axis}. Received: inputs.shape={tuple(x.shape)}")
        if _on_kernels(x) and math.prod(shape) >= validation.INT32_LIMIT:
            raise ValueError(f"{layer}: the number of channels must be below 2**31 on the kernel path (the "
                             f"kernels use 32-bit sizes). Received: inputs.shape={tuple(x.shape)}")
        axes = list(gl._axes)
        if _channels_last_view(x, "channels_first") and axes == [1]:
            x, axes, back = _to_nhwc(x), [x.dim() - 1], True
        else:
            back = False
        group = self._group_key if self.training else -1  # without a process group: one process, a warning
        y, mean, var, _, count = torch.ops.gpulayers.batch_norm_forward(
            x, getattr(self, "gamma", None), getattr(self, "beta", None), self.moving_mean, self.moving_variance,
            axes, gl.epsilon, self.training, group)
        if self.training:
            m = gl.momentum
            some = count > 0  # an empty batch (on every process) moves nothing
            with torch.no_grad():
                self.moving_mean.copy_(torch.where(some, self.moving_mean * m + mean * (1 - m), self.moving_mean))
                self.moving_variance.copy_(torch.where(some, self.moving_variance * m + var * (1 - m),
                                                       self.moving_variance))
        return _to_nchw(y) if back else y


class _Recurrent(_Lazy):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in self._gl.weight_names:
            setattr(self, name, UninitializedParameter())

    def initialize_parameters(self, x, *args, **kwargs):
        x = self._check(x)
        validation.rank(self._layer_name(), "inputs", x, 3, "(batch, time, features)")
        self._materialize(x, x.shape)

    def forward(self, x, initial_state=None, mask=None):
        x = self._check(x)
        gl, layer = self._gl, self._layer_name()
        validation.rank(layer, "inputs", x, 3, "(batch, time, features)")
        if x.shape[-1] != self.kernel.shape[0]:
            raise ValueError(f"{layer}: `inputs` must have {self.kernel.shape[0]} features, as when the layer was "
                             f"built. Received: inputs.shape={tuple(x.shape)}")
        if x.shape[1] == 0:  # a zero-size batch is fine; no time steps is not
            raise ValueError(f"{layer}: `inputs` must have at least one time step. "
                             f"Received: inputs.shape={tuple(x.shape)}")
        if _on_kernels(x):
            validation.int32_sizes(layer, **{"inputs.shape": tuple(x.shape)})
        states = None
        if initial_state is not None:
            states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
            if len(states) != gl.state_count:
                raise ValueError(f"{layer}: `initial_state` must be a list of {gl.state_count} tensors. "
                                 f"Received: {len(states)} tensors")
            for k, s in enumerate(states):
                if not isinstance(s, torch.Tensor) or tuple(s.shape) != (x.shape[0], gl.units):
                    raise ValueError(f"{layer}: `initial_state[{k}]` must have shape (batch, units) = "
                                     f"{(x.shape[0], gl.units)}. Received: shape {getattr(s, 'shape', None)}")
                if s.dtype != x.dtype:
                    raise TypeError(f"{layer}: `initial_state[{k}]` must have the inputs' dtype {x.dtype}. "
                                    f"Received: dtype {s.dtype}")
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(x.shape[:2]):
                raise ValueError(f"{layer}: `mask` must have shape (batch, time) = {tuple(x.shape[:2])}. "
                                 f"Received: mask.shape={getattr(mask, 'shape', type(mask).__name__)}")
            if mask.dtype != torch.bool:
                raise TypeError(f"{layer}: `mask` must be a bool tensor. Received: mask.dtype={mask.dtype}")
        spec = gl.spec
        h0 = states[0] if states else None
        c0 = states[1] if states and len(states) > 1 else None
        outputs, h, c, *_ = torch.ops.gpulayers.rnn_forward(
            x, self.kernel, self.recurrent_kernel, getattr(self, "bias", None), h0, c0, mask, spec.cell, spec.units,
            spec.activation, spec.recurrent_activation, spec.go_backwards, spec.zero_output_for_mask)
        y = outputs.transpose(0, 1).contiguous() if gl.return_sequences else outputs[-1]
        if gl.return_state:
            return [y, h] + ([c] if spec.has_cell_state else [])
        return y

    def load_torch_state_dict(self, state_dict, suffix="_l0"):
        """Load the weights of a PyTorch nn.RNN (tanh)/nn.LSTM/nn.GRU state dict (module built first)."""
        self.set_weights(_torch_weights.from_torch_state_dict(type(self).__name__, state_dict, suffix))

    def torch_state_dict(self, suffix="_l0"):
        """The weights as a PyTorch nn.RNN/nn.LSTM/nn.GRU state dict of tensors."""
        layer = copy.copy(self._gl)
        layer.params = {n: t.detach().cpu().numpy() for n, t in self._named_weights()}
        layer.built = True
        return {k: torch.from_numpy(v) for k, v in _torch_weights.to_torch_state_dict(layer, suffix).items()}


SimpleRNN = type("SimpleRNN", (_Recurrent,), {"_layer_class": _gl.SimpleRNN, "__module__": __name__,
                                              "__doc__": "PyTorch module of gpulayers.SimpleRNN (same arguments).\n\n    "
                                              + (_gl.SimpleRNN.__doc__ or "")})
LSTM = type("LSTM", (_Recurrent,), {"_layer_class": _gl.LSTM, "__module__": __name__,
                                    "__doc__": "PyTorch module of gpulayers.LSTM (same arguments).\n\n    "
                                    + (_gl.LSTM.__doc__ or "")})
GRU = type("GRU", (_Recurrent,), {"_layer_class": _gl.GRU, "__module__": __name__,
                                  "__doc__": "PyTorch module of gpulayers.GRU (same arguments).\n\n    "
                                  + (_gl.GRU.__doc__ or "")})


class Bidirectional(nn.Module):
    """PyTorch module of gpulayers.Bidirectional: runs a recurrent module forwards and a copy of it
    backwards, then merges (``merge_mode`` "concat", "sum", "mul", "ave" or None).

    ``layer``: a gpulayers.torch SimpleRNN, LSTM or GRU whose arguments give the forward
    direction: a new module (as Keras, and gpulayers.Bidirectional, build the wrapped layer
    from its config), so ``layer`` is never changed, built or shared; ``backward_layer``:
    optional module whose arguments give the backward direction (default: ``layer``'s with
    go_backwards flipped and seed + 1). Weights (Keras order): the forward module's, then the
    backward module's, as ``forward_layer.*`` and ``backward_layer.*``.
    """

    MERGE_MODES = ("concat", "sum", "mul", "ave", None)

    def __init__(self, layer, merge_mode="concat", weights=None, backward_layer=None, name=None, **kwargs):
        super().__init__()
        me = type(self).__name__
        if not isinstance(layer, _Recurrent):
            raise TypeError(f"{me}: `layer` must be a gpulayers.torch SimpleRNN, LSTM or GRU instance. "
                            f"Received: layer of type {type(layer).__name__}")
        if backward_layer is not None and not isinstance(backward_layer, _Recurrent):
            raise TypeError(f"{me}: `backward_layer` must be a gpulayers.torch SimpleRNN, LSTM or GRU instance. "
                            f"Received: backward_layer of type {type(backward_layer).__name__}")
        # validation, and both directions' configurations, by gpulayers.Bidirectional
        self._gl = _gl.Bidirectional(layer._gl, merge_mode=merge_mode, weights=weights,
                                     backward_layer=None if backward_layer is None else backward_layer._gl,
                                     name=name, **kwargs)
        self.forward_layer = type(layer)(_layer=self._gl.forward_layer)
        self.backward_layer = type(backward_layer or layer)(_layer=self._gl.backward_layer)
        self.merge_mode = merge_mode

    def _named_weights(self):
        return [(f"forward_{n}", t) for n, t in self.forward_layer._named_weights()] + \
            [(f"backward_{n}", t) for n, t in self.backward_layer._named_weights()]

    get_weights = _Module.get_weights

    def set_weights(self, weights):
        n = len(self.forward_layer._gl.weight_names)
        total = n + len(self.backward_layer._gl.weight_names)
        if len(weights) != total:
            raise ValueError(f"{type(self).__name__}: set_weights() expects {total} arrays "
                             f"({', '.join(k for k, _ in self._named_weights())}). Received: {len(weights)} arrays")
        self.forward_layer.set_weights(weights[:n])
        self.backward_layer.set_weights(weights[n:])

    def forward(self, x, initial_state=None, mask=None):
        fs = bs = None
        if initial_state is not None:
            states = list(initial_state)
            n = self.forward_layer._gl.state_count
            if len(states) != 2 * n:
                raise ValueError(f"{type(self).__name__}: `initial_state` must hold {2 * n} tensors (forward "
                                 f"then backward states). Received: {len(states)} tensors")
            fs, bs = states[:n], states[n:]
        yf = self.forward_layer(x, initial_state=fs, mask=mask)
        yb = self.backward_layer(x, initial_state=bs, mask=mask)
        sf, sb = [], []
        if self._gl.return_state:
            (yf, *sf), (yb, *sb) = yf, yb
        if self._gl.return_sequences:
            yb = torch.flip(yb, dims=(1,))
        out = _rnn.merge_directions(self.merge_mode, yf, yb, lambda a, b: torch.cat([a, b], dim=-1)) + sf + sb
        return out if len(out) > 1 else out[0]


class _Weighted(_Lazy):
    """Dense, Conv2D, Conv2DTranspose: ``kernel`` and (use_bias) ``bias`` parameters, built from
    the first input's shape with the layer's initializers and seed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in self._gl.weight_names:
            setattr(self, name, UninitializedParameter())

    def initialize_parameters(self, x, *args, **kwargs):
        x = self._check(x)
        self._validate_rank(x)
        self._materialize(x, x.shape)


class Dense(_Weighted):
    __doc__ = ("PyTorch module of gpulayers.Dense (same arguments): y = activation(x @ kernel + bias), "
               "one op forward (gpulayers::dense_forward) and one backward.\n\n    " + (_gl.Dense.__doc__ or ""))
    _layer_class = _gl.Dense

    def _validate_rank(self, x):
        if x.dim() < 2:
            raise ValueError(f"{self._layer_name()}: `inputs` must have rank >= 2 (batch, ..., features). "
                             f"Received: inputs.shape={tuple(x.shape)}")

    def forward(self, x):
        x = self._check(x)
        self._validate_rank(x)
        if x.shape[-1] != self.kernel.shape[0]:
            raise ValueError(f"{self._layer_name()}: `inputs` must have {self.kernel.shape[0]} features on the last "
                             f"axis (the kernel is {tuple(self.kernel.shape)}). "
                             f"Received: inputs.shape={tuple(x.shape)}")
        y, _ = torch.ops.gpulayers.dense_forward(x, self.kernel, getattr(self, "bias", None), self._gl.activation)
        return y


class _Convolution(_Weighted):
    def _validate_rank(self, x):
        validation.rank(self._layer_name(), "inputs", x, 4, f"({self._gl._layout_text()})")

    def forward(self, x):
        x = self._check(x)
        gl, layer = self._gl, self._layer_name()
        self._validate_rank(x)
        c = self.kernel.shape[3] if gl.transpose else self.kernel.shape[2]
        if gl._channels(x.shape) != c:
            raise ValueError(f"{layer}: `inputs` must have {c} channels (the kernel is {tuple(self.kernel.shape)}). "
                             f"Received: inputs.shape={tuple(x.shape)}")
        out = gl._out_spatial(_conv._spatial(tuple(x.shape), gl.data_format))
        if min(out) <= 0 or x.shape[0] == 0:
            raise ValueError(f"{layer}: the output would be empty ({out[0]} x {out[1]}) for a kernel "
                             f"{gl.kernel_size} with dilation {gl.dilation_rate}. "
                             f"Received: inputs.shape={tuple(x.shape)}")
        if _on_kernels(x):  # the im2col/col2im kernels take 32-bit sizes
            validation.int32_sizes(layer, **{"inputs.shape": tuple(x.shape)})
        output_padding = [-1 if p is None else p for p in gl.output_padding]
        y, _ = torch.ops.gpulayers.conv2d_forward(
            x, self.kernel, getattr(self, "bias", None), gl.transpose, list(gl.strides), gl.padding,
            list(gl.dilation_rate), output_padding, gl.data_format, gl.activation)
        return y


Conv2D = type("Conv2D", (_Convolution,), {
    "_layer_class": _gl.Conv2D, "__module__": __name__,
    "__doc__": "PyTorch module of gpulayers.Conv2D (same arguments; kernel (kh, kw, in, filters) as Keras), "
               "ops gpulayers::conv2d_forward/backward.\n\n    " + (_gl.Conv2D.__doc__ or "")})
Conv2DTranspose = type("Conv2DTranspose", (_Convolution,), {
    "_layer_class": _gl.Conv2DTranspose, "__module__": __name__,
    "__doc__": "PyTorch module of gpulayers.Conv2DTranspose (same arguments; kernel (kh, kw, filters, in) as "
               "Keras), ops gpulayers::conv2d_forward/backward.\n\n    " + (_gl.Conv2DTranspose.__doc__ or "")})


class Activation(_Module):
    __doc__ = ("PyTorch module of gpulayers.Activation (same arguments), ops gpulayers::activation_forward/"
               "backward (the backward recomputes the activation from the input).\n\n    "
               + (_gl.Activation.__doc__ or ""))
    _layer_class = _gl.Activation

    def forward(self, x):
        x = self._check(x)
        if self._gl.activation == "softmax" and x.dim() == 0:
            raise ValueError(f"{self._layer_name()}: softmax needs at least 1-D inputs. "
                             f"Received: inputs.shape={tuple(x.shape)}")
        return torch.ops.gpulayers.activation_forward(x, self._gl.activation)


class Flatten(_Module):
    __doc__ = ("PyTorch module of gpulayers.Flatten (same arguments). No kernel is involved: a reshape (a view "
               "where the layout allows), with channels_first moving the channel axis last first, as the "
               "layer.\n\n    " + (_gl.Flatten.__doc__ or ""))
    _layer_class = _gl.Flatten

    def forward(self, x):
        x = self._check(x)
        if x.dim() < 1:
            raise ValueError(f"{self._layer_name()}: `inputs` must have a batch axis. "
                             f"Received: inputs.shape={tuple(x.shape)}")
        if self._gl.data_format == "channels_first" and x.dim() > 2:
            x = x.movedim(1, -1)
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # also for an empty batch


class Dropout(_Module):
    __doc__ = ("PyTorch module of gpulayers.Dropout (same arguments): inverted dropout while ``module.training``, "
               "the identity (the input itself) in eval mode. Each training call draws a new mask; its seed comes "
               "from PyTorch's global CPU generator (``torch.manual_seed``; this works under "
               "``torch.compile(fullgraph=True)``) or, with ``seed=``, from the module's own NumPy generator "
               "(reproducible per module; eager mode only). The op gpulayers::dropout_forward returns the mask, "
               "which the backward uses.\n\n    " + (_gl.Dropout.__doc__ or ""))
    _layer_class = _gl.Dropout

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._seeds = None if self._gl.seed is None else np.random.default_rng(self._gl.seed)

    def forward(self, x):
        x = self._check(x)
        if not self.training or self._gl.rate == 0:
            return x
        if self._seeds is None:
            seed = torch.randint(0, 2**62, (1,))
        else:
            seed = torch.tensor([int(self._seeds.integers(0, 2**62))])
        y, _ = torch.ops.gpulayers.dropout_forward(x, self._gl.rate, seed)
        return y


def from_layer(layer):
    """The gpulayers.torch module of a gpulayers layer: same configuration, and its weights when the
    layer is built (copied to CPU tensors; move the module with ``.to(device)``)."""
    if isinstance(layer, _gl.Bidirectional):
        module = Bidirectional(from_layer(layer.forward_layer), merge_mode=layer.merge_mode,
                               backward_layer=from_layer(layer.backward_layer))
    else:
        cls = globals().get(type(layer).__name__)
        if not isinstance(layer, _gl.Layer):
            raise TypeError(f"from_layer: `layer` must be a gpulayers layer. Received: layer of type "
                            f"{type(layer).__name__}")
        if cls is None or not isinstance(cls, type) or not issubclass(cls, _Module):
            raise TypeError(f"from_layer: gpulayers.torch has no module for {type(layer).__name__} (it has "
                            f"{', '.join(n for n in __all__ if n != 'from_layer')}). Received: layer of type "
                            f"{type(layer).__name__}")
        module = cls(_layer=layer)
    weights = layer.get_weights() if layer.built else []
    with torch.no_grad():
        for (name, t), value in zip(module._named_weights(), weights):
            value = torch.from_numpy(np.ascontiguousarray(value))
            t.materialize(value.shape, dtype=value.dtype)
            t.copy_(value)
    return module


__all__ = [
    "from_layer", "BatchNormalization",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D",
    "SimpleRNN", "LSTM", "GRU", "Bidirectional",
    "Dense", "Conv2D", "Conv2DTranspose", "Activation", "Flatten", "Dropout",
]
