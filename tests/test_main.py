"""The main job (`python -m sdvar_lib`) on the bundled pair writes its figure and statistics."""

from __future__ import annotations

import json

from sdvar_lib.__main__ import main


def test_main_job_writes_figure_and_table(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--labels", "1", "7", "--seed", "3"]) == 0
    assert (out / "comparison.png").stat().st_size > 1000
    rows = json.loads((out / "stats.json").read_text())
    assert [r["method"] for r in rows] == ["target alone", "SDVAR exact, gamma 2"]
    target, sdvar = rows
    assert target["target_passes"] == 7 and target["draft_passes"] == 0
    assert 1 <= sdvar["target_passes"] <= 7 and sdvar["draft_passes"] >= 1
    assert all(a is None or 0 <= a <= 1 for a in sdvar["token_acceptance_per_stage"])
    assert sdvar["labels"] == [1, 7]
    table = (out / "stats.md").read_text()
    assert "| SDVAR exact, gamma 2 |" in table and "tiny digits" in table
    assert "target alone" in capsys.readouterr().out
