"""Losses, optimizers and Sequential: direct formulas, numerical gradients, fused optimizer
kernels (simulator / GPU) against the NumPy reference, fit, save/load, errors that change nothing."""
import math

import numpy as np
import pytest

import gpulayers as gl
from gpulayers import losses, optimizers
from gpulayers.testing import assert_close, numerical_gradient, to_numpy

# ----------------------------------------------------------------------------- losses


def direct_loss(name, y_true, y_pred, from_logits):
    """Per-sample loops with the math module."""
    total, count = 0.0, 0
    if name in ("mse", "mae"):
        d = (y_pred - y_true).ravel()
        return sum(v * v if name == "mse" else abs(v) for v in d) / d.size
    for idx in np.ndindex(*y_pred.shape[:-1]):
        row = list(y_pred[idx])
        if name == "bce":
            for t, p in zip(y_true[idx], row):
                if from_logits:
                    p = 1 / (1 + math.exp(-p))
                p = min(max(p, 1e-7), 1 - 1e-7)
                total += -(t * math.log(p) + (1 - t) * math.log(1 - p)) / len(row)
        else:
            if from_logits:
                m = max(row)
                probs = [math.exp(v - m) / sum(math.exp(w - m) for w in row) for v in row]
            else:
                probs = [min(max(v / sum(row), 1e-7), 1 - 1e-7) for v in row]
            target = [1.0 if c == y_true[idx] else 0.0 for c in range(len(row))] if name == "sparse" \
                else list(y_true[idx])
            total += -sum(t * math.log(p) for t, p in zip(target, probs))
        count += 1
    return total / count


LOSSES = [("sparse", losses.SparseCategoricalCrossentropy, True),
          ("sparse", losses.SparseCategoricalCrossentropy, False),
          ("cce", losses.CategoricalCrossentropy, True), ("cce", losses.CategoricalCrossentropy, False),
          ("bce", losses.BinaryCrossentropy, True), ("bce", losses.BinaryCrossentropy, False),
          ("mse", losses.MeanSquaredError, None), ("mae", losses.MeanAbsoluteError, None)]


@pytest.mark.parametrize("name,cls,from_logits", LOSSES)
def test_loss_formula_and_gradient(name, cls, from_logits):
    rng = np.random.default_rng(1)
    shape = (4, 3, 5)
    y_pred = rng.standard_normal(shape) if from_logits is not False else rng.uniform(0.05, 0.9, shape)
    if name == "sparse":
        y_true = rng.integers(0, 5, shape[:-1])
    elif name == "cce":
        y_true = rng.dirichlet(np.ones(5), shape[:-1])  # soft targets
    elif name == "bce":
        y_true = rng.integers(0, 2, shape).astype(np.float64)
    else:
        y_true = rng.standard_normal(shape)
    make = (lambda: cls(from_logits=from_logits)) if from_logits is not None else cls
    loss = make()
    value = loss(y_true, y_pred)
    assert_close(np.asarray(value), np.asarray(direct_loss(name, y_true, y_pred, from_logits)), what="value")
    assert_close(loss.backward(), numerical_gradient(lambda p: make()(y_true, p), y_pred), np.float32,
                 what="gradient vs numerical")


def test_sparse_labels_out_of_range_name_the_first_bad_label():
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    loss(np.array([0, 1]), np.zeros((2, 3), np.float32))
    grad = loss.backward().copy()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\) for 3 classes. "
                                         r"Received: label 7 at flat position 2"):
        loss(np.array([0, 2, 7, -1]), np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="one label per prediction"):
        loss(np.array([0, 1, 2]), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="integer class labels. Received: label 1.5"):
        loss(np.array([0.0, 1.5]), np.zeros((2, 3), np.float32))
    assert np.array_equal(loss.backward(), grad)  # the failed calls changed nothing
    with pytest.raises(ValueError, match="MeanSquaredError: `y_true` must have the shape of `y_pred`"):
        losses.MeanSquaredError()(np.zeros((2, 3)), np.zeros((2, 4)))


