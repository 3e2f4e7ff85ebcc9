"""Pooling kernels (simulator, and GPU under the `gpu` marker) against the NumPy reference."""
import numpy as np
import pytest

import gpulayers as gl
from gpulayers.layers import pooling
from gpulayers.testing import assert_close

from conftest import DTYPES, random_input


# Shapes cross the 256-thread block edge (outputs and inputs are not multiples of 256),
# windows are wider than tall, batches of one, padding on both sides.
WINDOWED = [
    (gl.MaxPooling1D, dict(pool_size=3, strides=2, padding="same"), (2, 301, 3)),
    (gl.AveragePooling1D, dict(pool_size=5, strides=3, padding="same"), (1, 257, 5)),
    (gl.MaxPooling2D, dict(), (2, 33, 31, 5)),
    (gl.MaxPooling2D, dict(pool_size=3, strides=2, padding="same"), (1, 35, 29, 3)),
    (gl.MaxPooling2D, dict(pool_size=(2, 5), strides=(1, 3), padding="valid"), (2, 9, 40, 3)),
    (gl.AveragePooling2D, dict(pool_size=3, strides=1, padding="same"), (2, 17, 19, 4)),
    (gl.AveragePooling2D, dict(pool_size=(4, 3), strides=(3, 2)), (3, 23, 21, 2)),
    (gl.MaxPooling3D, dict(pool_size=(2, 3, 2), strides=(1, 2, 2), padding="same"), (2, 5, 11, 9, 3)),
    (gl.AveragePooling3D, dict(pool_size=2, padding="same"), (1, 7, 8, 9, 3)),
    # windows of more than 256 cells: the backward pass recomputes the argmax. In analysis mode
    # (1-2 s a run there) the 2D case runs channels_first only (the only channels_first
    # max_pool_forward launch) and the 3D case channels_last only: the recomputing path once per
    # layout and dtype.
    pytest.param(gl.MaxPooling2D, dict(pool_size=17, strides=4, padding="same"), (1, 30, 27, 2),
                 marks=pytest.mark.redundant_in("simulator-hazards", data_format="channels_last")),
    pytest.param(gl.MaxPooling3D, dict(pool_size=7, strides=3, padding="same"), (1, 9, 10, 8, 2),
                 marks=pytest.mark.redundant_in("simulator-hazards", data_format="channels_first")),
]
GLOBAL = [
    (gl.GlobalMaxPooling1D, dict(), (3, 517, 4)),
    (gl.GlobalAveragePooling1D, dict(keepdims=True), (3, 517, 4)),
    (gl.GlobalMaxPooling2D, dict(), (2, 19, 17, 5)),
    (gl.GlobalAveragePooling2D, dict(), (2, 19, 17, 5)),
    (gl.GlobalMaxPooling3D, dict(keepdims=True), (2, 4, 9, 7, 3)),
    (gl.GlobalAveragePooling3D, dict(), (2, 4, 9, 7, 3)),
    (gl.GlobalAveragePooling2D, dict(), (1, 1, 1, 300)),
]


def _layout(kw, shape, data_format):
    if data_format == "channels_first":
        shape = (shape[0], shape[-1], *shape[1:-1])
    return dict(kw, data_format=data_format), shape


