"""World size 1 and 2 (torchrun, gloo) on the bundled pair give the same set, byte for byte.

Both runs are made by scripts/device_sample_scaling.py in its CPU mode -- the same script the lead
runs on two GPUs -- so this test also guards that script against typos.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "device_sample_scaling.py"


@pytest.fixture(scope="module")
def scaling(tmp_path_factory):
    work = tmp_path_factory.mktemp("scaling")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, str(SCRIPT), "--models", "bundled", "--device", "cpu", "--methods", "exact_g2",
           "--classes", "0-4", "--per-class", "1", "--batch-size", "2", "--gpus", "2", "--work", str(work / "sets"),
           "--report", str(work / "report"), "--timeout", "180"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, check=False)
    return res, work


def test_script_runs_and_reports(scaling):
    res, work = scaling
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((work / "report" / "scaling.json").read_text())
    assert report["ok"]
    (row,) = report["rows"]
    assert row["method"] == "exact_g2" and row["same_set"]
    assert row["w1"]["images"] == row["w2"]["images"] == 5 and len(row["w2"]["per_rank"]) == 2
    assert row["scaling"] > 0 and set(row["extrapolated_50k_s"]) == {"1 GPU", "8 GPUs"}
    assert "| exact_g2 |" in (work / "report" / "scaling.md").read_text()


def test_world_size_two_gives_the_same_set_byte_for_byte(scaling):
    res, work = scaling
    one, two = work / "sets" / "exact_g2-w1", work / "sets" / "exact_g2-w2"
    assert (one / "samples.npz").read_bytes() == (two / "samples.npz").read_bytes()
    with np.load(two / "samples.npz") as z:
        assert z["arr_0"].shape == (5, 16, 16, 3) and sorted(z["arr_1"].tolist()) == [0, 1, 2, 3, 4]
    s1, s2 = (json.loads((d / "stats.json").read_text()) for d in (one, two))
    assert (s1["session"]["world_size"], s2["session"]["world_size"], s2["session"]["backend"]) == (1, 2, "gloo")
    assert [r["batches"] for r in s2["session"]["per_rank"]] == [2, 1]  # batches 0, 2 on rank 0 and 1 on rank 1
    d1, d2 = s1["decoder_stats"], s2["decoder_stats"]
    for key in ("target_passes", "draft_passes", "accepted_tokens_per_stage", "accepted_stages_per_stage"):
        assert d1[key] == d2[key], key