def test_cross_entropy_is_stable_for_large_logits():
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    value = float(loss(np.array([1]), np.array([[1000.0, -1000.0, 0.0]], np.float32)))
    assert value == pytest.approx(2000.0, rel=1e-6)
    assert np.isfinite(loss.backward()).all()


# ----------------------------------------------------------------------------- optimizers

def direct_steps(name, kw, p, grads):
    """The Keras update rules, written out element by element in float64."""
    p = p.astype(np.float64).copy()
    lr = kw.get("learning_rate")
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    vh = np.zeros_like(p)
    a = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        if kw.get("clipnorm"):
            g = g * kw["clipnorm"] / max(np.sqrt((g ** 2).sum()), kw["clipnorm"])
        p = p - p * kw.get("weight_decay", 0.0) * lr
        for i in np.ndindex(*p.shape):
            if name == "SGD":
                mom = kw.get("momentum", 0.0)
                m[i] = mom * m[i] - lr * g[i]
                p[i] += (mom * m[i] - lr * g[i]) if kw.get("nesterov") else m[i]
            elif name in ("Adam", "AdamW"):
                m[i] = 0.9 * m[i] + 0.1 * g[i]
                v[i] = 0.999 * v[i] + 0.001 * g[i] ** 2
                vh[i] = max(vh[i], v[i])
                denom = math.sqrt(vh[i] if kw.get("amsgrad") else v[i]) + 1e-7
                p[i] -= lr * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m[i] / denom
            else:  # RMSprop
                v[i] = 0.9 * v[i] + 0.1 * g[i] ** 2
                a[i] = 0.9 * a[i] + 0.1 * g[i]
                d = v[i] - a[i] ** 2 + 1e-7 if kw.get("centered") else v[i] + 1e-7
                step = lr * g[i] / math.sqrt(d)
                m[i] = kw.get("momentum", 0.0) * m[i] + step
                p[i] -= m[i]
    return p


OPTS = [("SGD", dict(learning_rate=0.1)), ("SGD", dict(learning_rate=0.1, momentum=0.9, nesterov=True)),
        ("Adam", dict(learning_rate=0.01, clipnorm=0.7)), ("Adam", dict(learning_rate=0.01, amsgrad=True)),
        ("AdamW", dict(learning_rate=0.01, weight_decay=0.1)),
        ("RMSprop", dict(learning_rate=0.01, momentum=0.5, centered=True)), ("RMSprop", dict(learning_rate=0.01))]


def _layer_with(p, b):
    layer = gl.Dense(p.shape[1])
    layer(np.zeros((1, p.shape[0]), p.dtype))
    layer.set_weights([p, b])
    return layer


@pytest.mark.parametrize("name,kw", OPTS)
def test_optimizer_reference_matches_direct_rule(name, kw):
    rng = np.random.default_rng(2)
    p0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(3)]
    layer = _layer_with(p0, np.zeros(4))
    opt = getattr(optimizers, name)(**kw)
    for g in grads:
        layer.grads = {"kernel": g, "bias": np.zeros(4)}
        opt.apply(layer)
    assert opt.iterations == 3
    assert_close(layer.params["kernel"], direct_steps(name, kw, p0, grads), what=f"{name} vs direct rule")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,kw", OPTS)
def test_fused_optimizer_kernel_matches_reference(kernel_path, name, kw, dtype):
    rng = np.random.default_rng(3)
    p0, b0 = rng.standard_normal((67, 45)).astype(dtype), rng.standard_normal(45).astype(dtype)
    grads = [(rng.standard_normal((67, 45)).astype(dtype), rng.standard_normal(45).astype(dtype)) for _ in range(3)]
    ref = _layer_with(p0, b0)
    ref_opt = getattr(optimizers, name)(**kw)
    for g, gb in grads:
        ref.grads = {"kernel": g, "bias": gb}
        ref_opt.apply(ref)

    def run(p, b, *gs):
        layer = _layer_with(to_numpy(p), to_numpy(b))  # built on the CPU, then moved
        if kernel_path.name == "gpu":
            layer.to("gpu")
        kernel = layer.params["kernel"]
        opt = getattr(optimizers, name)(**kw)
        for g, gb in zip(gs[::2], gs[1::2]):
            layer.grads = {"kernel": g, "bias": gb}
            opt.apply(layer)
        assert layer.params["kernel"] is kernel
        return layer.params["kernel"], layer.params["bias"]

    p, b = kernel_path(run, p0, b0, *[a for pair in grads for a in pair])
    assert_close(p, ref.params["kernel"], what=f"{name} kernel")
    assert_close(b, ref.params["bias"], what=f"{name} bias")


