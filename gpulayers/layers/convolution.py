"""Convolutions: Conv2D and Conv2DTranspose (Keras 3), forward and backward.

- NumPy reference (``conv2d_forward`` ... ``conv2d_transpose_backward``): windows through
  ``sliding_window_view`` and one ``tensordot``; the input gradient of Conv2D (and the
  forward of Conv2DTranspose) adds each kernel tap's contribution into a strided slice.
  Computed in float32 for float16 inputs (float64 for float64).
- Kernel path (``*_kernel``): ``cuda/conv.cu`` gathers windows into columns (im2col) and
  scatters columns back into images (col2im, a deterministic gather), and the products are
  GEMMs through the array module (cuBLAS on the GPU).
- The layer classes.

Geometry (per spatial axis, kernel k, stride s, dilation d, k_eff = (k - 1) d + 1):
  Conv2D           "valid": out = floor((in - k_eff) / s) + 1;
                   "same": out = ceil(in / s), pad_total = max((out - 1) s + k_eff - in, 0),
                   pad_before = pad_total // 2 (TF/Keras); y[o] reads x[o s + t d - pad_before].
  Conv2DTranspose  input position i, tap t writes output o = i s + t d - P, with Keras's
                   output length: "valid": (in - 1) s + max(k_eff, s); "same": in * s; with
                   ``output_padding`` p: (in - 1) s + k_eff - 2 * pad + p, pad = 0 ("valid")
                   or k_eff // 2 ("same").
"""
from __future__ import annotations

import functools

import numpy as np

from .. import kernels, validation
from ._common import from_channels_last, int32_args, split_channels, to_channels_last
from ._signature import with_signature
from .base import Layer
from .core import acc_dtype, activation_backward, activation_forward, activation_name, initializer, make_weight, \
    positive_int

SOURCE = "conv.cu"
BLOCK = 256

IM2COL = kernels.Kernel(SOURCE, "im2col", channels_last=bool)
COL2IM = kernels.Kernel(SOURCE, "col2im", channels_last=bool)


# ----------------------------------------------------------------------------- geometry

def conv_geometry(size, kernel, stride, dilation, padding):
    """(out, pad_before) along one axis of Conv2D."""
    k_eff = (kernel - 1) * dilation + 1
    if padding == "valid":
        return (size - k_eff) // stride + 1, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + k_eff - size, 0)
    return out, total // 2


