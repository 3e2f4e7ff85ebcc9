"""How fast the CPU kernel simulator runs kernels (issue target: a million threads without
barriers in under a second, with a few barriers per thread in under five).

    python bench/simulator_speed.py

Times are printed, never asserted in tests.
"""
import time

import numpy as np

from gpulayers import kernels
from gpulayers.layers import pooling


def timed(fn, repeat=3):
    fn()  # compile / warm the cache
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(repeat=3):
    x = np.random.default_rng(0).standard_normal((1, 1024, 1024, 1)).astype(np.float32)
    y = np.empty_like(x)
    geom = [np.int32(v) for v in (1, 1, 1, 1024, 1024, 1, 1024, 1024, 1, 1, 1, 1, 1, 1, 0, 0, 0)]
    no_barrier = timed(lambda: pooling.AVG_POOL_FORWARD.launch(np.float32, 4096, 256, (x, y, *geom),
                                                               channels_last=True), repeat)
    rows = x.reshape(4096, 256)
    out = np.empty(4096, np.float32)
    unused = np.empty(1, np.int32)  # positions of maxima: average pooling writes none
    # block_reduce: two barriers plus five warp shuffles per thread, then a third barrier
    barriers = timed(lambda: pooling.GLOBAL_FORWARD_ROWS.launch(
        np.float32, 4096, 256, (rows, out, unused, np.int64(4096), np.int64(256)), is_max=False), repeat)
    # the launches did what they should: a 1 x 1 average is a copy, and the row means
    assert np.array_equal(y, x), "avg_pool_forward with a 1 x 1 window did not copy its input"
    assert np.allclose(out, rows.mean(axis=1), rtol=1e-5, atol=1e-6), "global_pool_forward_rows: wrong means"
    print(f"{'case':52} {'threads':>9} {'seconds':>8}")
    print(f"{'avg_pool_forward (no barriers)':52} {1 << 20:9d} {no_barrier:8.3f}")
    print(f"{'global_pool_forward_rows (3 barriers, 10 shuffles)':52} {1 << 20:9d} {barriers:8.3f}")


if __name__ == "__main__":
    with kernels.simulate():
        main()
