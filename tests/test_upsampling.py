"""Upsampling: reference vs direct loops and numerical gradients; kernels vs reference."""
import itertools

import numpy as np
import pytest

import gpulayers as gl
from gpulayers.layers import upsampling
from gpulayers.testing import assert_close, numerical_gradient

from conftest import DTYPES, random_input


def direct_nearest(x, size, data_format):
    cl = np.moveaxis(x, 1, -1) if data_format == "channels_first" else x
    out = np.zeros((cl.shape[0], *[n * s for n, s in zip(cl.shape[1:-1], size)], cl.shape[-1]))
    for idx in itertools.product(*[range(v) for v in out.shape]):
        src = (idx[0], *[o // s for o, s in zip(idx[1:-1], size)], idx[-1])
        out[idx] = cl[src]
    return np.moveaxis(out, -1, 1) if data_format == "channels_first" else out


def direct_bilinear(x, size, data_format):
    """TF's resize_bilinear with half_pixel_centers=True, pixel by pixel."""
    cl = np.moveaxis(x, 1, -1) if data_format == "channels_first" else x
    n, h, w, c = cl.shape
    out = np.zeros((n, h * size[0], w * size[1], c))
    for oh in range(h * size[0]):
        sy = (oh + 0.5) / size[0] - 0.5
        y0 = int(np.floor(sy))
        fy = sy - y0
        ya, yb = min(max(y0, 0), h - 1), min(max(y0 + 1, 0), h - 1)
        for ow in range(w * size[1]):
            sx = (ow + 0.5) / size[1] - 0.5
            x0 = int(np.floor(sx))
            fx = sx - x0
            xa, xb = min(max(x0, 0), w - 1), min(max(x0 + 1, 0), w - 1)
            top = cl[:, ya, xa] * (1 - fx) + cl[:, ya, xb] * fx
            bottom = cl[:, yb, xa] * (1 - fx) + cl[:, yb, xb] * fx
            out[:, oh, ow] = top * (1 - fy) + bottom * fy
    return np.moveaxis(out, -1, 1) if data_format == "channels_first" else out




@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("size,spatial", [((3,), (5,)), ((2, 3), (3, 4)), ((1, 2, 3), (2, 3, 2))])
def test_nearest_reference(size, spatial, data_format, rng):
    shape = (2, *spatial, 3) if data_format == "channels_last" else (2, 3, *spatial)
    x = rng.standard_normal(shape)
    y = upsampling.upsample_nearest(x, size, data_format)
    assert_close(y, direct_nearest(x, size, data_format))
    dy = rng.standard_normal(y.shape)
    dx = upsampling.upsample_nearest_backward(dy, size, data_format)
    assert_close(dx, numerical_gradient(lambda v: upsampling.upsample_nearest(v, size, data_format), x, dy),
                 np.float32)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("size", [(2, 2), (3, 2), (1, 4), (5, 3)])
def test_bilinear_reference(size, data_format, rng):
    shape = (2, 4, 3, 2) if data_format == "channels_last" else (2, 2, 4, 3)
    x = rng.standard_normal(shape)
    y = upsampling.upsample_bilinear(x, size, data_format)
    assert_close(y, direct_bilinear(x, size, data_format))
    dy = rng.standard_normal(y.shape)
    dx = upsampling.upsample_bilinear_backward(dy, size, data_format)
    assert_close(dx, numerical_gradient(lambda v: upsampling.upsample_bilinear(v, size, data_format), x, dy),
                 np.float32)


def test_bilinear_of_a_constant_is_constant_and_weights_sum_to_one():
    for n, s in [(1, 3), (4, 2), (7, 5)]:
        m = upsampling.bilinear_matrix(n, s)
        assert m.shape == (n * s, n) and np.allclose(m.sum(1), 1.0) and (m >= 0).all()
    y = gl.UpSampling2D(size=(3, 4), interpolation="bilinear")(np.full((1, 3, 2, 1), 2.5, np.float32))
    assert np.all(y == 2.5)


# Channel counts pick every vector width in channels_last: C=8 (float x4, half x8, double x2),
# C=6 (x2), C=5 (scalar), C=1; sizes cross the 256-thread block edge.
CASES = [
    (gl.UpSampling1D, dict(size=3), (2, 97, 8)),
    (gl.UpSampling1D, dict(size=2), (3, 50, 5)),
    (gl.UpSampling2D, dict(size=(2, 3)), (2, 9, 11, 8)),
    (gl.UpSampling2D, dict(size=(3, 1)), (1, 13, 7, 6)),
    (gl.UpSampling2D, dict(size=2), (2, 10, 9, 1)),
    (gl.UpSampling2D, dict(size=(2, 2), interpolation="bilinear"), (2, 9, 11, 8)),
    (gl.UpSampling2D, dict(size=(3, 2), interpolation="bilinear"), (1, 7, 13, 5)),
    (gl.UpSampling2D, dict(size=(1, 4), interpolation="bilinear"), (2, 6, 5, 3)),
    (gl.UpSampling3D, dict(size=(2, 1, 3)), (2, 4, 5, 6, 8)),
    (gl.UpSampling3D, dict(size=2), (1, 3, 4, 5, 5)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,kw,shape,data_format", [
    (cls, kw, shape, fmt) for cls, kw, shape in CASES for fmt in ("channels_last", "channels_first")
    if not (cls is gl.UpSampling1D and fmt == "channels_first")],  # UpSampling1D has no data_format (Keras)
    ids=lambda v: getattr(v, "__name__", None))
def test_kernels_match_reference(kernel_path, cls, kw, shape, data_format, dtype, rng):
    if cls is not gl.UpSampling1D:
        kw = dict(kw, data_format=data_format)
        if data_format == "channels_first":
            shape = (shape[0], shape[-1], *shape[1:-1])
    x = random_input(rng, shape, dtype)
    ref = cls(**kw)
    y_ref = ref(x)
    dy = random_input(rng, y_ref.shape, dtype)
    dx_ref = ref.backward(dy)
    layer = cls(**kw)
    y, dx = kernel_path(lambda a, b: (layer(a), layer.backward(b)), x, dy)
    assert_close(y, y_ref, what=f"{kernel_path.name} forward")
    assert_close(dx, dx_ref, what=f"{kernel_path.name} backward")


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_backward_is_bitwise_repeatable_and_handles_unaligned_views(kernel_path, interpolation, rng):
    base = random_input(rng, (3, 9, 7, 9), np.float32)
    x = base[1:, :, :, 1:]  # a view whose rows start off the 16-byte grid
    layer = gl.UpSampling2D(size=(2, 3), interpolation=interpolation)
    ref = gl.UpSampling2D(size=(2, 3), interpolation=interpolation)
    y_ref = ref(x)
    dy = random_input(rng, y_ref.shape, np.float32)
    dx_ref = ref.backward(dy)

    def run(a, b):
        y = layer(a)
        return [y] + [layer.backward(b) for _ in range(3)]

    y, *dxs = kernel_path(run, np.asarray(x), dy)
    assert_close(y, y_ref)
    assert_close(dxs[0], dx_ref)
    assert all(np.array_equal(d, dxs[0]) for d in dxs[1:])


def test_vector_width_choice():
    x32 = np.zeros((1, 2, 2, 8), np.float32)
    assert upsampling._vector_width((x32,), 8, "channels_last", 4) == 4
    assert upsampling._vector_width((x32,), 6, "channels_last", 4) == 2
    assert upsampling._vector_width((x32,), 5, "channels_last", 4) == 1
    assert upsampling._vector_width((x32,), 8, "channels_first", 4) == 1
    assert upsampling._vector_width((np.zeros(16, np.float16),), 8, "channels_last", 2) == 8
    assert upsampling._vector_width((np.zeros(16, np.float32)[1:],), 8, "channels_last", 4) == 1


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(size=0), ValueError, r"UpSampling2D: `size` must be .*Received: size=0"),
    (dict(size=(2, 2, 2)), ValueError, r"`size`.*tuple of 2.*Received: size=\(2, 2, 2\)"),
    (dict(size=1.5), ValueError, r"Received: size=1.5"),
    (dict(interpolation="cubic"), ValueError, r"`interpolation` must be one of .*Received: interpolation='cubic'"),
    (dict(interpolation="bicubic"), NotImplementedError, r"UpSampling2D: `interpolation='bicubic'` is not supported"),
    (dict(interpolation="lanczos3"), NotImplementedError, r"lanczos3"),
    (dict(data_format="NCHW"), ValueError, r"`data_format`.*Received: data_format='NCHW'"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        gl.UpSampling2D(**kwargs)


def test_bad_inputs_and_gradients():
    with pytest.raises(TypeError, match=r"UpSampling1D: unknown argument"):
        gl.UpSampling1D(data_format="channels_first")
    with pytest.raises(ValueError, match=r"UpSampling3D: `inputs` must be 5-D.*Received: inputs.shape=\(2, 3, 4, 5\)"):
        gl.UpSampling3D()(np.ones((2, 3, 4, 5), np.float32))
    with pytest.raises(TypeError, match=r"UpSampling2D: `inputs` must have dtype.*Received: inputs.dtype=int64"):
        gl.UpSampling2D()(np.ones((2, 3, 4, 5), np.int64))
    layer = gl.UpSampling2D(interpolation="bilinear")
    layer(np.ones((2, 3, 4, 5), np.float32))
    with pytest.raises(ValueError, match=r"`dy` must have shape \(2, 6, 8, 5\).*Received: dy.shape=\(2, 3, 4, 5\)"):
        layer.backward(np.ones((2, 3, 4, 5), np.float32))


def test_output_shapes():
    assert gl.UpSampling2D(size=(2, 3), data_format="channels_first").compute_output_shape((1, 4, 5, 6)) == (1, 4, 10, 18)
    assert gl.UpSampling3D(size=(1, 2, 3)).compute_output_shape((1, 4, 5, 6, 2)) == (1, 4, 10, 18, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("rows", [True, False])
@pytest.mark.parametrize("kw,shape,fits", [
    (dict(size=(2, 3)), (2, 5, 9, 37), True), (dict(size=(3, 2), interpolation="bilinear"), (1, 3, 7, 45), True),
    (dict(size=(1, 3), interpolation="bilinear"), (2, 2, 3, 33), True),
    (dict(size=(1, 4), interpolation="bilinear"), (2, 2, 3, 33), False)])  # 34 * 4 columns: too wide
def test_channels_first_backward_row_and_direct_kernels(monkeypatch, kw, shape, fits, dtype, rows):
    """The warp-per-row backward (rows crossing a 32-column chunk, odd widths) and the direct one."""
    from gpulayers.layers import upsampling
    from gpulayers.simulator import analysis

    monkeypatch.setattr(upsampling, "ROW_KERNELS", rows)
    local = np.random.default_rng(8)
    x = random_input(local, shape, dtype)
    kw = dict(kw, data_format="channels_first")
    ref = gl.UpSampling2D(**kw)
    y_ref = ref(x)
    dy = random_input(local, y_ref.shape, dtype)
    dx_ref = ref.backward(dy)
    layer = gl.UpSampling2D(**kw)
    with gl.simulate(), analysis.recording() as reports, analysis.checking():
        y = layer(x)
        dx = layer.backward(dy)
    assert_close(y, y_ref, what="forward")
    assert_close(dx, dx_ref, what="backward")
    assert ("backward_rows" in reports[-1].kernel) == (rows and fits)
    assert ("forward_rows" in reports[0].kernel) == (rows and kw.get("interpolation") is None)
