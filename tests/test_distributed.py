"""Synchronized BatchNormalization over torch.distributed: two gloo processes on loopback give what
one process gives on the concatenated batch (outputs, input gradients, parameter gradients summed
over processes, moving statistics), for uneven batch sizes; the DDP example runs."""
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import gpulayers as gl  # noqa: E402
from gpulayers import distributed, testing  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120
SPLITS = (3, 8)  # uneven: 3 samples on rank 0, 8 on rank 1
MOMENTUM = 0.8


def _data():
    """Full batch (N, C, H) with a large per-channel offset (a sum of squares would lose digits),
    output gradients, and weights in Keras order."""
    rng = np.random.default_rng(2026)
    n = sum(SPLITS)
    x = rng.standard_normal((n, 3, 5)) * np.array([1.0, 0.5, 2.0])[:, None] + np.array([3e4, -2e4, 5.0])[:, None]
    dy = rng.standard_normal((n, 3, 5))
    weights = [rng.uniform(0.5, 1.5, 3), rng.standard_normal(3), rng.standard_normal(3), rng.uniform(0.5, 2, 3)]
    return x, dy, weights


def _built_numpy(weights, **kwargs):
    layer = gl.BatchNormalization(axis=1, momentum=MOMENTUM, **kwargs)
    layer(np.zeros((2, 3, 5)), training=False)  # build
    layer.set_weights(weights)
    return layer


def _worker(rank, world, out_dir):
    # a rendezvous file of the test's own (no port that a concurrent test run could take)
    dist.init_process_group("gloo", init_method=f"file://{Path(out_dir) / 'rendezvous'}", rank=rank,
                            world_size=world)
    try:
        import gpulayers.torch as glt

        x_all, dy_all, weights = _data()
        lo, hi = sum(SPLITS[:rank]), sum(SPLITS[:rank + 1])
        x, dy = x_all[lo:hi], dy_all[lo:hi]
        results = {}
        calls = []
        all_reduce = dist.all_reduce
        dist.all_reduce = lambda *a, **k: (calls.append(1), all_reduce(*a, **k))[1]  # counts the collectives
        # gpulayers.BatchNormalization on NumPy arrays, default group
        layer = _built_numpy(weights, synchronized=True)
        results["np_y"] = layer(x, training=True)
        results["forward_all_reduces"] = len(calls)
        results["np_dx"] = layer.backward(dy)
        results["backward_all_reduces"] = len(calls) - results["forward_all_reduces"]
        results["np_dgamma"], results["np_dbeta"] = layer.grads["gamma"], layer.grads["beta"]
        results["np_moving"] = np.stack(layer.get_weights()[2:])
        # an empty batch on rank 0: it still takes part; rank 1 normalises the whole batch
        layer = _built_numpy(weights, synchronized=True)
        part = x_all[:0] if rank == 0 else x_all
        results["empty_y"] = layer(part, training=True)
        results["empty_dx"] = layer.backward(dy_all[:0] if rank == 0 else dy_all)
        results["empty_moving"] = np.stack(layer.get_weights()[2:])
        module = glt.BatchNormalization(axis=1, momentum=MOMENTUM, synchronized=True)
        module.eval()
        module(torch.zeros(2, 3, 5, dtype=torch.float64))
        module.set_weights(weights)
        module.train()
        xt = torch.from_numpy(np.ascontiguousarray(part)).requires_grad_(True)
        y = module(xt)
        y.backward(torch.from_numpy(np.ascontiguousarray(dy_all[:0] if rank == 0 else dy_all)))
        results["torch_empty_y"], results["torch_empty_dx"] = y.detach().numpy(), xt.grad.numpy()
        results["torch_empty_moving"] = np.stack(module.get_weights()[2:])
        # the kernel path (the CuPy code path, here run by the simulator), a process group passed in
        group = dist.new_group([0, 1])
        with gl.simulate():
            layer = _built_numpy(weights, synchronized=True, process_group=group)
            results["sim_y"] = layer(x, training=True)
            results["sim_dx"] = layer.backward(dy)
        results["sim_dgamma"], results["sim_dbeta"] = layer.grads["gamma"], layer.grads["beta"]
        results["sim_moving"] = np.stack(layer.get_weights()[2:])
        # gpulayers.torch.BatchNormalization, the default group
        module = glt.BatchNormalization(axis=1, momentum=MOMENTUM, synchronized=True)
        module.eval()
        module(torch.zeros(2, 3, 5, dtype=torch.float64))
        module.set_weights(weights)
        module.train()
        xt = torch.from_numpy(x).requires_grad_(True)
        y = module(xt)
        y.backward(torch.from_numpy(dy))
        results["torch_y"], results["torch_dx"] = y.detach().numpy(), xt.grad.numpy()
        results["torch_dgamma"], results["torch_dbeta"] = module.gamma.grad.numpy(), module.beta.grad.numpy()
        results["torch_moving"] = np.stack(module.get_weights()[2:])
        np.savez(Path(out_dir) / f"rank{rank}.npz", **results)
    finally:
        dist.destroy_process_group()


