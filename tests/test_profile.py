"""`python -m gpulayers profile --sim`: records, JSON and targets, on a few cases."""
import json

import pytest

from gpulayers import __main__ as cli
from gpulayers import profile

KEYS = {"case", "layer", "kernel", "launches", "dram_bytes", "minimal_bytes", "load_sectors", "load_ideal_sectors",
        "store_sectors", "store_ideal_sectors", "shared_wavefronts", "shared_ideal_wavefronts", "hazards"}


def test_profile_writes_one_record_per_case_and_kernel(tmp_path, capsys):
    path = tmp_path / "profile.json"
    assert cli.main(["profile", "--sim", "--filter", "GlobalMaxPooling2D", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    records = json.loads(path.read_text())["cases"]
    # 2 layouts x 2 dtypes, forward and backward, one kernel each
    assert len(records) == 8 and all(KEYS <= set(r) for r in records)
    assert {r["kernel"].split("<")[0] for r in records} == {"global_pool_forward_cols", "global_pool_forward_rows",
                                                             "global_max_backward"}
    for r in records:
        x_bytes = 2 * 28 * 28 * 64 * (4 if r["dtype"] == "float32" else 2)
        assert r["minimal_bytes"] == x_bytes + (2 * 64 * (4 if r["dtype"] == "float32" else 2)) + 4 * 2 * 64
        # each input byte read (or each gradient byte written) once, in whole sectors
        assert x_bytes <= r["dram_bytes"] <= 1.10 * r["minimal_bytes"] and r["hazards"] == 0
        assert r["misses"] == [] and r["gpu_warps"] >= r["gpu_warps_needed"]
    assert "GlobalMaxPooling2D last float32" in out and "8 kernel records, 0 miss a target, 0 hazards" in out


def test_verdict_names_each_missed_target():
    row = dict(family="pooling", call_dram_bytes=130, minimal_bytes=100, load_sectors=8, load_ideal_sectors=4,
               store_sectors=4, store_ideal_sectors=4, shared_wavefronts=3, shared_ideal_wavefronts=2, hazards=1,
               gpu_warps=8, gpu_warps_needed=100)
    assert profile.verdict(row) == ["DRAM x1.30", "load sectors x2.00", "bank conflicts x1.50", "1 hazards",
                                    "8 warps < 100"]


def test_profile_needs_sim_and_reports_an_unknown_filter(capsys):
    with pytest.raises(SystemExit):
        cli.main(["profile"])
    assert profile.run("no-such-layer") == 1
    assert "no case matches" in capsys.readouterr().out
