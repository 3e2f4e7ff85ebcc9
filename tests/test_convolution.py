"""Conv2D and Conv2DTranspose: reference vs direct loops and numerical gradients, the
im2col/col2im kernels (simulator / GPU) vs the reference in both layouts and all dtypes,
output sizes, determinism and errors."""
import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import gpulayers as gl
from gpulayers.layers import convolution as conv
from gpulayers.testing import assert_close, numerical_gradient


def direct_conv2d(x, kernel, bias, s, d, pad_before, out):
    """channels_last loops: y[n, oh, ow, f] = sum x[n, oh s + i d - pad, ow s + j d - pad, c] k[i, j, c, f]."""
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    y = np.zeros((n, out[0], out[1], f))
    for oh in range(out[0]):
        for ow in range(out[1]):
            for i in range(kh):
                for j in range(kw):
                    r, q = oh * s[0] + i * d[0] - pad_before[0], ow * s[1] + j * d[1] - pad_before[1]
                    if 0 <= r < h and 0 <= q < w:
                        y[:, oh, ow] += x[:, r, q] @ kernel[i, j]
    return y + (bias if bias is not None else 0)


def direct_conv2d_transpose(x, kernel, bias, s, d, P, out):
    """channels_last loops: y[n, i s + t d - P, f] += x[n, i, c] k[t, f, c]."""
    n, h, w, c = x.shape
    kh, kw, f, _ = kernel.shape
    y = np.zeros((n, out[0], out[1], f))
    for ih in range(h):
        for iw in range(w):
            for i in range(kh):
                for j in range(kw):
                    r, q = ih * s[0] + i * d[0] - P[0], iw * s[1] + j * d[1] - P[1]
                    if 0 <= r < out[0] and 0 <= q < out[1]:
                        y[:, r, q] += x[:, ih, iw] @ kernel[i, j].T
    return y + (bias if bias is not None else 0)


CONV = [dict(kernel_size=3), dict(kernel_size=(3, 2), strides=(2, 1), padding="same"),
        dict(kernel_size=(2, 3), dilation_rate=(2, 1), padding="same"), dict(kernel_size=4, strides=3),
        dict(kernel_size=1, strides=2, padding="same")]
CONV_T = [dict(kernel_size=3), dict(kernel_size=3, strides=2, padding="same"),
          dict(kernel_size=(2, 3), strides=(2, 3)), dict(kernel_size=4, strides=2, padding="same"),
          dict(kernel_size=3, strides=2, output_padding=1), dict(kernel_size=3, strides=3, padding="same",
                                                                  output_padding=(2, 0)),
          dict(kernel_size=3, dilation_rate=2, padding="same"), dict(kernel_size=2, strides=3)]


def _geometry(kw, transpose, hw):
    k = conv.validation.int_tuple("t", "k", kw["kernel_size"], 2)
    s = conv.validation.int_tuple("t", "s", kw.get("strides", 1), 2)
    d = conv.validation.int_tuple("t", "d", kw.get("dilation_rate", 1), 2)
    op = kw.get("output_padding")
    op = (None, None) if op is None else ((op, op) if isinstance(op, int) else op)
    if transpose:
        geo = [conv.conv_transpose_geometry(hw[a], k[a], s[a], d[a], kw.get("padding", "valid"), op[a])
               for a in range(2)]
    else:
        geo = [conv.conv_geometry(hw[a], k[a], s[a], d[a], kw.get("padding", "valid")) for a in range(2)]
    return s, d, [g[0] for g in geo], [g[1] for g in geo]


@pytest.mark.parametrize("transpose,kw", [(False, k) for k in CONV] + [(True, k) for k in CONV_T])
def test_reference_matches_direct_loops_and_numerical_gradients(transpose, kw):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 6, 3))
    cls = gl.Conv2DTranspose if transpose else gl.Conv2D
    layer = cls(2, **kw)
    layer(x)
    kernel, bias = rng.standard_normal(layer.params["kernel"].shape), rng.standard_normal(2)
    layer.set_weights([kernel, bias])
    y = layer(x)
    s, d, out, pad = _geometry(kw, transpose, (7, 6))
    direct = (direct_conv2d_transpose if transpose else direct_conv2d)(x, kernel, bias, s, d, pad, out)
    assert_close(y, direct, what="forward vs direct loops")
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)

    def with_weights(k, b):
        other = cls(2, **kw)
        other(x)
        other.set_weights([k, b])
        return other

    assert_close(dx, numerical_gradient(lambda v: with_weights(kernel, bias)(v), x, dy), np.float32, what="dx")
    assert_close(layer.grads["kernel"], numerical_gradient(lambda k: with_weights(k, bias)(x), kernel, dy),
                 np.float32, what="d kernel")
    assert_close(layer.grads["bias"], dy.sum(axis=(0, 1, 2)), what="d bias")