def test_optimizer_errors_and_state_round_trip():
    with pytest.raises(ValueError, match=r"SGD: `learning_rate` must be a number in \(0.0, inf\]. "
                                         r"Received: learning_rate=-1"):
        optimizers.SGD(learning_rate=-1)
    with pytest.raises(ValueError, match="only one of `clipnorm`, `clipvalue` and `global_clipnorm`"):
        optimizers.Adam(clipnorm=1.0, global_clipnorm=1.0)
    layer = _layer_with(np.ones((2, 3), np.float32), np.zeros(3, np.float32))
    opt = optimizers.Adam(0.1)
    with pytest.raises(ValueError, match="no gradient for parameter 'dense/kernel'; call backward"):
        opt.apply(layer)
    assert opt.iterations == 0 and not opt.slots
    layer.grads = {"kernel": np.ones((2, 3), np.float32), "bias": np.ones(3, np.float32)}
    opt.apply(layer)
    state = opt.get_state()
    assert set(state) == {"iterations", "m/dense/kernel", "v/dense/kernel", "m/dense/bias", "v/dense/bias"}
    other = optimizers.Adam(0.1)
    other.set_state(state)
    copy = _layer_with(*layer.get_weights())
    copy.grads = dict(layer.grads)
    opt.apply(layer)
    other.apply(copy)
    assert np.array_equal(layer.params["kernel"], copy.params["kernel"])
    with pytest.raises(ValueError, match="unknown state entry 'velocity/dense/kernel'"):
        other.set_state({"iterations": 1, "velocity/dense/kernel": np.zeros((2, 3))})
    assert other.iterations == 2


def test_optimizer_updates_bidirectional_in_place():
    rng = np.random.default_rng(4)
    bi = gl.Bidirectional(gl.LSTM(3, seed=1))
    x = rng.standard_normal((2, 4, 5)).astype(np.float32)
    y = bi(x)
    bi.backward(np.ones_like(y))
    before = bi.forward_layer.params["kernel"].copy()
    optimizers.SGD(0.5).apply(bi)
    assert_close(bi.forward_layer.params["kernel"], before - 0.5 * bi.grads["forward_kernel"], what="updated")


# ----------------------------------------------------------------------------- Sequential

def make_model(seed=0):
    return gl.Sequential([gl.Dense(16, activation="relu", seed=seed), gl.Dropout(0.1, seed=seed),
                          gl.Dense(3, seed=seed + 1)])


def blobs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((3, 6)) * 2
    y = rng.integers(0, 3, n)
    return (centres[y] + rng.standard_normal((n, 6))).astype(np.float32), y