def _spawn(world, out_dir):
    context = mp.spawn(_worker, args=(world, str(out_dir)), nprocs=world, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(f"the distributed workers did not finish within {TIMEOUT_S} s")
    finally:
        for p in context.processes:
            if p.is_alive():
                p.terminate()


def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    _spawn(2, tmp_path)
    x, dy, weights = _data()
    single = _built_numpy(weights)  # one process, the whole batch
    y = single(x, training=True)
    dx = single.backward(dy)
    moving = np.stack(single.get_weights()[2:])
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    for r in ranks:
        assert int(r["forward_all_reduces"]) == 1 and int(r["backward_all_reduces"]) == 1
    for prefix in ("np", "sim", "torch"):
        got_y = np.concatenate([r[f"{prefix}_y"] for r in ranks])
        got_dx = np.concatenate([r[f"{prefix}_dx"] for r in ranks])
        # y and dx subtract nearly equal large numbers (x - mean, offsets up to 3e4): normwise
        for what, got, expected, normwise in (("y", got_y, y, True), ("dx", got_dx, dx, True),
                                              ("dgamma", sum(r[f"{prefix}_dgamma"] for r in ranks),
                                               single.grads["gamma"], False),
                                              ("dbeta", sum(r[f"{prefix}_dbeta"] for r in ranks),
                                               single.grads["beta"], False)):
            ok, _, _, message = testing.compare(got, expected, np.float64, normwise=normwise)
            assert ok, f"{prefix} {what}: {message}"
        for r in ranks:  # every process ends with the statistics of the whole batch
            ok, _, _, message = testing.compare(r[f"{prefix}_moving"], moving, np.float64)
            assert ok, f"{prefix} moving statistics: {message}"
    for prefix in ("empty", "torch_empty"):
        assert ranks[0][f"{prefix}_y"].shape == (0, 3, 5) and ranks[0][f"{prefix}_dx"].shape == (0, 3, 5)
        for what, got, expected in (("y", ranks[1][f"{prefix}_y"], y), ("dx", ranks[1][f"{prefix}_dx"], dx),
                                    ("moving (rank 0)", ranks[0][f"{prefix}_moving"], moving),
                                    ("moving (rank 1)", ranks[1][f"{prefix}_moving"], moving)):
            ok, _, _, message = testing.compare(got, expected, np.float64, normwise=True)
            assert ok, f"{prefix}: empty batch on rank 0, {what}: {message}"


def test_without_a_process_group_one_process_and_one_warning(monkeypatch):
    assert not dist.is_initialized()
    monkeypatch.setattr(distributed, "_warned", False)
    x, dy, weights = _data()
    synced, plain = _built_numpy(weights, synchronized=True), _built_numpy(weights)
    with pytest.warns(RuntimeWarning, match="no initialised torch.distributed process group"):
        y = synced(x, training=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once only
        y2 = synced(x, training=True)
        dx = synced.backward(dy)
    np.testing.assert_allclose(y, plain(x, training=True), rtol=1e-12, atol=1e-9)
    plain(x, training=True)
    np.testing.assert_allclose(y2, plain(x, training=True), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(dx, plain.backward(dy), rtol=1e-9, atol=1e-9)


def test_torch_module_without_a_process_group_warns_once(monkeypatch):
    import gpulayers.torch as glt

    monkeypatch.setattr(distributed, "_warned", False)
    x = torch.from_numpy(_data()[0])
    synced, plain = glt.BatchNormalization(axis=1, synchronized=True), glt.BatchNormalization(axis=1)
    with pytest.warns(RuntimeWarning, match="no initialised torch.distributed process group"):
        y = synced(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        synced(x)
    torch.testing.assert_close(y, plain(x), rtol=1e-12, atol=1e-9)


def test_synchronized_argument_is_checked():
    with pytest.raises(TypeError, match=r"BatchNormalization: `synchronized` must be a bool. Received: synchronized=1"):
        gl.BatchNormalization(synchronized=1)


def test_ddp_example_runs_with_torchrun_on_two_cpu_processes():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    # --standalone: the launcher binds a free port itself (no race with a concurrent test run)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "examples" / "ddp_train.py"), "--steps", "3"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    # "done" is printed after a barrier that every process reaches once it has trained
    assert "step   2" in done.stdout and "done: 2 process(es) trained 3 steps" in done.stdout, \
        done.stdout + done.stderr[-3000:]
    if done.returncode != 0:
        # PyTorch 2.13's DDP over gloo sometimes aborts a process at exit, after training and
        # destroy_process_group ("terminate called without an active exception"); a plain
        # DDP(nn.Linear) script does the same. Any other failure fails the test.
        assert "terminate called without an active exception" in done.stderr, done.stderr[-3000:]
