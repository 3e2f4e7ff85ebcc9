"""The three demos: generated data, default runs beat their baselines, the PNG and the summary."""
import numpy as np
import pytest

from gpulayers import __main__ as cli
from gpulayers import demos


def test_generated_data_is_deterministic_and_labelled():
    a, la = demos.make_shapes(50, seed=3)
    b, lb = demos.make_shapes(50, seed=3)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert a.shape == (50, 16, 16, 1) and a.dtype == np.float32 and set(np.unique(la)) <= {0, 1, 2, 3}
    clean, labels = demos.make_shapes(400, seed=4, noise=0.0)
    area = (clean[..., 0] > 0).sum(axis=(1, 2))
    assert area[labels == 0].mean() > 2 * area[labels == 2].mean()  # disks fill more than plus signs
    x, y, last = demos.make_sir(30, seed=5)
    assert x.shape == (30, 20, 1) and y.shape == (30, 7) and np.array_equal(last, x[:, -1, 0])
    assert (x > 0).all() and x.max() < 10


@pytest.mark.parametrize("task", demos.TASKS)
def test_default_demo_beats_its_baseline(task, tmp_path):
    lines = []
    summary = demos.run(task, out_dir=tmp_path, verbose=0, print_fn=lines.append)
    if task == "images":
        assert summary["test_accuracy"] > 0.8  # chance is 0.25
    elif task == "autoencoder":
        assert summary["test_mse"] < 0.5 * summary["mean_image_mse"]
    else:
        assert summary["test_mse"] < 0.5 * summary["naive_last_value_mse"]
    history = summary["history"]["loss"]
    assert history[-1] < history[0]
    assert (tmp_path / f"{task}_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["text"] in (tmp_path / f"{task}_summary.txt").read_text()
    assert sum(line.startswith("epoch ") for line in lines) == summary["epochs"]


def test_cli_demo_and_errors(tmp_path, capsys):
    assert cli.main(["demo", "--task", "sequence", "--out", str(tmp_path)]) == 0
    assert "forecast MSE" in capsys.readouterr().out
    with pytest.raises(ValueError, match="demo: `epochs` must be a positive int. Received: epochs=0"):
        demos.run("sequence", epochs=0, out_dir=tmp_path)
    with pytest.raises(SystemExit):
        cli.main(["demo", "--task", "video"])
    if not demos.kernels.gpu_available():
        with pytest.raises(ValueError, match="demo: no GPU is available"):
            demos.run("sequence", device="gpu", out_dir=tmp_path)