def test_fit_loss_falls_and_history():
    x, y = blobs()
    model = make_model()
    model.compile(optimizer=optimizers.Adam(0.01), loss=losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    history = model.fit(x, y, batch_size=32, epochs=4, validation_data=(x[:50], y[:50]), seed=1, verbose=0)
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"} and history.history is history
    assert len(history["loss"]) == 4
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["accuracy"][-1] > 0.9
    loss, acc = model.evaluate(x, y)
    assert acc > 0.9 and loss < history["loss"][0]
    p = model.predict(x, batch_size=64)
    assert p.shape == (300, 3) and isinstance(p, np.ndarray)
    assert_close(p, model(x), what="predict in batches = one call")


def test_fit_is_reproducible_and_fit_on_simulated_kernels_agrees():
    x, y = blobs(120)
    results = []
    for simulate in (False, False, True):
        model = make_model(3)
        model.compile(optimizer="adam", loss=losses.SparseCategoricalCrossentropy(from_logits=True))
        if simulate:
            with gl.simulate():
                results.append(model.fit(x, y, epochs=2, seed=5, verbose=0)["loss"])
        else:
            results.append(model.fit(x, y, epochs=2, seed=5, verbose=0)["loss"])
    assert results[0] == results[1]
    assert np.allclose(results[0], results[2], rtol=1e-5)


def test_params_grads_names_and_assignment():
    model = gl.Sequential([gl.Dense(4, seed=0), gl.Dense(4, seed=1), gl.Dense(2, use_bias=False, seed=2)])
    x = np.random.default_rng(5).standard_normal((3, 5)).astype(np.float32)
    y = model(x)
    model.backward(np.ones_like(y))
    assert list(model.params) == ["dense/kernel", "dense/bias", "dense_1/kernel", "dense_1/bias", "dense_2/kernel"]
    assert list(model.grads) == list(model.params)
    model.params["dense_1/bias"] = np.full(4, 2.0)
    assert np.array_equal(model.layers[1].params["bias"], np.full(4, 2, np.float32))
    with pytest.raises(ValueError, match="parameter 'dense_1/bias' must keep its shape"):
        model.params["dense_1/bias"] = np.zeros(5)
    with pytest.raises(KeyError, match="parameters cannot be added"):
        model.params["dense_9/kernel"] = np.zeros(1)
    lines = []
    model.summary(print_fn=lines.append)
    assert any("dense_1 (Dense)" in s and "(None, 4)" in s and "20" in s for s in lines)
    assert "Total params: 52" in lines  # 5*4+4, 4*4+4, 4*2


def test_micro_batch_accumulation_equals_one_batch():
    x, y = blobs(64)
    model = make_model(7)
    model.layers[1].rate = 0.0
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    loss(y, model(x, training=True))
    model.backward(loss.backward())
    full = {k: g.copy() for k, g in model.grads.items()}
    acc = {k: 0 for k in full}
    for part in (slice(0, 32), slice(32, 64)):
        loss(y[part], model(x[part], training=True))
        model.backward(loss.backward())  # overwrites grads
        for k, g in model.grads.items():
            acc[k] = acc[k] + g * 0.5  # two equal micro-batches: average their mean gradients
    for k in full:
        assert_close(acc[k], full[k], np.float32, what=k)
    # the accumulated gradients go to the optimizer explicitly: the same step as the full batch
    twin = make_model(7)
    twin.layers[1].rate = 0.0
    with pytest.raises(ValueError, match="set_weights\\(\\) needs the model built"):
        twin.set_weights(model.get_weights())
    twin.build((None, 6))
    twin.set_weights(model.get_weights())
    loss(y, twin(x, training=True))
    twin.backward(loss.backward())
    optimizers.SGD(0.1).apply(twin)
    optimizers.SGD(0.1).apply(model, grads=acc)
    for a, b in zip(model.get_weights(), twin.get_weights()):
        assert_close(a, b, np.float32, what="step from accumulated gradients")
    with pytest.raises(ValueError, match="no gradient for parameter 'dense_1/bias'"):
        optimizers.SGD(0.1).apply(model, grads={k: v for k, v in acc.items() if k != "dense_1/bias"})


def test_save_load_round_trip_with_optimizer_state(tmp_path):
    x, y = blobs(96)
    model = make_model(1)
    model.compile(optimizer="adam", loss=losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=1, verbose=0, seed=0)
    path = tmp_path / "model.npz"
    model.save_weights(path)
    other = make_model(9)
    other.compile(optimizer="adam", loss=losses.SparseCategoricalCrossentropy(from_logits=True))
    other.build((None, 6))
    other.load_weights(path)
    assert_close(other(x), model(x), what="same outputs after load")
    assert other.optimizer.iterations == model.optimizer.iterations
    model.layers[1].rate = other.layers[1].rate = 0.0  # the dropout generators' positions differ
    h1 = model.fit(x, y, epochs=1, verbose=0, seed=3)
    h2 = other.fit(x, y, epochs=1, verbose=0, seed=3)
    assert h1["loss"] == h2["loss"]  # optimizer state restored too


def test_load_of_another_architecture_changes_nothing(tmp_path):
    model = make_model(1)
    model.build((None, 6))
    path = tmp_path / "w.npz"
    model.save_weights(path)
    wider = gl.Sequential([gl.Dense(16, activation="relu"), gl.Dropout(0.1), gl.Dense(4)])
    wider.build((None, 6))
    before = [w.copy() for w in wider.get_weights()]
    with pytest.raises(ValueError, match=r"weight 'dense_1/kernel' has shape \(16, 3\) in the file, "
                                         r"\(16, 4\) in the model"):
        wider.load_weights(path)
    assert all(np.array_equal(a, b) for a, b in zip(before, wider.get_weights()))
    deeper = gl.Sequential([gl.Dense(16), gl.Dropout(0.1), gl.Dense(3), gl.Dense(2)])
    deeper.build((None, 6))
    with pytest.raises(ValueError, match="has no weight 'dense_2/kernel'"):
        deeper.load_weights(path)
    with pytest.raises(ValueError, match="must end with '.npz'"):
        model.save_weights(tmp_path / "w.h5")


def test_failed_call_between_layers_changes_nothing():
    from gpulayers.layers.normalization import BatchNormalization

    rng = np.random.default_rng(6)
    model = gl.Sequential([BatchNormalization(), gl.Dense(4, seed=0), gl.Dense(2, seed=1)])
    x = rng.standard_normal((8, 5)).astype(np.float32)
    model(x, training=True)
    model.layers[2].params["kernel"] = np.zeros((3, 2), np.float32)  # no longer fits the 4 features
    moving = model.layers[0].state["moving_mean"].copy()
    saved = [layer._saved for layer in model.layers]
    with pytest.raises(ValueError, match="Dense: `inputs` must have rank >= 2 and 3 features"):
        model(x * 3 + 1, training=True)
    assert np.array_equal(model.layers[0].state["moving_mean"], moving)  # batch norm's update undone
    assert all(layer._saved is s for layer, s in zip(model.layers, saved))


def test_fit_errors():
    model = make_model()
    x, y = blobs(10)
    with pytest.raises(ValueError, match="fit\\(\\) needs compile"):
        model.fit(x, y)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="same number of samples"):
        model.fit(x, y[:5])
    with pytest.raises(ValueError, match="`batch_size` must be a positive int. Received: batch_size=0"):
        model.fit(x, y, batch_size=0)
    with pytest.raises(ValueError, match="compile: `loss` must be"):
        model.compile(loss="hinge2")