def _forward_backward(cls, kw, dy):
    layer = cls(**kw)

    def run(x, dy):
        return layer(x), layer.backward(dy)

    return run


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("cls,kw,shape", WINDOWED + GLOBAL, ids=lambda v: getattr(v, "__name__", None))
def test_kernels_match_reference(kernel_path, cls, kw, shape, data_format, dtype, rng):
    kw, shape = _layout(kw, shape, data_format)
    x = random_input(rng, shape, dtype)
    ref = cls(**kw)
    y_ref = ref(x)
    dy = random_input(rng, y_ref.shape, dtype)
    dx_ref = ref.backward(dy)
    y, dx = kernel_path(_forward_backward(cls, kw, dy), x, dy)
    assert_close(y, y_ref, what=f"{kernel_path.name} forward")
    assert_close(dx, dx_ref, what=f"{kernel_path.name} backward")


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("cls", [gl.MaxPooling2D, gl.GlobalMaxPooling2D])
def test_ties_nan_and_minus_inf(kernel_path, cls, data_format, rng):
    """First maximum wins ties; NaN propagates and takes the gradient; all -inf windows work."""
    x = rng.integers(-2, 3, size=(2, 12, 10, 3)).astype(np.float32)  # many ties
    x[0, 3, 4, 1] = np.nan
    x[1, :4, :4, 2] = -np.inf
    if data_format == "channels_first":
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    kw = dict(data_format=data_format)
    if cls is gl.MaxPooling2D:
        kw.update(pool_size=3, strides=2, padding="same")
    ref = cls(**kw)
    y_ref = ref(x)
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx_ref = ref.backward(dy)
    y, dx = kernel_path(_forward_backward(cls, kw, dy), x, dy)
    assert np.isnan(y_ref).any()
    assert_close(y, y_ref, equal_nan=True, what="forward with ties/NaN/-inf")
    assert_close(dx, dx_ref, what="backward with ties/NaN/-inf")


@pytest.mark.parametrize("cls,kw", [(gl.MaxPooling2D, dict(pool_size=3, strides=2, padding="same")),
                                    (gl.AveragePooling2D, dict(pool_size=3, strides=1, padding="same")),
                                    (gl.GlobalMaxPooling2D, dict(data_format="channels_first"))])
def test_backward_is_bitwise_repeatable(kernel_path, cls, kw, rng):
    x = random_input(rng, (2, 21, 19, 6), np.float32)
    layer = cls(**kw)

    def run(x, dy):
        layer(x)
        return [layer.backward(dy) for _ in range(3)]

    dy = random_input(rng, cls(**kw)(x).shape, np.float32)
    results = kernel_path(run, x, dy)
    assert all(np.array_equal(r, results[0]) for r in results[1:])


def test_noncontiguous_and_reversed_inputs(kernel_path, rng):
    base = random_input(rng, (3, 40, 30, 5), np.float32)
    x = base[:, ::-1, ::2, 1:4]  # reversed, strided and sliced
    ref = gl.MaxPooling2D(pool_size=3, strides=2, padding="same")
    y_ref = ref(x)
    dy = random_input(rng, y_ref.shape, np.float32)
    dx_ref = ref.backward(dy)
    layer = gl.MaxPooling2D(pool_size=3, strides=2, padding="same")
    y, dx = kernel_path(lambda a, b: (layer(a), layer.backward(b)), np.asarray(x), dy)
    assert_close(y, y_ref)
    assert_close(dx, dx_ref)


def test_float16_global_average_of_ones_is_exactly_one_on_kernels(kernel_path):
    y = kernel_path(gl.GlobalAveragePooling2D(data_format="channels_first"), np.ones((2, 3, 64, 64), np.float16))
    assert y.dtype == np.float16 and np.all(y == 1)
    y = kernel_path(gl.GlobalAveragePooling2D(), np.ones((2, 64, 64, 3), np.float16))
    assert np.all(y == 1)


def test_max_pool_keeps_one_byte_per_output_or_nothing(rng):
    x = random_input(rng, (2, 20, 20, 3), np.float32)
    with gl.simulate():
        y, argmax = pooling.max_pool_forward_kernel(x, (2, 2), (2, 2), "valid", "channels_last")
        assert argmax.dtype == np.uint8 and argmax.shape == y.shape
        _, recomputed = pooling.max_pool_forward_kernel(x, (17, 17), (1, 1), "valid", "channels_last")
        assert recomputed is None  # 289 cells do not fit a byte: backward recomputes


# channels_first takes warp-per-row kernels where they fit; the direct kernels stay for wide
# spans. Both must match the reference: run the channels_first cases once more with the row
# kernels switched off, and check which kernels each choice launched.
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("cls,kw,shape", [c for c in WINDOWED if c[0] in (gl.MaxPooling2D, gl.AveragePooling2D,
                                                                          gl.MaxPooling1D, gl.MaxPooling3D)][:6],
                         ids=lambda v: getattr(v, "__name__", None))