def conv_transpose_geometry(size, kernel, stride, dilation, padding, output_padding):
    """(out, P) along one axis of Conv2DTranspose: input i, tap t writes output i s + t d - P."""
    k_eff = (kernel - 1) * dilation + 1
    if padding == "valid":
        extra = max(k_eff, stride) - k_eff if output_padding is None else output_padding
        left, right = k_eff - 1, k_eff - 1 + extra
    else:
        pad_len = stride + k_eff - 2 if output_padding is None else k_eff + k_eff % 2 - 2 + output_padding
        left = min(pad_len // 2 + pad_len % 2, k_eff - 1)
        right = pad_len - left
    out = (size - 1) * stride + 1 + left + right - k_eff + 1
    return out, k_eff - 1 - left


_to_cl = to_channels_last


def _from_cl(x, data_format):
    """:func:`from_channels_last`, made contiguous when it moved the channels."""
    return np.ascontiguousarray(from_channels_last(x, data_format)) if data_format == "channels_first" else x


def _windows(xpad, k, s, d, count):
    """(N, count_h, count_w, KH, KW, C) windows of a padded channels_last array, contiguous
    (the columns of an im2col: C fastest, as in the array)."""
    k_eff = [(k[a] - 1) * d[a] + 1 for a in range(2)]
    win = np.lib.stride_tricks.sliding_window_view(xpad, k_eff, axis=(1, 2))
    win = win[:, ::s[0], ::s[1], :, ::d[0], ::d[1]][:, :count[0], :count[1]]
    return np.ascontiguousarray(win.transpose(0, 1, 2, 4, 5, 3))


def _scatter_taps(cols, image_shape, s, d, pad):
    """image[n, o s + t d - pad, ...] += cols[n, o, t, ...]: the transpose of _windows.

    cols: (N, OH, OW, KH, KW, C) -> image (N, H, W, C), both channels_last."""
    n, oh, ow, kh, kw, c = cols.shape
    size = [max(image_shape[1 + a] + pad[a], (cols.shape[1 + a] - 1) * s[a] + (cols.shape[3 + a] - 1) * d[a] + 1)
            for a in range(2)]
    buf = np.zeros((n, size[0], size[1], c), cols.dtype)
    for i in range(kh):
        for j in range(kw):
            buf[:, i * d[0]:i * d[0] + (oh - 1) * s[0] + 1:s[0], j * d[1]:j * d[1] + (ow - 1) * s[1] + 1:s[1]] \
                += cols[:, :, :, i, j]
    return buf[:, pad[0]:pad[0] + image_shape[1], pad[1]:pad[1] + image_shape[2]]


def _pad_for_windows(x, out, k, s, d, pad):
    """x (channels_last) zero-padded so that ``out`` windows starting at -pad fit."""
    need = [(out[a] - 1) * s[a] + (k[a] - 1) * d[a] + 1 for a in range(2)]
    after = [max(need[a] - pad[a] - x.shape[1 + a], 0) for a in range(2)]
    return np.pad(x, ((0, 0), (pad[0], after[0]), (pad[1], after[1]), (0, 0)))


# ----------------------------------------------------------------------------- NumPy reference

def conv2d_forward(x, kernel, bias, strides, padding, dilation, data_format="channels_last"):
    """Conv2D without activation: y[n, o, f] = sum x[n, o s + t d - pad, c] kernel[t, c, f] + bias[f]."""
    acc = acc_dtype(x.dtype)
    xc = _to_cl(x, data_format).astype(acc)
    k = kernel.shape[:2]
    geo = [conv_geometry(xc.shape[1 + a], k[a], strides[a], dilation[a], padding) for a in range(2)]
    out, pad = [g[0] for g in geo], [g[1] for g in geo]
    win = _windows(_pad_for_windows(xc, out, k, strides, dilation, pad), k, strides, dilation, out)
    y = np.tensordot(win, kernel.astype(acc), axes=3)  # taps (kh, kw, c) against kernel (kh, kw, c, f)
    if bias is not None:
        y = y + bias
    return _from_cl(y, data_format)


def conv2d_backward(x, dz, kernel, strides, padding, dilation, data_format="channels_last"):
    """(dx, d kernel, d bias) of Conv2D from dz = d(loss)/d(pre-activation output), in acc dtype."""
    acc = acc_dtype(x.dtype)
    xc = _to_cl(x, data_format).astype(acc)
    g = _to_cl(dz, data_format).astype(acc)
    k = kernel.shape[:2]
    out, pad = list(g.shape[1:3]), [conv_geometry(xc.shape[1 + a], k[a], strides[a], dilation[a], padding)[1]
                                     for a in range(2)]
    win = _windows(_pad_for_windows(xc, out, k, strides, dilation, pad), k, strides, dilation, out)
    dkernel = np.tensordot(win, g, axes=([0, 1, 2], [0, 1, 2]))  # (KH, KW, C, F)
    dcols = np.tensordot(g, kernel.astype(acc), axes=([3], [3]))  # (N, OH, OW, KH, KW, C)
    dx = _scatter_taps(dcols, xc.shape, strides, dilation, pad)
    return _from_cl(dx, data_format), dkernel, g.sum(axis=(0, 1, 2))


def conv2d_transpose_forward(x, kernel, bias, strides, padding, dilation, output_padding,
                             data_format="channels_last"):
    """Conv2DTranspose without activation: y[n, i s + t d - P, f] += x[n, i, c] kernel[t, f, c]."""
    acc = acc_dtype(x.dtype)
    xc = _to_cl(x, data_format).astype(acc)
    k = kernel.shape[:2]
    geo = [conv_transpose_geometry(xc.shape[1 + a], k[a], strides[a], dilation[a], padding, output_padding[a])
           for a in range(2)]
    cols = np.tensordot(xc, kernel.astype(acc), axes=([3], [3]))  # (N, IH, IW, KH, KW, F)
    y = _scatter_taps(cols, (xc.shape[0], geo[0][0], geo[1][0], kernel.shape[2]), strides, dilation,
                      [g[1] for g in geo])
    if bias is not None:
        y = y + bias
    return _from_cl(y, data_format)


def conv2d_transpose_backward(x, dz, kernel, strides, padding, dilation, output_padding,
                              data_format="channels_last"):
    """(dx, d kernel, d bias) of Conv2DTranspose: its input gradient is a Conv2D of dz."""
    acc = acc_dtype(x.dtype)
    xc = _to_cl(x, data_format).astype(acc)
    g = _to_cl(dz, data_format).astype(acc)
    k = kernel.shape[:2]
    pad = [conv_transpose_geometry(xc.shape[1 + a], k[a], strides[a], dilation[a], padding, output_padding[a])[1]
           for a in range(2)]
    win = _windows(_pad_for_windows(g, xc.shape[1:3], k, strides, dilation, pad), k, strides, dilation,
                   xc.shape[1:3])  # (N, IH, IW, KH, KW, F)
    dx = np.tensordot(win, kernel.astype(acc), axes=3)  # against kernel (kh, kw, f, c)
    dkernel = np.tensordot(win, xc, axes=([0, 1, 2], [0, 1, 2]))  # (KH, KW, F, C)
    return _from_cl(dx, data_format), dkernel, g.sum(axis=(0, 1, 2))


# ----------------------------------------------------------------------------- kernel path

def _geometry_args(image_shape, data_format, positions, k, s, d, pad):
    """The 14 int32 arguments of im2col/col2im: N, C, H, W, OH, OW, KH, KW, SH, SW, DH, DW, PH, PW."""
    return _packed_geometry(tuple(image_shape), data_format, *(tuple(int(v) for v in t) for t in (positions, k, s, d, pad)))


@functools.lru_cache(maxsize=512)
def _packed_geometry(image_shape, data_format, positions, k, s, d, pad):
    n, c, hw = split_channels(image_shape, data_format)
    return int32_args(n, c, *hw, *positions, *k, *s, *d, *pad)


def im2col_kernel(image, positions, k, s, d, pad, data_format):
    """Columns of ``image`` (channels_last: (N*OH*OW, KH*KW*C); channels_first: (N, C*KH*KW, OH*OW))."""
    xp = kernels.array_module(image)
    image = xp.ascontiguousarray(image)
    cl = data_format == "channels_last"
    n, c, _ = split_channels(image.shape, data_format)
    args = _geometry_args(image.shape, data_format, positions, k, s, d, pad)
    kk = k[0] * k[1] * c
    shape = (n * positions[0] * positions[1], kk) if cl else (n, kk, positions[0] * positions[1])
    cols = xp.empty(shape, acc_dtype(image.dtype))
    IM2COL.launch(image.dtype, kernels.grid_1d(cols.size, BLOCK), BLOCK, (image, cols, *args), channels_last=cl)
    return cols


def col2im_kernel(cols, image_shape, dtype, positions, k, s, d, pad, data_format):
    """The image (of ``image_shape`` and ``dtype``) summing every column entry that reads each element."""
    xp = kernels.array_module(cols)
    cols = xp.ascontiguousarray(cols)
    cl = data_format == "channels_last"
    args = _geometry_args(image_shape, data_format, positions, k, s, d, pad)
    image = xp.empty(image_shape, dtype)
    COL2IM.launch(np.dtype(dtype), kernels.grid_1d(image.size, BLOCK), BLOCK, (cols, image, *args), channels_last=cl)
    return image


def _kernel_matrix(kernel, data_format):
    """Conv2D kernel (KH, KW, C, F) as the GEMM operand: (KH*KW*C, F) or, channels_first, (F, C*KH*KW)."""
    xp = kernels.array_module(kernel)
    kh, kw, c, f = kernel.shape
    if data_format == "channels_last":
        return kernel.reshape(kh * kw * c, f)
    return xp.ascontiguousarray(kernel.transpose(3, 2, 0, 1)).reshape(f, c * kh * kw)


def _spatial(shape, data_format):
    return tuple(shape[1:3]) if data_format == "channels_last" else tuple(shape[2:4])


def conv2d_forward_kernel(x, kernel, bias, strides, padding, dilation, data_format):
    """Kernel path of conv2d_forward: im2col, one GEMM (batched for channels_first), bias; acc dtype out."""
    xp = kernels.array_module(x)
    k = kernel.shape[:2]
    hw = _spatial(x.shape, data_format)
    geo = [conv_geometry(hw[a], k[a], strides[a], dilation[a], padding) for a in range(2)]
    out, pad = (geo[0][0], geo[1][0]), (geo[0][1], geo[1][1])
    cols = im2col_kernel(x, out, k, strides, dilation, pad, data_format)
    w = _kernel_matrix(kernel, data_format)
    f = kernel.shape[3]
    if data_format == "channels_last":
        y = (cols @ w).reshape(x.shape[0], out[0], out[1], f)
        if bias is not None:
            y += bias
    else:
        y = xp.matmul(w, cols).reshape(x.shape[0], f, out[0], out[1])
        if bias is not None:
            y += bias.reshape(f, 1, 1)
    return y


def conv2d_backward_kernel(x, dz, kernel, strides, padding, dilation, data_format):
    """Kernel path of conv2d_backward (columns recomputed from x): GEMMs, then col2im for dx."""
    xp = kernels.array_module(x)
    k = kernel.shape[:2]
    kh, kw, c, f = kernel.shape
    hw = _spatial(x.shape, data_format)
    pad = tuple(conv_geometry(hw[a], k[a], strides[a], dilation[a], padding)[1] for a in range(2))
    out = _spatial(dz.shape, data_format)
    cols = im2col_kernel(x, out, k, strides, dilation, pad, data_format)
    w = _kernel_matrix(kernel, data_format)
    if data_format == "channels_last":
        g = dz.reshape(-1, f)
        dkernel = (cols.T @ g).reshape(kh, kw, c, f)
        dcols = g @ w.T
        dbias = g.sum(axis=0)
    else:
        g = dz.reshape(dz.shape[0], f, -1)
        dkernel = xp.tensordot(g, cols, axes=([0, 2], [0, 2])).reshape(f, c, kh, kw).transpose(2, 3, 1, 0)
        dcols = xp.matmul(w.T, g)
        dbias = g.sum(axis=(0, 2))
    dx = col2im_kernel(dcols, x.shape, x.dtype, out, k, strides, dilation, pad, data_format)
    return dx, xp.ascontiguousarray(dkernel), dbias


def _transpose_matrix(kernel, data_format):
    """Conv2DTranspose kernel (KH, KW, F, C) as the GEMM operand: (KH*KW*F, C) or (F*KH*KW, C)."""
    xp = kernels.array_module(kernel)
    kh, kw, f, c = kernel.shape
    if data_format == "channels_last":
        return kernel.reshape(kh * kw * f, c)
    return xp.ascontiguousarray(kernel.transpose(2, 0, 1, 3)).reshape(f * kh * kw, c)


def conv2d_transpose_forward_kernel(x, kernel, bias, strides, padding, dilation, output_padding, data_format):
    """Kernel path of conv2d_transpose_forward: one GEMM to columns, col2im to the output; acc dtype out."""
    xp = kernels.array_module(x)
    k = kernel.shape[:2]
    kh, kw, f, c = kernel.shape
    acc = kernel.dtype
    hw = _spatial(x.shape, data_format)
    geo = [conv_transpose_geometry(hw[a], k[a], strides[a], dilation[a], padding, output_padding[a]) for a in range(2)]
    out, pad = (geo[0][0], geo[1][0]), (geo[0][1], geo[1][1])
    w = _transpose_matrix(kernel, data_format)
    n = x.shape[0]
    if data_format == "channels_last":
        cols = x.reshape(-1, c).astype(acc, copy=False) @ w.T
        y = col2im_kernel(cols, (n, out[0], out[1], f), acc, hw, k, strides, dilation, pad, data_format)
        if bias is not None:
            y += bias
    else:
        cols = xp.matmul(w, x.reshape(n, c, -1).astype(acc, copy=False))
        y = col2im_kernel(cols, (n, f, out[0], out[1]), acc, hw, k, strides, dilation, pad, data_format)
        if bias is not None:
            y += bias.reshape(f, 1, 1)
    return y


def conv2d_transpose_backward_kernel(x, dz, kernel, strides, padding, dilation, output_padding, data_format):
    """Kernel path of conv2d_transpose_backward: im2col of dz, then GEMMs."""
    xp = kernels.array_module(x)
    k = kernel.shape[:2]
    kh, kw, f, c = kernel.shape
    acc = kernel.dtype
    hw = _spatial(x.shape, data_format)
    pad = tuple(conv_transpose_geometry(hw[a], k[a], strides[a], dilation[a], padding, output_padding[a])[1]
                for a in range(2))
    dcols = im2col_kernel(dz, hw, k, strides, dilation, pad, data_format)
    w = _transpose_matrix(kernel, data_format)
    n = x.shape[0]
    if data_format == "channels_last":
        x2 = x.reshape(-1, c).astype(acc, copy=False)
        dx = (dcols @ w).reshape(x.shape)
        dkernel = (dcols.T @ x2).reshape(kh, kw, f, c)
        dbias = dz.reshape(-1, f).sum(axis=0)
    else:
        x3 = x.reshape(n, c, -1).astype(acc, copy=False)
        dx = xp.matmul(w.T, dcols).reshape(x.shape)
        dkernel = xp.tensordot(dcols, x3, axes=([0, 2], [0, 2])).reshape(f, kh, kw, c).transpose(1, 2, 0, 3)
        dbias = dz.reshape(n, f, -1).sum(axis=(0, 2))
    return dx.astype(x.dtype, copy=False), xp.ascontiguousarray(dkernel), dbias


# ----------------------------------------------------------------------------- layers

class _Conv(Layer):
    transpose = False

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", output_padding=None,
                 data_format=None, dilation_rate=(1, 1), groups=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", kernel_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, kernel_constraint=None, bias_constraint=None,
                 name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        layer = type(self).__name__
        self.filters = positive_int(layer, "filters", filters)
        self.kernel_size = validation.int_tuple(layer, "kernel_size", kernel_size, 2)
        self.strides = validation.int_tuple(layer, "strides", strides, 2)
        self.padding = validation.choice(layer, "padding", padding, ("valid", "same"))
        self.data_format = validation.data_format(layer, data_format)
        self.dilation_rate = validation.int_tuple(layer, "dilation_rate", dilation_rate, 2)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"{layer}: `strides` > 1 and `dilation_rate` > 1 cannot be combined. "
                             f"Received: strides={strides!r}, dilation_rate={dilation_rate!r}")
        if output_padding is None:
            self.output_padding = (None, None)
        else:
            pads = (output_padding,) * 2 if isinstance(output_padding, (int, np.integer)) else output_padding
            if (not isinstance(pads, (tuple, list)) or len(pads) != 2
                    or not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) and 0 <= p < s
                               for p, s in zip(pads, self.strides))):
                raise ValueError(f"{layer}: `output_padding` must be None or non-negative ints smaller than the "
                                 f"strides {self.strides}. Received: output_padding={output_padding!r}")
            self.output_padding = tuple(int(p) for p in pads)
        self.activation = activation_name(layer, "activation", activation)
        self.use_bias = validation.boolean(layer, "use_bias", use_bias)
        self.kernel_initializer = initializer(layer, "kernel_initializer", kernel_initializer)
        self.bias_initializer = initializer(layer, "bias_initializer", bias_initializer)
        validation.unsupported(layer, groups=(groups, 1), kernel_regularizer=(kernel_regularizer, None),
                               bias_regularizer=(bias_regularizer, None),
                               activity_regularizer=(activity_regularizer, None),
                               kernel_constraint=(kernel_constraint, None), bias_constraint=(bias_constraint, None))
        self.weight_names = ("kernel", "bias") if self.use_bias else ("kernel",)

    def _channels(self, shape):
        return shape[-1] if self.data_format == "channels_last" else shape[1]

    def _out_spatial(self, hw):
        if self.transpose:
            return tuple(conv_transpose_geometry(hw[a], self.kernel_size[a], self.strides[a], self.dilation_rate[a],
                                                 self.padding, self.output_padding[a])[0] for a in range(2))
        return tuple(conv_geometry(hw[a], self.kernel_size[a], self.strides[a], self.dilation_rate[a],
                                   self.padding)[0] for a in range(2))

    def compute_output_shape(self, input_shape):
        out = self._out_spatial(_spatial(input_shape, self.data_format))
        if self.data_format == "channels_last":
            return (input_shape[0], *out, self.filters)
        return (input_shape[0], self.filters, *out)

    def build(self, input_shape, xp, dtype):
        layer = type(self).__name__
        if len(input_shape) != 4:
            raise ValueError(f"{layer}: `inputs` must be 4-D ({self._layout_text()}). "
                             f"Received: inputs.shape={tuple(input_shape)}")
        c = int(self._channels(input_shape))
        kh, kw = self.kernel_size
        shape = (kh, kw, self.filters, c) if self.transpose else (kh, kw, c, self.filters)
        rng = np.random.default_rng(self.seed)
        wdtype = acc_dtype(dtype)
        params = {"kernel": make_weight(self.kernel_initializer, rng, shape, wdtype)}
        if self.use_bias:
            params["bias"] = make_weight(self.bias_initializer, rng, (self.filters,), wdtype)
        self.params = {k: xp.asarray(v) for k, v in params.items()}

    def _layout_text(self):
        return "batch, rows, cols, channels" if self.data_format == "channels_last" else "batch, channels, rows, cols"

    def forward(self, x, training=False):
        layer = type(self).__name__
        validation.rank(layer, "inputs", x, 4, f"({self._layout_text()})")
        kernel = self.params["kernel"]
        c = kernel.shape[3] if self.transpose else kernel.shape[2]
        if self._channels(x.shape) != c:
            raise ValueError(f"{layer}: `inputs` must have {c} channels (the kernel is {tuple(kernel.shape)}). "
                             f"Received: inputs.shape={tuple(x.shape)}")
        out = self._out_spatial(_spatial(x.shape, self.data_format))
        if min(out) <= 0 or x.shape[0] == 0:
            raise ValueError(f"{layer}: the output would be empty ({out[0]} x {out[1]}) for a kernel "
                             f"{self.kernel_size} with dilation {self.dilation_rate}. "
                             f"Received: inputs.shape={tuple(x.shape)}")
        _, on_kernels = kernels.kernel_path(x)
        bias = self.params.get("bias")
        if self.transpose:
            args = (self.strides, self.padding, self.dilation_rate, self.output_padding, self.data_format)
            z = conv2d_transpose_forward_kernel(x, kernel, bias, *args) if on_kernels else \
                conv2d_transpose_forward(x, kernel, bias, *args)
        else:
            args = (self.strides, self.padding, self.dilation_rate, self.data_format)
            z = conv2d_forward_kernel(x, kernel, bias, *args) if on_kernels else conv2d_forward(x, kernel, bias, *args)
        if self.activation == "linear":
            self._saved = (x, None, None)
            return z.astype(x.dtype, copy=False)
        y = activation_forward(self.activation, z)  # softmax: over the last axis, as Keras
        self._saved = (x, z, y)
        return y.astype(x.dtype, copy=False)

    def backward_impl(self, dy):
        x, z, y = self._saved
        xp, on_kernels = kernels.kernel_path(x)
        kernel = self.params["kernel"]
        g = dy.astype(kernel.dtype, copy=False)
        if self.activation != "linear":
            g = activation_backward(self.activation, g, z, y)
        if self.transpose:
            args = (self.strides, self.padding, self.dilation_rate, self.output_padding, self.data_format)
            fn = conv2d_transpose_backward_kernel if on_kernels else conv2d_transpose_backward
        else:
            args = (self.strides, self.padding, self.dilation_rate, self.data_format)
            fn = conv2d_backward_kernel if on_kernels else conv2d_backward
        dx, dkernel, dbias = fn(x, xp.ascontiguousarray(g), kernel, *args)
        self.grads = {"kernel": dkernel.astype(kernel.dtype, copy=False)}
        if self.use_bias:
            self.grads["bias"] = dbias.astype(kernel.dtype, copy=False)
        return dx.astype(dy.dtype, copy=False)