@pytest.mark.gpu
def test_gpu_model_moves_cpu_batches_and_matches_cpu(tmp_path):
    if not gl.gpu_available():
        pytest.skip("no CUDA GPU available (CuPy missing or no device)")
    x, y = blobs(200)
    cpu, gpu = make_model(2), make_model(2).to("gpu")
    for m in (cpu, gpu):
        m.layers[1].rate = 0.0
        m.compile(optimizer="adam", loss=losses.SparseCategoricalCrossentropy(from_logits=True))
    h_cpu = cpu.fit(x, y, epochs=2, seed=1, verbose=0)
    h_gpu = gpu.fit(x, y, epochs=2, seed=1, verbose=0)
    assert np.allclose(h_cpu["loss"], h_gpu["loss"], rtol=1e-4)
    assert isinstance(gpu.predict(x), np.ndarray)
    path = tmp_path / "gpu.npz"
    gpu.save_weights(path)
    back = make_model(5)
    back.build((None, 6))
    back.load_weights(path)
    assert_close(back.predict(x), gpu.predict(x), np.float32, what="saved on GPU, loaded on CPU")


def test_readme_training_example_runs_as_written(capsys):
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text[text.index("## Training a model"):]
    code = section[section.index("```python") + len("```python"):]
    code = code[:code.index("```")]
    assert len([line for line in code.strip().splitlines() if line.strip()]) <= 12
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    loss, accuracy = namespace["model"].evaluate(namespace["x"], namespace["y"])
    assert accuracy > 0.95
