"""scripts/device_notebook_memory.py (the GPU measurement of the notebooks' memory and time), smoke-tested on the CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "device_notebook_memory.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("device_notebook_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_notebook_runs_with_the_swapped_pair_and_eager_runs_are_measured_once(script, tmp_path, capsys):
    out = tmp_path / "memory.json"
    argv = ["--models", "tiny-random", "--device", "cpu", "--notebooks", "00", "--dtypes", "float16", "bfloat16",
            "--out", str(out)]
    assert script.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1  # eager float32 on the CPU: the dtype does not apply
    (row,) = rows
    assert row["status"] == "ok" and row["notebook"] == "00_setup.ipynb"
    assert row["fast_path"] is False and row["var_dtype"] == "float32" and row["seconds"] > 0
    assert row["setup"].startswith("device cpu") and "tiny random pair" in row["models"]  # load_pair was swapped
    assert row["peak_reserved_gib"] is None and row["fits_15gb"] is None
    assert "| 00_setup.ipynb | float32 | off |" in capsys.readouterr().out


def test_an_unknown_notebook_prefix_is_refused(script, capsys):
    with pytest.raises(SystemExit) as exc:
        script.main(["--notebooks", "07", "--device", "cpu"])
    assert exc.value.code == 2 and "'07' matches 0 notebooks" in capsys.readouterr().err