class Conv2D(_Conv):
    """2-D convolution, as Keras 3's ``Conv2D``: y = activation(conv(x, kernel) + bias).

    Args:
        filters: positive int, output channels.
        kernel_size, strides, dilation_rate: int or tuple of 2 positive ints (strides > 1 and
            dilation > 1 cannot be combined, as Keras).
        padding: "valid" (no padding) or "same" (TF/Keras: out = ceil(in / stride), the
            smaller half of the padding before).
        data_format: "channels_last" (default, None) or "channels_first".
        activation, use_bias, kernel_initializer, bias_initializer, seed: as ``Dense``.

    Input: (batch, rows, cols, channels) or (batch, channels, rows, cols). Output: (batch,
    out_rows, out_cols, filters) or channels_first likewise; out = floor((in - k_eff) / s) + 1
    ("valid") or ceil(in / s) ("same"), k_eff = (k - 1) * dilation + 1. Weights: kernel
    (kh, kw, channels, filters), bias (filters,), float32 for float16 inputs.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), groups=1, activation=None, use_bias=True, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding, data_format=data_format,
                         dilation_rate=dilation_rate, groups=groups, activation=activation, use_bias=use_bias,
                         **kwargs)


class Conv2DTranspose(_Conv):
    """Transposed 2-D convolution ("deconvolution"), as Keras 3's ``Conv2DTranspose``.

    Args:
        filters: positive int, output channels.
        kernel_size, strides, dilation_rate: int or tuple of 2 positive ints.
        padding: "valid" or "same".
        output_padding: None or int / tuple of 2 ints, each smaller than its stride: extra
            rows/columns at the end of the output.
        data_format, activation, use_bias, kernel_initializer, bias_initializer, seed: as
            ``Conv2D``.

    Input: (batch, rows, cols, channels) or channels_first. Output rows (cols likewise):
    (rows - 1) * s + max(k_eff, s) ("valid"), rows * s ("same"), or with output_padding p
    (rows - 1) * s + k_eff - 2 * pad + p, pad = 0 ("valid") or k_eff // 2 ("same").
    Weights: kernel (kh, kw, filters, channels) -- Keras's layout -- and bias (filters,).
    Its forward is the input gradient of a Conv2D with the same kernel, and vice versa.
    """

    transpose = True

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", output_padding=None,
                 data_format=None, dilation_rate=(1, 1), activation=None, use_bias=True, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding, output_padding=output_padding,
                         data_format=data_format, dilation_rate=dilation_rate, activation=activation,
                         use_bias=use_bias, **kwargs)


# inspect.signature lists every argument (Keras's Conv2D has no output_padding, its transpose no groups)
with_signature(Conv2D, exclude=("output_padding",))
with_signature(Conv2DTranspose, exclude=("groups",))
