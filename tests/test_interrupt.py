"""The main job interrupted anywhere leaves its output folder as the old complete set or the new one.

A complete set is ``comparison.png``, ``stats.md`` and ``stats.json`` of one run: the run id in
``stats.json`` is the one in ``stats.md`` and in the PNG's metadata. Two ways of stopping it:

- in-process, a ``KeyboardInterrupt`` (what SIGINT raises) injected at every file operation the
  writing of the set makes, one run per operation;
- real SIGINTs sent to a ``python -m sdvar_lib`` process at several moments of its run;
- a process killed outright (SIGKILL) while it writes the set and between its two renames: the next
  run takes the dead run's lock over, removes its temporaries and puts an old set that was moved
  aside back before it replaces it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from sdvar_lib.demo.cli import main

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--methods", "target", "exact_g2", "--labels", "1", "2", "--threads", "1"]
FILES = ("comparison.png", "stats.md", "stats.json")


def run_id_of(out: Path) -> str | None:
    """The run id of a complete set in ``out``; ``None`` if ``out`` does not exist; fails if the set is mixed."""
    if not out.exists():
        return None
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == sorted(FILES), f"incomplete set: {names}"
    stats = json.loads((out / "stats.json").read_text())
    md_ids = re.findall(r"run (\S+)", (out / "stats.md").read_text())
    png_id = Image.open(out / "comparison.png").info.get("Description", "")
    assert md_ids and md_ids[0] == stats["run_id"], "stats.md and stats.json describe different runs"
    assert png_id.endswith(stats["run_id"]), "the figure and the statistics come from different runs"
    return stats["run_id"]


def test_an_interrupt_at_any_file_operation_keeps_a_complete_set(tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    assert main(["--out", str(out), *ARGS]) == 0
    first = run_id_of(out)
    assert first is not None
    capsys.readouterr()

    class Injected(KeyboardInterrupt):
        pass

    real_replace = os.replace
    counted: list[str] = []

    def count_replace(src, dst):
        counted.append("replace")
        return real_replace(src, dst)

    # count the renames of one more run
    monkeypatch.setattr(os, "replace", count_replace)
    assert main(["--out", str(out), *ARGS]) == 0
    monkeypatch.setattr(os, "replace", real_replace)
    current = run_id_of(out)
    assert current != first
    capsys.readouterr()
    n_replace = counted.count("replace")
    assert n_replace >= 2  # the old folder aside, the new one into place

    def interrupt_at(k: int):
        calls = {"n": 0}

        def fn(src, dst):
            calls["n"] += 1
            if calls["n"] == k:
                raise Injected
            return real_replace(src, dst)

        return fn

    seen = {current}
    for k in range(1, n_replace + 1):
        monkeypatch.setattr(os, "replace", interrupt_at(k))
        with pytest.raises(KeyboardInterrupt):
            main(["--out", str(out), *ARGS])
        monkeypatch.setattr(os, "replace", real_replace)
        after = run_id_of(out)
        assert after == current, f"an interrupt at rename {k} left run {after} instead of the complete {current}"
    # an interrupt while the figure is written (inside the temporary folder)
    import matplotlib.figure

    def failing_savefig(self, *args, **kwargs):
        raise Injected

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", failing_savefig)
    with pytest.raises(KeyboardInterrupt):
        main(["--out", str(out), *ARGS])
    monkeypatch.undo()
    assert run_id_of(out) == current and current in seen
    assert not [p for p in tmp_path.iterdir() if p.name != "demo"]  # no temporaries left beside it


def test_sigint_at_any_moment_keeps_the_old_or_the_new_set(tmp_path):
    """SIGINT after 0.5 s (imports), 2-6 s (models, generation) and later (writing or done): each time the
    folder holds one complete set, the previous one unless the run finished first."""
    out = tmp_path / "demo"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "sdvar_lib", "--out", str(out), *ARGS]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    previous = run_id_of(out)
    kept_by_interrupted = 0
    for delay_s in (0.5, 2.0, 3.5, 5.0, 6.5, 8.0, 10.0):
        # SIGINT at its default in the child: a suite started in the background (`cmd &` without job control) runs
        # with SIGINT ignored, which children inherit, and Python then never raises KeyboardInterrupt
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay_s)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=300)
        now = run_id_of(out)  # fails on a mixed or incomplete set
        assert now is not None, f"a run interrupted after {delay_s} s removed the output folder"
        if proc.returncode == 0:
            assert now != previous  # it finished before the signal: the new complete set
        elif now == previous:
            kept_by_interrupted += 1
        # else: the signal came after the new set was renamed into place (while the run printed its
        # summary or shut down): the folder holds the new complete set, which the contract allows
        previous = now
    assert kept_by_interrupted, "no run was interrupted before it committed: the delays are too long for this machine"
    assert not [p for p in tmp_path.iterdir() if p.name != "demo"]


# ---- killed outright (SIGKILL): the next run cleans up after it --------------------------------
KILL_AT = {
    # SIGKILL while the figure is written into the temporary folder: a .demo.tmp-* folder and the lock file stay
    "writing": "import matplotlib.figure\n"
               "def savefig(self, *a, **k):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
               "matplotlib.figure.Figure.savefig = savefig\n",
    # SIGKILL between the two renames: the old set sits aside as .demo.old-*, nothing at demo, the new one as .tmp-*
    "between-renames": "real = os.replace\n"
                       "def replace(src, dst):\n    real(src, dst)\n"
                       "    if '.old-' in os.fspath(dst):\n        os.kill(os.getpid(), signal.SIGKILL)\n"
                       "os.replace = replace\n",
}


@pytest.mark.parametrize("moment", KILL_AT, ids=KILL_AT)
def test_the_next_run_cleans_up_after_a_killed_one(tmp_path, moment):
    out = tmp_path / "demo"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "sdvar_lib", "--out", str(out), *ARGS]
    assert subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, timeout=300).returncode == 0
    first = run_id_of(out)
    killed = ("import os, signal, sys\n" + KILL_AT[moment] +
              f"from sdvar_lib.demo.cli import main\nmain({['--out', str(out), *ARGS]!r})\n")
    done = subprocess.run([sys.executable, "-c", killed], env=env, cwd=tmp_path, capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir())
    assert ".demo.lock" in left and any(".demo.tmp-" in n for n in left)
    if moment == "between-renames":
        assert "demo" not in left and any(".demo.old-" in n for n in left)
    else:
        assert run_id_of(out) == first
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "took over the lock" in done.stderr and "interrupted run" in done.stderr
    if moment == "between-renames":
        assert "put back" in done.stderr
    assert run_id_of(out) not in (None, first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temporary, no old set, no lock
