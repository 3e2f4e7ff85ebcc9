"""The classic NumPy layer interface (forward_pass / backward_pass / initialize / output_shape /
parameters) on every layer, driven by a from-scratch style training loop."""
import numpy as np
import pytest

import gpulayers as gl
from gpulayers.testing import assert_close


class PlainSGD:
    """A from-scratch optimizer: update(w, grad) -> new w, with momentum state of its own."""

    def __init__(self, learning_rate=0.05, momentum=0.5):
        self.learning_rate, self.momentum, self.w_updt = learning_rate, momentum, None

    def update(self, w, grad_wrt_w):
        if self.w_updt is None:
            self.w_updt = np.zeros(np.shape(w))
        self.w_updt = self.momentum * self.w_updt + (1 - self.momentum) * grad_wrt_w
        return w - self.learning_rate * self.w_updt


class ScratchNetwork:
    """The from-scratch training loop: set_input_shape, initialize, forward_pass, backward_pass."""

    def __init__(self, optimizer, input_shape):
        self.optimizer, self.layers, self.input_shape = optimizer, [], input_shape

    def add(self, layer):
        layer.set_input_shape(self.layers[-1].output_shape() if self.layers else self.input_shape)
        if hasattr(layer, "initialize"):
            layer.initialize(optimizer=self.optimizer)
        self.layers.append(layer)

    def train_on_batch(self, X, y):
        out = X
        for layer in self.layers:
            out = layer.forward_pass(out, training=True)
        p = np.exp(out - out.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        loss = -np.log(p[np.arange(len(y)), y]).mean()
        grad = p.copy()
        grad[np.arange(len(y)), y] -= 1
        grad /= len(y)
        for layer in reversed(self.layers):
            grad = layer.backward_pass(grad)
        return loss


@pytest.mark.parametrize("optimizer", [PlainSGD(), gl.optimizers.Adam(0.01)], ids=["scratch-sgd", "gpulayers-adam"])
def test_scratch_loop_trains_a_cnn(optimizer):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 96)
    stripes = np.cos(np.pi * np.arange(8))[:, None] * np.ones((8, 8))
    X = np.where(y[:, None, None], stripes, stripes.T)[:, None] + 0.5 * rng.standard_normal((96, 1, 8, 8))
    net = ScratchNetwork(optimizer, (1, 8, 8))  # channels_first, as those tutorials use
    for layer in [gl.Conv2D(4, 3, padding="same", data_format="channels_first", seed=1), gl.Activation("relu"),
                  gl.MaxPooling2D(2, data_format="channels_first"), gl.Flatten(data_format="channels_first"),
                  gl.Dropout(0.1, seed=0), gl.Dense(2, seed=2)]:
        net.add(layer)
    assert [layer.output_shape() for layer in net.layers] == [(4, 8, 8), (4, 8, 8), (4, 4, 4), (64,), (64,), (2,)]
    assert [layer.parameters() for layer in net.layers] == [4 * 9 + 4, 0, 0, 0, 0, 64 * 2 + 2]
    losses = [np.mean([net.train_on_batch(X[i:i + 16], y[i:i + 16]) for i in range(0, 96, 16)]) for _ in range(15)]
    assert losses[-1] < 0.6 * losses[0]


def test_backward_pass_applies_the_optimizer_like_apply():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 4))
    a, b = gl.Dense(3, seed=0), gl.Dense(3, seed=0)
    a.set_input_shape((4,))
    a.initialize(gl.optimizers.SGD(0.1, momentum=0.9))
    y = a.forward_pass(x)
    dx = a.backward_pass(np.ones_like(y))
    b(x)
    kernel_before = b.params["kernel"].copy()
    assert_close(dx, b.backward(np.ones_like(y)), what="input gradient at the old weights")
    assert_close(a.params["kernel"], kernel_before - 0.1 * b.grads["kernel"], what="one SGD step")


def test_output_shape_and_parameters_of_other_layers():
    cases = [(gl.BatchNormalization(), (6, 5), (6, 5), 10), (gl.LSTM(7, return_sequences=True), (9, 3), (9, 7),
                                                               4 * 7 * (3 + 7 + 1)),
             (gl.UpSampling2D(2), (3, 4, 2), (6, 8, 2), 0), (gl.Conv2DTranspose(5, 3, strides=2), (4, 4, 2), (9, 9, 5),
                                                            3 * 3 * 5 * 2 + 5),
             (gl.GlobalAveragePooling2D(), (4, 4, 3), (3,), 0)]
    for layer, shape, out, count in cases:
        layer.set_input_shape(shape)
        assert layer.output_shape() == out, layer
        assert layer.parameters() == count, layer
        assert not layer.built  # the probes ran on copies
    with pytest.raises(ValueError, match="Dense: output_shape\\(\\) needs set_input_shape"):
        gl.Dense(2).output_shape()
    with pytest.raises(TypeError, match="Dense: initialize\\(\\) needs a gpulayers optimizer"):
        gl.Dense(2).initialize("sgd")


def test_upsampling_backward_sums_each_block():
    """Where results differ from the tutorials: their UpSampling2D backward keeps one gradient
    of each repeated block; the correct gradient (ours) sums the block."""
    layer = gl.UpSampling2D(2, data_format="channels_first")
    layer.set_input_shape((1, 2, 2))
    y = layer.forward_pass(np.ones((1, 1, 2, 2)))
    g = np.arange(16.0).reshape(1, 1, 4, 4)
    dx = layer.backward_pass(g)
    assert dx[0, 0, 0, 0] == 0 + 1 + 4 + 5 and y.shape == (1, 1, 4, 4)
    assert not np.array_equal(dx, g[:, :, ::2, ::2])


@pytest.mark.gpu
def test_classic_interface_on_the_gpu():
    if not gl.gpu_available():
        pytest.skip("no CUDA GPU available (CuPy missing or no device)")
    import cupy as cp

    layer = gl.Dense(3, seed=0).to("gpu")
    layer.set_input_shape((4,))
    layer.initialize(gl.optimizers.Adam(0.1))
    x = cp.asarray(np.random.default_rng(2).standard_normal((5, 4)))
    y = layer.forward_pass(x)
    before = layer.params["kernel"].copy()
    layer.backward_pass(cp.ones_like(y))
    assert isinstance(layer.params["kernel"], cp.ndarray)
    assert_close(layer.params["kernel"], before - 0.1 * cp.sign(layer.grads["kernel"]), np.float32,
                 what="first Adam step moves each weight by lr")