@pytest.mark.parametrize("rows", [True, False])
def test_channels_first_row_and_direct_kernels(monkeypatch, cls, kw, shape, dtype, rows):
    from gpulayers.simulator import analysis

    monkeypatch.setattr(pooling, "ROW_KERNELS", rows)
    kw, shape = _layout(kw, shape, "channels_first")
    local = np.random.default_rng(5)
    x = random_input(local, shape, dtype)
    ref = cls(**kw)
    y_ref = ref(x)
    dy = random_input(local, y_ref.shape, dtype)
    dx_ref = ref.backward(dy)
    layer = cls(**kw)
    with gl.simulate(), analysis.recording() as reports, analysis.checking():
        y, dx = layer(x), layer.backward(dy)
    assert_close(y, y_ref, what="forward")
    assert_close(dx, dx_ref, what="backward")
    names = [r.kernel for r in reports]
    if rows:  # backward always fits these windows; forward when the column stride is above 1
        assert names[-1].startswith("pool_backward_rows") or cls is gl.MaxPooling3D and "pool_size" in kw \
            and pooling.math.prod(layer.pool_size) > pooling.MAX_SAVED_WINDOW
        assert names[0].startswith("pool_forward_rows") == pooling._rows_kernel(x.shape, layer.pool_size,
                                                                                 layer.strides, "channels_first")
    else:
        assert not any("_rows<" in n for n in names)


# The widest windows each row kernel takes, read by Python from pooling.cu (kMaxSegments for
# pool_forward_rows, kRowSegments for pool_backward_rows), and one column past that: at the edge
# the row kernel loads every segment it has, past it the direct kernel runs. A Python-side limit
# above the kernel's would send the edge case to the row kernel and miss window cells.
def _edge_windows():
    forward, backward = pooling.FORWARD_ROW_SEGMENTS, pooling.BACKWARD_ROW_SEGMENTS
    cases = []
    for extra in (0, 1):
        # forward: 31 * SW + KW input columns for 32 outputs, SW = 3
        cases.append(("forward", extra, (1, 32 * forward - 31 * 3 + extra), (1, 3)))
        # backward: (31 + KW) // SW + 2 dy columns for 32 input columns, SW = 1
        cases.append(("backward", extra, (1, 32 * backward - 33 + extra), (1, 1)))
    return cases


@pytest.mark.parametrize("cls", [gl.MaxPooling2D, gl.AveragePooling2D], ids=lambda c: c.__name__)
@pytest.mark.parametrize("direction,extra,pool_size,strides", _edge_windows(),
                         ids=lambda v: str(v) if not isinstance(v, tuple) else "x".join(map(str, v)))
def test_row_kernels_at_their_segment_limit(kernel_path, monkeypatch, cls, direction, extra, pool_size, strides):
    from gpulayers import kernels

    launched = []
    launch = kernels.launch

    def recording(source, template, *args, **kwargs):
        launched.append(template)
        return launch(source, template, *args, **kwargs)

    monkeypatch.setattr(kernels, "launch", recording)
    local = np.random.default_rng(11)
    x = random_input(local, (1, 2, 3, 33 * 3 + pool_size[1] + 40), np.float32)
    kw = dict(pool_size=pool_size, strides=strides, data_format="channels_first")
    ref = cls(**kw)
    y_ref = ref(x)
    dy = random_input(local, y_ref.shape, np.float32)
    dx_ref = ref.backward(dy)
    assert not launched  # the reference launches nothing
    layer = cls(**kw)
    y, dx = kernel_path(lambda a, b: (layer(a), layer.backward(b)), x, dy)
    assert_close(y, y_ref, what="forward")
    assert_close(dx, dx_ref, what="backward")
    chosen = launched[0] if direction == "forward" else launched[-1]
    assert chosen.startswith(f"pool_{direction}_rows") == (extra == 0), launched
