"""Sequential: a stack of layers with Keras-style compile / fit / evaluate / predict.

The model follows the layer protocol (``y = model(x, training)``, ``dx = model.backward(dy)``,
``params``/``grads``/``state``), so an optimizer's ``apply(model)`` updates it, and adds
``summary()``, ``save_weights``/``load_weights`` (one device-independent ``.npz``) and the
training loop. Parameter names are "<layer key>/<weight name>", the layer key being the
layer's name made unique within the model ("dense", "dense_1", ...).
"""
from __future__ import annotations

import math
import numbers
import os
from collections.abc import MutableMapping

import numpy as np

from . import kernels, losses, optimizers
from .layers.base import Layer


def _snapshot(layer):
    """A shallow copy of a layer's attributes (dicts copied too), nested layers included."""
    attrs = {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(layer).items()}
    nested = [(v, _snapshot(v)) for v in vars(layer).values() if isinstance(v, Layer)]
    return attrs, nested


def _restore(layer, snap):
    attrs, nested = snap
    layer.__dict__.clear()
    layer.__dict__.update(attrs)
    for sub, s in nested:
        _restore(sub, s)


def _to_numpy(a):
    return kernels.cupy_module().asnumpy(a) if kernels.is_gpu_array(a) else np.asarray(a)


class ParamView(MutableMapping):
    """The model's parameters by name; assigning copies INTO the layer's array (same shape),
    so the new values take effect in every layer; adding or deleting names is refused."""

    def __init__(self, model):
        self._model = model

    def _locate(self, name):
        for key, layer in zip(self._model._keys, self._model.layers):
            prefix = key + "/"
            if name.startswith(prefix) and name[len(prefix):] in layer.params:
                return layer, name[len(prefix):]
        raise KeyError(name)

    def __getitem__(self, name):
        layer, k = self._locate(name)
        return layer.params[k]

    def __setitem__(self, name, value):
        try:
            layer, k = self._locate(name)
        except KeyError:
            raise KeyError(f"Sequential: no parameter {name!r}; parameters cannot be added. "
                           f"Received: params[{name!r}] = ...") from None
        target = layer.params[k]
        if tuple(np.shape(value)) != tuple(target.shape):
            raise ValueError(f"Sequential: parameter {name!r} must keep its shape {tuple(target.shape)}. "
                             f"Received: shape {tuple(np.shape(value))}")
        xp = kernels.array_module(target)
        target[...] = xp.asarray(value, dtype=target.dtype)

    def __delitem__(self, name):
        raise TypeError(f"Sequential: parameters cannot be deleted. Received: del params[{name!r}]")

    def __iter__(self):
        for key, layer in zip(self._model._keys, self._model.layers):
            for k in layer.params:
                yield f"{key}/{k}"

    def __len__(self):
        return sum(len(layer.params) for layer in self._model.layers)

    def __repr__(self):
        return repr({k: tuple(v.shape) for k, v in self.items()})


class History(dict):
    """What ``fit`` returns: a dict of per-epoch lists ("loss", "accuracy", "val_loss", ...);
    ``history.history`` is the same dict, as Keras's History object."""

    @property
    def history(self):
        return self


# ----------------------------------------------------------------------------- metrics

def _accuracy_fn(loss):
    if isinstance(loss, losses.SparseCategoricalCrossentropy):
        def sparse(y_true, y_pred):
            labels = y_true.reshape(y_pred.shape[:-1])
            return (y_pred.argmax(axis=-1) == labels).sum(), labels.size
        return sparse
    if isinstance(loss, losses.BinaryCrossentropy):
        threshold = 0.0 if loss.from_logits else 0.5

        def binary(y_true, y_pred):
            return ((y_pred > threshold) == (y_true > 0.5)).sum(), y_pred.size
        return binary

    def categorical(y_true, y_pred):
        if y_pred.shape[-1] == 1:
            return ((y_pred > 0.5) == (y_true > 0.5)).sum(), y_pred.size
        return (y_pred.argmax(axis=-1) == y_true.argmax(axis=-1)).sum(), y_pred.size // y_pred.shape[-1]
    return categorical


