"""The performance-v2 device script and its measurement script, run on the CPU (their plumbing, not their numbers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.no_cuda
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_device_script_refuses_without_cuda(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "device_perf_v2.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "no CUDA GPU" in done.stderr and "SMOKE=1" in done.stderr
    assert not (tmp_path / "out" / "perf").exists()


@pytest.mark.slow
def test_perf_script_runs_on_the_tiny_pair(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import perf_v2
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    code = perf_v2.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--batches", "1", "--repeats", "1",
                         "--warmup", "0", "--sdvar-gammas", "2", "--profile", "1:0"])
    assert code == 0
    report = json.loads((tmp_path / "perf_v2.json").read_text())
    names = [r["name"] for r in report["rows"]]
    assert names == ["eager", "target v1", "target v2", "sdvar g2 all-accepted v2"]
    for row in report["rows"]:
        assert row["whole_bound_ms"] > row["passes_bound_ms"] > 0
    assert {"v1", "v2"} <= set(report["pass_times"]) and report["decode"][0]["bound_ms"] > 0
    assert "| target v2 |" in (tmp_path / "perf_v2.md").read_text()
    with pytest.raises(SystemExit):
        perf_v2.parse_args(["--out", str(tmp_path), "--batches", "0"])
