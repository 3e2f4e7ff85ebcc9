"""``python -m gpulayers demo --task images|autoencoder|sequence``: three small trainings.

Every data set is generated here, deterministically from a seed (nothing is downloaded):

- images: 16x16 grey images of four shapes (disk, hollow square, plus, cross) at random
  positions and sizes with noise; a small CNN (Conv2D, BatchNormalization, MaxPooling2D,
  GlobalAveragePooling2D, softmax Dense head) classifies them; test accuracy vs chance (25%).
- autoencoder: the same images (less noise, in [0, 1]); an encoder with Conv2D and
  MaxPooling2D down to 4x4x8, a decoder with UpSampling2D and Conv2DTranspose back to 16x16;
  reconstruction error vs predicting the mean training image.
- sequence: epidemic curves of an SIR model (random infection and recovery rates and initial
  infections) observed with multiplicative noise; an LSTM reads 20 days and forecasts the
  next 7; error vs the naive forecast that repeats the last observed value.

Each run writes ``<task>_loss.png`` (training and validation loss per epoch; needs
matplotlib) and ``<task>_summary.txt`` into the output folder, and returns the summary dict.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from . import kernels, losses, optimizers
from .layers.convolution import Conv2D, Conv2DTranspose
from .layers.core import Activation, Dense
from .layers.normalization import BatchNormalization
from .layers.pooling import GlobalAveragePooling2D, MaxPooling2D
from .layers.recurrent import LSTM
from .layers.upsampling import UpSampling2D
from .models import Sequential

TASKS = ("images", "autoencoder", "sequence")
DEFAULT_EPOCHS = {"images": 6, "autoencoder": 6, "sequence": 10}
SHAPES = ("disk", "square", "plus", "cross")


# ----------------------------------------------------------------------------- data

def make_shapes(n, seed, size=16, noise=0.3):
    """(images (n, size, size, 1) float32, labels (n,) int64): one of SHAPES per image."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(SHAPES), n)
    r = rng.uniform(3.0, 6.0, n)[:, None, None]
    cy, cx = (rng.uniform(r[:, 0, 0], size - 1 - r[:, 0, 0]) for _ in range(2))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]
    cheb = np.maximum(np.abs(dx), np.abs(dy))
    masks = np.stack([
        dx ** 2 + dy ** 2 <= r ** 2,                                                    # disk
        (cheb <= r) & (cheb >= r - 1.2),                                                # hollow square
        ((np.abs(dx) <= 0.7) & (np.abs(dy) <= r)) | ((np.abs(dy) <= 0.7) & (np.abs(dx) <= r)),  # plus
        ((np.abs(dx - dy) <= 0.8) | (np.abs(dx + dy) <= 0.8)) & (cheb <= r),            # cross
    ])
    shape = masks[labels, np.arange(n)]
    intensity = rng.uniform(0.6, 1.0, n)[:, None, None]
    images = shape * intensity + noise * rng.standard_normal((n, size, size))
    return images[..., None].astype(np.float32), labels.astype(np.int64)


def make_sir(n, seed, days=60, window=20, horizon=7, noise=0.05):
    """(inputs (n, window, 1), targets (n, horizon), last observed value (n,)): windows of noisy
    SIR infection curves (fractions of the population, times 10), all float32."""
    rng = np.random.default_rng(seed)
    beta = rng.uniform(0.25, 0.6, n)
    gamma = rng.uniform(0.07, 0.2, n)
    i = rng.uniform(1e-3, 2e-2, n)
    s = 1 - i
    curve = np.empty((n, days))
    for day in range(days):  # 4 Euler sub-steps per day, vectorised over the curves
        curve[:, day] = i
        for _ in range(4):
            new, rec = beta * s * i / 4, gamma * i / 4
            s, i = s - new, i + new - rec
    observed = 10 * curve * np.exp(noise * rng.standard_normal(curve.shape))
    start = rng.integers(0, days - window - horizon + 1, n)
    rows = np.arange(n)[:, None]
    x = observed[rows, start[:, None] + np.arange(window)]
    y = observed[rows, start[:, None] + window + np.arange(horizon)]
    return x[..., None].astype(np.float32), y.astype(np.float32), x[:, -1].astype(np.float32)


# ----------------------------------------------------------------------------- models

def images_model(seed=0):
    return Sequential([
        Conv2D(16, 3, padding="same", use_bias=False, seed=seed), BatchNormalization(momentum=0.9), Activation("relu"),
        MaxPooling2D(2),
        Conv2D(32, 3, padding="same", use_bias=False, seed=seed + 1), BatchNormalization(momentum=0.9),
        Activation("relu"),
        MaxPooling2D(2),
        Conv2D(32, 3, padding="same", activation="relu", seed=seed + 2),
        GlobalAveragePooling2D(),
        Dense(len(SHAPES), activation="softmax", seed=seed + 3),
    ], name="shapes_cnn")


def autoencoder_model(seed=0):
    return Sequential([
        Conv2D(16, 3, padding="same", activation="relu", seed=seed), MaxPooling2D(2),        # 8x8x16
        Conv2D(8, 3, padding="same", activation="relu", seed=seed + 1), MaxPooling2D(2),     # 4x4x8
        UpSampling2D(2),                                                                       # 8x8x8
        Conv2DTranspose(16, 3, strides=2, padding="same", activation="relu", seed=seed + 2),  # 16x16x16
        Conv2D(1, 3, padding="same", seed=seed + 3),                                          # 16x16x1
    ], name="shapes_autoencoder")


def sequence_model(seed=0, horizon=7):
    return Sequential([LSTM(32, seed=seed), Dense(horizon, seed=seed + 1)], name="sir_forecaster")


