"""The performance device script on a machine without CUDA (its plumbing, not its numbers).

Its benchmark commands are parsed into :class:`~sdvar_lib.bench.BenchConfig` by
``tests/test_bench_components.py`` (what the former ``scripts/perf_v2.py`` measured is now part of the bench).
"""

from __future__ import annotations

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
    assert not (tmp_path / "out").exists()