def test_keras_output_sizes():
    # Keras 3: Conv2D (9 -> 3 with k=3, s=3 valid; 9 -> 5 with s=2 same);
    # Conv2DTranspose (5 -> 11 with k=3, s=2 valid; 5 -> 10 same; 5 -> 12 valid with output_padding=1)
    assert conv.conv_geometry(9, 3, 3, 1, "valid")[0] == 3
    assert conv.conv_geometry(9, 3, 2, 1, "same")[0] == 5
    assert conv.conv_transpose_geometry(5, 3, 2, 1, "valid", None)[0] == 11
    assert conv.conv_transpose_geometry(5, 3, 2, 1, "same", None)[0] == 10
    assert conv.conv_transpose_geometry(5, 3, 2, 1, "valid", 1)[0] == 12
    assert conv.conv_transpose_geometry(5, 2, 3, 1, "valid", None)[0] == 15


@settings(max_examples=40, deadline=None, derandomize=True)
@given(size=st.integers(1, 12), k=st.integers(1, 5), s=st.integers(1, 4), d=st.integers(1, 3),
       same=st.booleans())
def test_transpose_is_the_adjoint_of_conv(size, k, s, d, same):
    """<conv(x), y> == <x, conv_transpose(y)> when Conv2DTranspose maps back onto x's size."""
    if s > 1 and d > 1:
        d = 1
    padding = "same" if same else "valid"
    out, _ = conv.conv_geometry(size, k, s, d, padding)
    if out <= 0:
        return
    rng = np.random.default_rng(size * 100 + k * 10 + s)
    x = rng.standard_normal((1, size, size, 2))
    kernel = rng.standard_normal((k, k, 2, 3))
    y = conv.conv2d_forward(x, kernel, None, (s, s), padding, (d, d))
    dy = rng.standard_normal(y.shape)
    dx, _, _ = conv.conv2d_backward(x, dy, kernel, (s, s), padding, (d, d))
    assert np.isclose((y * dy).sum(), (x * dx).sum(), rtol=1e-10)
    # the same through the transpose layer's reference: its forward is Conv2D's input gradient
    for op in (None, *range(s)):
        t_out, _ = conv.conv_transpose_geometry(out, k, s, d, padding, op)
        if t_out == size:
            dx_t = conv.conv2d_transpose_forward(dy, kernel, None, (s, s), padding, (d, d), (op, op))
            assert_close(dx_t, dx, what="Conv2DTranspose forward = Conv2D input gradient")


KERNEL_CASES = [
    (False, dict(kernel_size=3, padding="same"), (3, 17, 19, 5), 7),
    (False, dict(kernel_size=(3, 2), strides=2), (2, 13, 11, 4), 3),
    (False, dict(kernel_size=3, dilation_rate=(2, 3), padding="same", activation="relu"), (2, 9, 12, 3), 4),
    (True, dict(kernel_size=3, strides=2, padding="same"), (2, 7, 9, 5), 6),
    (True, dict(kernel_size=(4, 3), strides=(2, 3), output_padding=(1, 2), activation="softmax"), (2, 5, 6, 3), 4),
    (True, dict(kernel_size=3, dilation_rate=2), (3, 6, 5, 2), 3),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("transpose,kw,shape,filters", KERNEL_CASES)
def test_kernels_match_reference(kernel_path, transpose, kw, shape, filters, data_format, dtype):
    rng = np.random.default_rng(2)
    if data_format == "channels_first":
        shape = (shape[0], shape[-1], *shape[1:-1])
    x = rng.standard_normal(shape).astype(dtype)
    cls = gl.Conv2DTranspose if transpose else gl.Conv2D
    kw = dict(kw, data_format=data_format, seed=3)
    ref = cls(filters, **kw)
    y_ref = ref(x)
    ref.params["bias"][...] = rng.standard_normal(filters)  # a non-zero bias
    y_ref = ref(x)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    dx_ref = ref.backward(dy)
    bias = ref.params["bias"]

    def run(xv, dyv, b):
        layer = cls(filters, **kw)
        if kernel_path.name == "gpu":
            layer.to("gpu")
        layer(xv)
        layer.params["bias"][...] = b
        y = layer(xv)
        return y, layer.backward(dyv), layer.grads["kernel"], layer.grads["bias"]

    y, dx, dk, db = kernel_path(run, x, dy, bias)
    assert y.dtype == dtype and dx.dtype == dtype
    assert_close(y, y_ref, what="forward")
    assert_close(dx, dx_ref, what="input gradient")
    # weight gradients sum N * rows * cols products that cancel: compare normwise
    wtol = np.float16 if dtype == np.float16 else None
    assert_close(dk, ref.grads["kernel"], wtol, what="kernel gradient", normwise=True)
    assert_close(db, ref.grads["bias"], wtol, what="bias gradient", normwise=True)


def test_kernel_backward_is_bitwise_deterministic():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 11, 10, 6)).astype(np.float32)
    results = []
    for _ in range(2):
        layer = gl.Conv2DTranspose(5, 3, strides=2, padding="same", seed=1)
        with gl.simulate():
            y = layer(x)
            results.append((y, layer.backward(np.ones_like(y)), layer.grads["kernel"]))
    for a, b in zip(*results):
        assert np.array_equal(a, b)