# ----------------------------------------------------------------------------- running

def _plot(history, path, title):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = np.arange(1, len(history["loss"]) + 1)
    ax.plot(epochs, history["loss"], "o-", label="training loss")
    if "val_loss" in history:
        ax.plot(epochs, history["val_loss"], "s--", label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _one_blas_thread():
    """BLAS limited to one thread when threadpoolctl is installed: the demos' GEMMs are small,
    and on a busy machine OpenBLAS threads spend far longer waiting for each other than working."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def run(task, epochs=None, device="cpu", out_dir=".", verbose=1, train_size=None, seed=0, print_fn=print):
    """Train one demo; writes the PNG and the summary; returns the summary dict."""
    with _one_blas_thread():
        return _run(task, epochs, device, out_dir, verbose, train_size, seed, print_fn)


def _run(task, epochs, device, out_dir, verbose, train_size, seed, print_fn):
    if task not in TASKS:
        raise ValueError(f"demo: `task` must be one of {', '.join(map(repr, TASKS))}. Received: task={task!r}")
    if device not in ("cpu", "gpu"):
        raise ValueError(f"demo: `device` must be 'cpu' or 'gpu'. Received: device={device!r}")
    if device == "gpu" and not kernels.gpu_available():
        raise ValueError("demo: no GPU is available (CuPy missing or no device). Received: device='gpu'")
    epochs = DEFAULT_EPOCHS[task] if epochs is None else epochs
    if not isinstance(epochs, int) or epochs <= 0:
        raise ValueError(f"demo: `epochs` must be a positive int. Received: epochs={epochs!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summary = {"task": task, "epochs": epochs, "device": device}
    if task == "images":
        n = train_size or 2400
        x, y = make_shapes(n, seed)
        xt, yt = make_shapes(600, seed + 1000)
        model = images_model(seed)
        model.compile(optimizers.Adam(3e-3), losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
        validation = (xt, yt)
        batch = 32
    elif task == "autoencoder":
        n = train_size or 2400
        x = np.clip(make_shapes(n, seed, noise=0.05)[0], 0, 1)
        xt = np.clip(make_shapes(600, seed + 1000, noise=0.05)[0], 0, 1)
        y, yt = x, xt
        model = autoencoder_model(seed)
        model.compile(optimizers.Adam(3e-3), losses.MeanSquaredError())
        validation = (xt, xt)
        batch = 32
    else:
        n = train_size or 3000
        x, y, _ = make_sir(n, seed)
        xt, yt, last = make_sir(800, seed + 1000)
        model = sequence_model(seed)
        model.compile(optimizers.Adam(5e-3), losses.MeanSquaredError(), metrics=["mae"])
        validation = (xt, yt)
        batch = 64
    if device == "gpu":
        model.to("gpu")
    history = model.fit(x, y, batch_size=batch, epochs=epochs, validation_data=validation, seed=seed,
                        verbose=verbose)
    for e in range(epochs):
        print_fn(f"epoch {e + 1}/{epochs}: " + ", ".join(f"{k} {v[e]:.4f}" for k, v in history.items()))
    if task == "images":
        accuracy = model.evaluate(xt, yt, return_dict=True)["accuracy"]
        summary.update(test_accuracy=accuracy, chance_accuracy=1 / len(SHAPES),
                       text=f"test accuracy {accuracy:.1%} on 600 images of 4 shapes (chance: 25.0%)")
    elif task == "autoencoder":
        recon = float(np.mean((model.predict(xt) - xt) ** 2))
        baseline = float(np.mean((x.mean(axis=0, keepdims=True) - xt) ** 2))
        summary.update(test_mse=recon, mean_image_mse=baseline,
                       text=f"test reconstruction MSE {recon:.4f} vs {baseline:.4f} for the mean training image "
                            f"({baseline / recon:.1f}x lower)")
    else:
        pred = model.predict(xt)
        mse = float(np.mean((pred - yt) ** 2))
        naive = float(np.mean((last[:, None] - yt) ** 2))
        summary.update(test_mse=mse, naive_last_value_mse=naive,
                       text=f"7-day forecast MSE {mse:.4f} vs {naive:.4f} for repeating the last value "
                            f"({naive / mse:.1f}x lower)")
    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary["history"] = {k: [round(float(v), 6) for v in vs] for k, vs in history.items()}
    png = _plot(history, out / f"{task}_loss.png", f"gpulayers demo: {task} ({device})")
    summary["plot"] = str(png) if png else None
    text = [f"gpulayers demo {task} on {device}: {summary['text']}", f"{epochs} epochs in {summary['seconds']} s",
            f"loss curve: {png}" if png else "loss curve: not drawn (matplotlib is not installed; "
                                             "pip install 'gpulayers[demo]')"]
    (out / f"{task}_summary.txt").write_text("\n".join(text) + "\n\n" + json.dumps(summary, indent=1) + "\n")
    for line in text:
        print_fn(line)
    return summary


def main(task, epochs=None, device="cpu", out_dir=".", verbose=1):
    """CLI entry: 0 when the model beats its baseline clearly, 1 otherwise."""
    s = run(task, epochs=epochs, device=device, out_dir=out_dir, verbose=verbose)
    if task == "images":
        ok = s["test_accuracy"] > 2 * s["chance_accuracy"]
    elif task == "autoencoder":
        ok = s["test_mse"] < 0.5 * s["mean_image_mse"]
    else:
        ok = s["test_mse"] < 0.5 * s["naive_last_value_mse"]
    return 0 if ok else 1

