"""A short training-like loop through several layers, for Nsight Systems / Nsight Compute.

    nsys profile -t cuda,nvtx -o gpulayers python bench/profile.py
    ncu --nvtx --nvtx-include "MaxPooling2D.forward/" -o pool python bench/profile.py --steps 2

Every layer's forward and backward is an NVTX range "<LayerName>.forward/.backward"
(domain "gpulayers"), so the timeline shows layers, not anonymous kernels. Without a GPU it
runs the same loop on the CPU simulator (small shapes), which is only useful as a smoke test.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gpulayers as gl  # noqa: E402
from gpulayers import kernels  # noqa: E402


def model():
    return [gl.BatchNormalization(), gl.MaxPooling2D(3, 2, "same"), gl.UpSampling2D(2, interpolation="bilinear"),
            gl.AveragePooling2D(2), gl.GlobalAveragePooling2D()]


def step(layers, x):
    acts = [x]
    for layer in layers:
        acts.append(layer(acts[-1], training=True) if isinstance(layer, gl.BatchNormalization) else layer(acts[-1]))
    g = acts[-1] * 0 + 1
    for layer in reversed(layers):
        g = layer.backward(g)
    return g


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    layers = model()
    if kernels.gpu_available():
        cp = kernels.cupy_module()
        x = cp.asarray(rng.standard_normal((32, 56, 56, 64)).astype(np.float32))
        rnn, seq = gl.GRU(256, return_sequences=True), cp.asarray(rng.standard_normal((32, 50, 128)), np.float32)
        for _ in range(args.steps):
            step(layers, x)
            rnn.backward(rnn(seq) * 0 + 1)
        cp.cuda.Device().synchronize()
    else:
        with kernels.simulate():
            x = rng.standard_normal((2, 12, 12, 8)).astype(np.float32)
            rnn, seq = gl.GRU(8, return_sequences=True), rng.standard_normal((2, 5, 4)).astype(np.float32)
            for _ in range(min(args.steps, 2)):
                step(layers, x)
                rnn.backward(rnn(seq) * 0 + 1)
    print(f"ran {args.steps} steps of {', '.join(type(l).__name__ for l in layers)} and GRU "
          f"on the {'GPU' if kernels.gpu_available() else 'CPU simulator'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