def test_conv_inside_a_model_trains():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 64)
    stripes = np.cos(np.pi * np.arange(8))[:, None] * np.ones((8, 8))  # horizontal stripes
    x = np.where(y[:, None, None], stripes, stripes.T)[..., None] + 0.5 * rng.standard_normal((64, 8, 8, 1))
    x = x.astype(np.float32)
    model = gl.Sequential([gl.Conv2D(4, 3, padding="same", activation="relu", seed=1), gl.MaxPooling2D(2),
                           gl.Conv2DTranspose(4, 2, strides=2, activation="relu", seed=2),
                           gl.GlobalAveragePooling2D(), gl.Dense(2, seed=3)])
    model.compile(optimizer=gl.optimizers.Adam(0.01), loss=gl.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=16, epochs=8, verbose=0, seed=0)
    assert history["loss"][-1] < 0.8 * history["loss"][0]


def test_errors_change_nothing():
    layer = gl.Conv2D(4, 3)
    x = np.random.default_rng(6).standard_normal((2, 8, 8, 3)).astype(np.float32)
    layer(x)
    kernel = layer.params["kernel"].copy()
    with pytest.raises(ValueError, match=r"Conv2D: `inputs` must have 3 channels \(the kernel is \(3, 3, 3, 4\)\). "
                                         r"Received: inputs.shape=\(2, 8, 8, 5\)"):
        layer(np.zeros((2, 8, 8, 5), np.float32))
    with pytest.raises(ValueError, match=r"Conv2D: the output would be empty \(0 x 0\)"):
        layer(np.zeros((2, 2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="Conv2D: `inputs` must be 4-D"):
        layer(np.zeros((2, 8, 3), np.float32))
    assert np.array_equal(layer.params["kernel"], kernel)
    with pytest.raises(ValueError, match=r"Conv2D: `kernel_size` must be a positive int or a tuple of 2 positive "
                                         r"ints. Received: kernel_size=\(3, 0\)"):
        gl.Conv2D(4, (3, 0))
    with pytest.raises(ValueError, match="cannot be combined"):
        gl.Conv2D(4, 3, strides=2, dilation_rate=2)
    with pytest.raises(ValueError, match=r"Conv2DTranspose: `output_padding` must be None or non-negative ints "
                                         r"smaller than the strides \(2, 2\). Received: output_padding=2"):
        gl.Conv2DTranspose(4, 3, strides=2, output_padding=2)
    with pytest.raises(NotImplementedError, match="groups=2"):
        gl.Conv2D(4, 3, groups=2)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(transpose=st.booleans(), channels_first=st.booleans(), kh=st.integers(1, 4), kw=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), dilate=st.booleans(), same=st.booleans(),
       h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 5), f=st.integers(1, 5), pad_out=st.booleans())
def test_kernels_match_reference_on_random_geometries(transpose, channels_first, kh, kw, sh, sw, dilate, same, h, w,
                                                      c, f, pad_out):
    """The simulated kernels against the reference for any geometry the layers accept."""
    dilation = (2, 1) if dilate else (1, 1)
    if dilate:  # strides > 1 with dilation > 1 is refused (as Keras)
        sh = sw = 1
    kw_ = dict(kernel_size=(kh, kw), strides=(sh, sw), dilation_rate=dilation, padding="same" if same else "valid",
               data_format="channels_first" if channels_first else "channels_last", seed=1)
    if transpose and pad_out:
        kw_["output_padding"] = (sh - 1, sw - 1)
    cls = gl.Conv2DTranspose if transpose else gl.Conv2D
    shape = (2, c, h, w) if channels_first else (2, h, w, c)
    if transpose:  # Keras's deconv_output_length
        k_eff = [(k - 1) * d + 1 for k, d in zip((kh, kw), dilation)]
        if "output_padding" in kw_:
            pads = [k // 2 if same else 0 for k in k_eff]
            out = [(n - 1) * s + k - 2 * p + op for n, s, k, p, op in zip((h, w), (sh, sw), k_eff, pads,
                                                                          kw_["output_padding"])]
        else:
            out = [n * s if same else n * s + max(k - s, 0) for n, s, k in zip((h, w), (sh, sw), k_eff)]
    else:
        out = [conv.conv_geometry(n, k, s, d, kw_["padding"])[0] for n, k, s, d in zip((h, w), (kh, kw), (sh, sw),
                                                                                      dilation)]
    if min(out) <= 0:
        event("empty output refused")
        with pytest.raises(ValueError, match="the output would be empty"):
            cls(f, **kw_)(np.zeros(shape))
        return
    event("compared")
    rng = np.random.default_rng(h * 31 + w)
    x = rng.standard_normal(shape)
    ref = cls(f, **kw_)
    y_ref = ref(x)
    assert (y_ref.shape[2:4] if channels_first else y_ref.shape[1:3]) == tuple(out)  # Keras's output size
    dy = rng.standard_normal(y_ref.shape)
    dx_ref = ref.backward(dy)
    with gl.simulate():
        layer = cls(f, **kw_)
        y = layer(x)
        dx = layer.backward(dy)
    assert_close(y, y_ref, what="forward")
    assert_close(dx, dx_ref, what="input gradient")
    assert_close(layer.grads["kernel"], ref.grads["kernel"], what="kernel gradient", normwise=True)
