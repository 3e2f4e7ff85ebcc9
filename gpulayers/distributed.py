"""Batch statistics across processes, over ``torch.distributed`` (gloo on CPUs, NCCL on GPUs).

Used by ``BatchNormalization(synchronized=True)`` (both ``gpulayers.BatchNormalization`` and
``gpulayers.torch.BatchNormalization``), the way ``torch.nn.SyncBatchNorm`` works:

- forward: every process contributes (count, mean, M2 = count * biased variance) per
  channel; ONE all-reduce gathers them (each process writes its own row of a zero
  (world, 3, C) float64 buffer, so the sum is exact), and every process merges the rows with
  Chan et al.'s formula (M2 = sum of M2_r + n_r (mean_r - mean)^2) -- exact for uneven batch
  sizes, no sum of squares;
- backward: ONE all-reduce (sum) of the two per-channel gradient sums.

Without torch, or without an initialised default process group, the statistics stay local
(one process) and a warning says so once. Arrays are NumPy or CuPy; they reach
torch.distributed without a copy where the backend allows (NumPy through
``torch.from_numpy``, CuPy through DLPack); NCCL needs CUDA tensors, so NumPy arrays are
moved to the current CUDA device for it.
"""
from __future__ import annotations

import warnings

import numpy as np

from . import kernels

_warned = False
_groups: dict[int, object] = {}  # key -> process group passed in by a user (0: the default group)


def _dist():
    """torch.distributed when a process group is initialised, else None (warning once)."""
    global _warned
    try:
        import torch.distributed as dist
    except Exception:  # torch not installed
        dist = None
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    if not _warned:
        _warned = True
        warnings.warn("gpulayers: BatchNormalization(synchronized=True) found no initialised "
                      "torch.distributed process group; its batch statistics are this process's own "
                      "(one process).", RuntimeWarning, stacklevel=3)
    return None


def group_key(group) -> int:
    """A small int naming ``group`` (None: the default group), for ops that take only ints."""
    if group is None:
        return 0
    key = id(group)
    _groups[key] = group
    return key


def group_from_key(key: int):
    return None if key == 0 else _groups[key]


def _as_torch(a):
    import torch

    if kernels.is_gpu_array(a):
        return torch.from_dlpack(a)
    return torch.from_numpy(np.ascontiguousarray(a))


def _back(t, like):
    """Tensor t as an array of like's module (and device)."""
    if kernels.is_gpu_array(like):
        cp = kernels.cupy_module()
        return cp.from_dlpack(t)
    return t.cpu().numpy()


def _all_reduce_sum(buffer, group):
    """All-reduce (sum) a float64 array; returns the summed array of the same module."""
    import torch

    dist = _dist()
    t = _as_torch(buffer)
    moved = dist.get_backend(group) == "nccl" and t.device.type != "cuda"
    if moved:
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return _back(t, buffer)


def merge_moments(count, mean, var, group=None):
    """(total count, mean, biased variance) of every process's batch statistics.

    ``count``: this process's number of values per channel (an int); ``mean``, ``var``:
    this process's per-channel mean and biased variance (any shape, same on every process).
    Returns the merged statistics in mean's dtype and module, and the total count as a
    float64 array of shape (1,) on mean's device (no host synchronisation on a GPU).
    Without a process group: the inputs unchanged (count as such an array).
    """
    xp = kernels.array_module(mean)
    dist = _dist()
    if dist is None:
        return xp.full((1,), float(count), np.float64), mean, var
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    shape = mean.shape
    rows = xp.zeros((world, 3, mean.size), np.float64)
    rows[rank, 0] = count
    rows[rank, 1] = mean.reshape(-1)
    rows[rank, 2] = var.reshape(-1).astype(np.float64) * count  # M2
    rows = _all_reduce_sum(rows, group)
    counts, means, m2s = rows[:, 0], rows[:, 1], rows[:, 2]
    # Chan et al.'s merge of k groups: deviations from the merged mean, never a sum of squares
    n = counts.sum(axis=0)
    safe = xp.where(n > 0, n, 1)
    m = (counts * means).sum(axis=0) / safe
    m2 = (m2s + counts * (means - m) ** 2).sum(axis=0)
    var_all = m2 / safe
    return n[:1].copy(), m.reshape(shape).astype(mean.dtype), var_all.reshape(shape).astype(var.dtype)


def sum_gradients(sum_dy, sum_dy_xhat, group=None):
    """(sum over processes of sum_dy, of sum_dy_xhat): one all-reduce; unchanged without a group."""
    dist = _dist()
    if dist is None:
        return sum_dy, sum_dy_xhat
    xp = kernels.array_module(sum_dy)
    both = xp.stack([sum_dy.reshape(-1), sum_dy_xhat.reshape(-1)]).astype(np.float64)
    both = _all_reduce_sum(both, group)
    return (both[0].reshape(sum_dy.shape).astype(sum_dy.dtype),
            both[1].reshape(sum_dy_xhat.shape).astype(sum_dy_xhat.dtype))
