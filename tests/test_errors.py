"""Bad arguments and inputs: clear ValueError/TypeError naming layer, argument and value."""
import numpy as np
import pytest

import gpulayers as gl
from gpulayers import kernels

x4 = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(pool_size=(2, 0)), ValueError, r"MaxPooling2D: `pool_size` must be .*Received: pool_size=\(2, 0\)"),
    (dict(pool_size=-1), ValueError, r"`pool_size`.*Received: pool_size=-1"),
    (dict(pool_size=(2, 2, 2)), ValueError, r"`pool_size`.*tuple of 2"),
    (dict(pool_size=2.0), ValueError, r"Received: pool_size=2.0"),
    (dict(pool_size=True), ValueError, r"Received: pool_size=True"),
    (dict(strides=0), ValueError, r"`strides`.*Received: strides=0"),
    (dict(padding="full"), ValueError, r"`padding` must be one of 'valid', 'same'. Received: padding='full'"),
    (dict(data_format="NHWC"), ValueError, r"`data_format`.*Received: data_format='NHWC'"),
    (dict(bogus=1), TypeError, r"MaxPooling2D: unknown argument"),
])
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        gl.MaxPooling2D(**kwargs)


def test_keras_spellings_are_accepted():
    layer = gl.MaxPooling2D(pool_size=[3, 3], strides=np.int64(2), padding="SAME", data_format="channels_last")
    assert layer.padding == "same" and layer.strides == (2, 2) and layer.pool_size == (3, 3)
    assert gl.AveragePooling1D().pool_size == (2,) and gl.MaxPooling3D().pool_size == (2, 2, 2)
    assert gl.GlobalMaxPooling2D(data_format=None).data_format == "channels_last"


def test_global_pooling_arguments():
    with pytest.raises(TypeError, match=r"GlobalAveragePooling2D: `keepdims` must be a bool. Received: keepdims=1"):
        gl.GlobalAveragePooling2D(keepdims=1)
    with pytest.raises(NotImplementedError, match=r"GlobalAveragePooling1D: `mask="):
        gl.GlobalAveragePooling1D()(np.ones((2, 3, 4), np.float32), mask=np.ones((2, 3), bool))


@pytest.mark.parametrize("simulated", [False, True])
def test_bad_inputs_fail_before_any_kernel(simulated, monkeypatch):
    def no_launch(*a, **k):
        raise AssertionError("a kernel was launched for bad input")

    monkeypatch.setattr(kernels, "launch", no_launch)
    ctx = kernels.simulate() if simulated else _null()
    with ctx:
        with pytest.raises(ValueError, match=r"MaxPooling2D: `inputs` must be 4-D.*Received: inputs.shape=\(8, 8, 3\)"):
            gl.MaxPooling2D()(x4[0])
        with pytest.raises(TypeError, match=r"MaxPooling2D: `inputs` must have dtype float16, float32 or float64. "
                                            r"Received: inputs.dtype=int32"):
            gl.MaxPooling2D()(x4.astype(np.int32))
        with pytest.raises(TypeError, match=r"inputs.dtype=bool"):
            gl.GlobalMaxPooling2D()(x4 > 0)
        with pytest.raises(TypeError, match=r"must be a numpy.ndarray or cupy.ndarray. Received: inputs of type list"):
            gl.MaxPooling1D()([[1.0]])
        with pytest.raises(ValueError, match=r"output would be empty.*Received: inputs.shape=\(2, 8, 8, 3\)"):
            gl.MaxPooling2D(pool_size=9)(x4)
        with pytest.raises(ValueError, match=r"GlobalMaxPooling2D: `inputs` must not have an empty spatial axis"):
            gl.GlobalMaxPooling2D()(np.ones((2, 0, 3, 2), np.float32))
        layer = gl.MaxPooling2D()
        with pytest.raises(ValueError, match=r"MaxPooling2D: backward\(\) needs a forward call first"):
            layer.backward(np.ones((2, 4, 4, 3), np.float32))


def test_bad_gradients(kernel_path=None):
    layer = gl.AveragePooling2D()
    layer(x4)
    with pytest.raises(ValueError, match=r"AveragePooling2D: `dy` must have shape \(2, 4, 4, 3\).*Received: dy.shape=\(2, 4, 4\)"):
        layer.backward(np.ones((2, 4, 4), np.float32))
    with pytest.raises(TypeError, match=r"`dy` must have dtype float32.*Received: dy.dtype=float64"):
        layer.backward(np.ones((2, 4, 4, 3)))
    with pytest.raises(TypeError, match=r"`dy` must have dtype float16, float32 or float64"):
        layer.backward(np.ones((2, 4, 4, 3), np.int64))


def test_to_gpu_without_a_gpu_is_a_clear_error():
    if kernels.gpu_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match=r"no GPU is available.*Received: device='gpu'"):
        gl.MaxPooling2D().to("gpu")
    with pytest.raises(ValueError, match=r"`device` must be 'cpu' or 'gpu'. Received: device='tpu'"):
        gl.MaxPooling2D().to("tpu")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