def _metric(name, loss):
    if name in ("accuracy", "acc"):
        return "accuracy", _accuracy_fn(loss)
    if name in ("mae", "mean_absolute_error"):
        return "mae", lambda t, p: (abs(p.astype(np.float64) - t).sum(), p.size)
    if name in ("mse", "mean_squared_error"):
        return "mse", lambda t, p: (((p.astype(np.float64) - t) ** 2).sum(), p.size)
    raise ValueError(f"compile: `metrics` entries must be 'accuracy', 'mae' or 'mse'. Received: {name!r}")


def _positive_int(arg, value):
    if not isinstance(value, (numbers.Integral, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"Sequential: `{arg}` must be a positive int. Received: {arg}={value!r}")
    return int(value)


# ----------------------------------------------------------------------------- model

class Sequential:
    """A linear stack of layers, as ``keras.Sequential``.

    Args:
        layers: list of gpulayers layers (used as given, not copied).
        name: the model's name.

    ``model(x, training=False)`` runs the layers in order; ``model.backward(dy)`` runs their
    backward passes in reverse and returns d(loss)/dx. A call that raises (for example a
    shape mismatch between layers) leaves every layer as it was.
    """

    def __init__(self, layers=None, name=None):
        self.name = name or "sequential"
        self.layers: list = []
        self._keys: list[str] = []
        self.optimizer = self.loss = None
        self.metrics: list = []
        self._device = None
        for layer in layers or []:
            self.add(layer)

    # -- structure --------------------------------------------------------------
    def add(self, layer):
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential: layers must be gpulayers layers. Received: {layer!r} of type "
                            f"{type(layer).__name__}")
        if any(layer is other for other in self.layers):
            raise ValueError(f"Sequential: layer {layer.name!r} is already in the model (a layer object can "
                             f"appear once). Received: {layer!r}")
        key, n = layer.name, 1
        while key in self._keys:
            key = f"{layer.name}_{n}"
            n += 1
        self.layers.append(layer)
        self._keys.append(key)

    @property
    def built(self):
        return bool(self.layers) and all(layer.built for layer in self.layers)

    def build(self, input_shape, dtype="float32"):
        """Build every layer from an input shape (batch size included or None)."""
        shape = tuple(1 if s is None else int(s) for s in input_shape)
        xp = kernels.cupy_module() if self._device == "gpu" else np
        self(xp.zeros(shape, dtype))
        return self

    # -- protocol ---------------------------------------------------------------
    def __call__(self, x, training=False):
        if not self.layers:
            raise ValueError("Sequential: the model has no layers. Received: a call of an empty model")
        if not isinstance(training, bool):
            raise TypeError(f"Sequential: `training` must be a bool. Received: training={training!r}")
        snaps = [_snapshot(layer) for layer in self.layers]
        try:
            for layer in self.layers:
                x = layer(x, training=training)
        except Exception:
            for layer, snap in zip(self.layers, snaps):
                _restore(layer, snap)
            raise
        return x

    def backward(self, dy):
        """d(loss)/d(input) of the last call; fills every layer's grads."""
        snaps = [_snapshot(layer) for layer in self.layers]
        try:
            for layer in reversed(self.layers):
                dy = layer.backward(dy)
        except Exception:
            for layer, snap in zip(self.layers, snaps):
                _restore(layer, snap)
            raise
        return dy

    @property
    def params(self):
        """Trainable arrays by name; ``model.params[name] = new`` copies into the layer's array."""
        return ParamView(self)

    @property
    def grads(self):
        return {f"{key}/{k}": g for key, layer in zip(self._keys, self.layers) for k, g in layer.grads.items()}

    @property
    def state(self):
        return {f"{key}/{k}": s for key, layer in zip(self._keys, self.layers) for k, s in layer.state.items()}

    def count_params(self):
        return sum(int(np.prod(w.shape)) for layer in self.layers for w in layer._weights().values())

    def get_weights(self):
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights):
        """Every layer's weights in order (Keras order), all or nothing."""
        weights = list(weights)
        if not self.built:
            raise ValueError("Sequential: set_weights() needs the model built (call it once or build()). "
                             f"Received: {len(weights)} arrays")
        expected = [(key, n, tuple(layer._weights()[n].shape)) for key, layer in zip(self._keys, self.layers)
                    for n in layer.weight_names]
        if len(weights) != len(expected):
            raise ValueError(f"Sequential: set_weights() expects {len(expected)} arrays. Received: {len(weights)}")
        for (key, n, shape), w in zip(expected, weights):
            if tuple(np.shape(w)) != shape:
                raise ValueError(f"Sequential: weight {key}/{n} must have shape {shape}. "
                                 f"Received: shape {tuple(np.shape(w))}")
        i = 0
        for layer in self.layers:
            k = len(layer.weight_names)
            layer.set_weights(weights[i:i + k])
            i += k

    def to(self, device):
        """Move every layer (and the optimizer's state at its next step) to "gpu" or "cpu"."""
        for layer in self.layers:
            layer.to(device)
        self._device = device
        return self

    @property
    def device(self):
        for layer in self.layers:
            for w in layer._weights().values():
                return "gpu" if kernels.is_gpu_array(w) else "cpu"
        return self._device or "cpu"

    # -- summary ------------------------------------------------------------------
    def summary(self, print_fn=print):
        """Prints each layer's name, type, output shape (batch as None) and parameter count."""
        if not self.built or any(layer._output_meta is None for layer in self.layers):
            raise ValueError("Sequential: summary() needs the model called once (or build(input_shape)). "
                             "Received: an unbuilt model")
        rows = []
        for key, layer in zip(self._keys, self.layers):
            meta = layer._output_meta
            shape = meta[0][0] if isinstance(meta, list) else meta[0]
            count = sum(int(np.prod(w.shape)) for w in layer._weights().values())
            rows.append((f"{key} ({type(layer).__name__})", str((None, *shape[1:])), f"{count:,}"))
        w0 = max(len("Layer (type)"), *(len(r[0]) for r in rows)) + 2
        w1 = max(len("Output Shape"), *(len(r[1]) for r in rows)) + 2
        line = "-" * (w0 + w1 + 12)
        print_fn(f'Model: "{self.name}"')
        print_fn(line)
        print_fn(f"{'Layer (type)':{w0}}{'Output Shape':{w1}}{'Param #':>10}")
        print_fn("=" * len(line))
        for r in rows:
            print_fn(f"{r[0]:{w0}}{r[1]:{w1}}{r[2]:>10}")
        print_fn("=" * len(line))
        trainable = sum(int(np.prod(w.shape)) for layer in self.layers for w in layer.params.values())
        total = self.count_params()
        print_fn(f"Total params: {total:,}")
        print_fn(f"Trainable params: {trainable:,}")
        print_fn(f"Non-trainable params: {total - trainable:,}")

    # -- saving -------------------------------------------------------------------
    def _weight_entries(self):
        return [(f"{key}/{n}", layer, n) for key, layer in zip(self._keys, self.layers) for n in layer.weight_names]

    def save_weights(self, path):
        """Writes every layer's weights (and the compiled optimizer's state) to one ``.npz``."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            raise ValueError(f"Sequential: save_weights() writes a .npz file; the path must end with '.npz'. "
                             f"Received: path={path!r}")
        if not self.built:
            raise ValueError("Sequential: save_weights() needs the model built. Received: an unbuilt model")
        arrays = {name: _to_numpy(layer._weights()[n]) for name, layer, n in self._weight_entries()}
        if self.optimizer is not None and self.optimizer.iterations:
            arrays.update({f"optimizer/{k}": v for k, v in self.optimizer.get_state().items()})
        np.savez(path, **arrays)

    def load_weights(self, path):
        """Reads ``save_weights``'s file; any mismatch raises (naming the first) and changes nothing."""
        path = os.fspath(path)
        if not self.built:
            raise ValueError("Sequential: load_weights() needs the model built (call it once or build()). "
                             f"Received: path={path!r}")
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
        entries = self._weight_entries()
        for name, layer, n in entries:
            if name not in data:
                raise ValueError(f"Sequential: the weights file {path!r} does not match the model: it has no "
                                 f"weight {name!r} (file holds {', '.join(sorted(data)[:6])}...)")
            shape = tuple(layer._weights()[n].shape)
            if tuple(data[name].shape) != shape:
                raise ValueError(f"Sequential: the weights file {path!r} does not match the model: weight "
                                 f"{name!r} has shape {tuple(data[name].shape)} in the file, {shape} in the model")
        known = {name for name, _, _ in entries}
        extra = [k for k in data if k not in known and not k.startswith("optimizer/")]
        if extra:
            raise ValueError(f"Sequential: the weights file {path!r} does not match the model: it holds "
                             f"{extra[0]!r}, which the model does not have")
        opt_state = {k[len("optimizer/"):]: v for k, v in data.items() if k.startswith("optimizer/")}
        if opt_state and self.optimizer is not None:
            params = self.params
            for k, v in opt_state.items():
                if k == "iterations":
                    continue
                slot, _, pname = k.partition("/")
                if pname not in params or tuple(v.shape) != tuple(params[pname].shape) \
                        or slot not in self.optimizer.active_slots():
                    raise ValueError(f"Sequential: the weights file {path!r} holds optimizer state {k!r} that "
                                     f"does not fit this model and optimizer")
        for key, layer in zip(self._keys, self.layers):
            if layer.weight_names:
                layer.set_weights([data[f"{key}/{n}"] for n in layer.weight_names])
        if opt_state and self.optimizer is not None:
            self.optimizer.set_state(opt_state)

    # -- training loop --------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, metrics=None):
        """Sets the optimizer (instance or name), the loss (instance or Keras name) and metrics."""
        if loss is None:
            raise ValueError("Sequential: compile() needs a `loss`. Received: loss=None")
        optimizer = optimizers.get(optimizer)
        loss = losses.get(loss)
        if metrics is not None and not isinstance(metrics, (list, tuple)):
            raise TypeError(f"Sequential: `metrics` must be a list. Received: metrics={metrics!r}")
        self.metrics = [_metric(m, loss) for m in (metrics or [])]
        self.optimizer, self.loss = optimizer, loss

    def _check_data(self, x, y, what):
        if not hasattr(x, "shape") or (y is not None and not hasattr(y, "shape")):
            raise TypeError(f"Sequential: {what} data must be arrays. Received: x of type {type(x).__name__}"
                            + ("" if y is None else f", y of type {type(y).__name__}"))
        if y is not None and len(x) != len(y):
            raise ValueError(f"Sequential: {what} x and y must have the same number of samples. "
                             f"Received: x.shape={tuple(x.shape)}, y.shape={tuple(y.shape)}")
        if len(x) == 0:
            raise ValueError(f"Sequential: {what} data must not be empty. Received: x.shape={tuple(x.shape)}")

    def _batch(self, a, idx):
        """Rows ``idx`` of a, on the model's device (a CPU array is moved per batch)."""
        part = a[idx] if kernels.array_module(a) is np or not isinstance(idx, np.ndarray) else \
            a[kernels.cupy_module().asarray(idx)]
        if self.device == "gpu" and not kernels.is_gpu_array(part):
            part = kernels.cupy_module().asarray(part)
        return part

    def train_step(self, x, y):
        """One step: forward (training), loss, backward, optimizer update. Returns the loss value."""
        y_pred = self(x, training=True)
        value = self.loss(y, y_pred)
        self.backward(self.loss.backward())
        self.optimizer.apply(self)
        return value, y_pred

    def fit(self, x, y, batch_size=32, epochs=1, verbose=1, validation_data=None, shuffle=True, seed=None):
        """Trains for ``epochs`` passes over (x, y); returns a History dict of per-epoch values.

        A progress bar (tqdm) per epoch when ``verbose``; ``shuffle`` reorders the samples each
        epoch with a generator seeded by ``seed``. Inputs may be NumPy or CuPy arrays; CPU
        arrays given to a GPU model are moved batch by batch.
        """
        from tqdm.auto import tqdm

        if self.optimizer is None:
            raise ValueError("Sequential: fit() needs compile(optimizer, loss) first. Received: an uncompiled model")
        self._check_data(x, y, "training")
        batch_size = _positive_int("batch_size", batch_size)
        epochs = _positive_int("epochs", epochs)
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("Sequential: `validation_data` must be a tuple (x_val, y_val). "
                                 f"Received: {type(validation_data).__name__}")
            self._check_data(*validation_data, "validation")
        rng = np.random.default_rng(seed)
        n = len(x)
        steps = math.ceil(n / batch_size)
        history = History()
        for epoch in range(epochs):
            order = rng.permutation(n) if shuffle else np.arange(n)
            totals = {"loss": 0.0, **{name: 0.0 for name, _ in self.metrics}}
            counts = {name: 0 for name in totals}
            bar = tqdm(total=steps, desc=f"Epoch {epoch + 1}/{epochs}", unit="batch", disable=not verbose,
                       leave=True, dynamic_ncols=True)
            for step in range(steps):
                idx = order[step * batch_size:(step + 1) * batch_size]
                xb, yb = self._batch(x, idx), self._batch(y, idx)
                value, y_pred = self.train_step(xb, yb)
                totals["loss"] += float(value) * len(idx)
                counts["loss"] += len(idx)
                for name, fn in self.metrics:
                    s, c = fn(yb, y_pred)
                    totals[name] += float(s)
                    counts[name] += int(c)
                bar.update(1)
                bar.set_postfix({k: f"{totals[k] / counts[k]:.4f}" for k in totals}, refresh=False)
            logs = {k: totals[k] / counts[k] for k in totals}
            if validation_data is not None:
                val = self.evaluate(*validation_data, batch_size=batch_size, return_dict=True)
                logs.update({f"val_{k}": v for k, v in val.items()})
            bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()})
            bar.close()
            for k, v in logs.items():
                history.setdefault(k, []).append(v)
        return history

    def evaluate(self, x, y, batch_size=32, verbose=0, return_dict=False):
        """The loss (and metrics) over (x, y) in inference mode, averaged over samples.

        Returns the loss alone without metrics, else [loss, *metrics]; a dict with ``return_dict``.
        """
        from tqdm.auto import tqdm

        if self.loss is None:
            raise ValueError("Sequential: evaluate() needs compile(optimizer, loss) first. "
                             "Received: an uncompiled model")
        self._check_data(x, y, "evaluation")
        batch_size = _positive_int("batch_size", batch_size)
        totals = {"loss": 0.0, **{name: 0.0 for name, _ in self.metrics}}
        counts = {name: 0 for name in totals}
        n = len(x)
        for start in tqdm(range(0, n, batch_size), desc="evaluate", disable=not verbose, unit="batch"):
            idx = slice(start, min(start + batch_size, n))
            xb, yb = self._batch(x, idx), self._batch(y, idx)
            y_pred = self(xb, training=False)
            b = len(xb)
            totals["loss"] += float(self.loss(yb, y_pred)) * b
            counts["loss"] += b
            for name, fn in self.metrics:
                s, c = fn(yb, y_pred)
                totals[name] += float(s)
                counts[name] += int(c)
        logs = {k: totals[k] / counts[k] for k in totals}
        if return_dict:
            return logs
        return logs["loss"] if not self.metrics else list(logs.values())

    def predict(self, x, batch_size=32, verbose=0):
        """Outputs for x in inference mode, batch by batch; NumPy in, NumPy out (CuPy: CuPy)."""
        from tqdm.auto import tqdm

        self._check_data(x, None, "prediction")
        batch_size = _positive_int("batch_size", batch_size)
        outs = []
        for start in tqdm(range(0, len(x), batch_size), desc="predict", disable=not verbose, unit="batch"):
            y = self(self._batch(x, slice(start, start + batch_size)), training=False)
            outs.append(y if kernels.is_gpu_array(x) else _to_numpy(y))
        xp = kernels.array_module(outs[0])
        return xp.concatenate(outs, axis=0)

    def __repr__(self):
        return f"<Sequential name={self.name!r} layers={len(self.layers)}>"
