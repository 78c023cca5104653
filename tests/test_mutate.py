"""scripts/mutate.py: its plants apply to this tree, and it tells a caught plant from a surviving one.

The full list takes tens of minutes (docs: the script's docstring; the last table is in the issue 20
report); here the machinery runs on a tiny repository of its own (caught, survived, error, baseline
failure) and the script itself on two real plants: issue 20's ``top1_match`` survivor, which its new
test catches, and a harmless docstring edit, which must survive.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "mutate.py"


@pytest.fixture(scope="module")
def mutate():
    spec = importlib.util.spec_from_file_location("sdvar_mutate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def test_every_plant_applies_to_this_tree(mutate):
    assert mutate.check_plants(mutate.PLANTS, REPO) == []
    names = {p.name for p in mutate.PLANTS}
    bugs = [p for p in mutate.PLANTS if not p.control]
    assert len(bugs) >= 40 and any(p.control for p in mutate.PLANTS)
    survivors = {"top1-threshold-0.9x", "shard-indices-unchecked", "images-bgr", "harness-float32-cache-10x",
                 "graphed-decode-shift"}
    assert survivors <= names  # issue 20's five
    layers = {p.path.split("/")[1] if p.path.startswith("sdvar_lib/") else p.path.split("/")[0] for p in bugs}
    assert {"sdvar", "models", "samples", "eval", "util", "fast", "test_framework"} <= layers


def _fake_repo(root: Path, test_body: str = "assert add(2, 3) == 5") -> Path:
    root.mkdir()
    (root / "mod.py").write_text("def add(a, b):\n    return a + b\n")
    (root / "test_mod.py").write_text(f"from mod import add\n\n\ndef test_add():\n    {test_body}\n")
    return root


def test_the_machinery_on_a_tiny_repository(mutate, tmp_path):
    root = _fake_repo(tmp_path / "repo")
    plants = [
        mutate.Plant("bug", "mod.py", "return a + b", "return a - b", ("test_mod.py",), "subtracts"),
        mutate.Plant("harmless", "mod.py", "def add(a, b):", "def add(a, b):  # a comment", ("test_mod.py",),
                     "a comment", control=True),
        mutate.Plant("unseen", "mod.py", "return a + b", "return b + a", ("test_mod.py",), "commutes"),
        mutate.Plant("no-tests", "mod.py", "return a + b", "return a * b", ("test_mod.py::test_nothing",), "none run"),
    ]
    lines = []
    outcomes, failures = mutate.run_plants(plants, root, sys.executable, jobs=2, timeout=120, baseline=False,
                                           log=lines.append)
    assert failures == []
    got = {o.name: o for o in outcomes}
    assert (got["bug"].result, got["bug"].failed) == ("caught", ["test_mod.py::test_add"]) and got["bug"].ok
    assert got["harmless"].result == "survived" and got["harmless"].ok
    assert got["unseen"].result == "survived" and not got["unseen"].ok  # a bug no test sees: reported
    assert got["no-tests"].result == "error" and not got["no-tests"].ok
    assert (root / "mod.py").read_text() == "def add(a, b):\n    return a + b\n"  # the tree itself is never edited
    assert len(lines) == 4 and "unseen" in mutate.summary(outcomes) and "NOT AS EXPECTED" in mutate.summary(outcomes)
    table = mutate.markdown(outcomes, {p.name: p for p in plants})
    assert "| `bug` |" in table and "`test_mod.py::test_add`" in table and "**survived**" in table
    broken = _fake_repo(tmp_path / "broken", "assert add(2, 3) == 6")  # fails without any plant
    outcomes, failures = mutate.run_plants(plants[:1], broken, sys.executable, jobs=1, timeout=120, baseline=True,
                                           log=lines.append)
    assert outcomes == [] and failures == ["test_mod.py::test_add"]
    assert mutate.check_plants([mutate.Plant("gone", "mod.py", "return a / b", "x", ("test_mod.py",), "")], root) == [
        "gone: its old text occurs 0 times in mod.py (needs exactly 1)"]


def test_the_script_reports_a_caught_plant_and_a_surviving_control(tmp_path):
    watched = [REPO / "sdvar_lib" / "sdvar" / "acceptance.py", REPO / "sdvar_lib" / "models" / "sampling.py"]
    before = [p.read_bytes() for p in watched]
    res = subprocess.run([sys.executable, str(SCRIPT), "--only", "top1-threshold-0.9x", "--only", "control-docstring",
                          "--no-baseline", "--jobs", "2", "--json", str(tmp_path / "out.json"), "--markdown",
                          str(tmp_path / "out.md")], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = {r["name"]: r for r in json.loads((tmp_path / "out.json").read_text())}
    assert rows["top1-threshold-0.9x"]["result"] == "caught"
    assert rows["top1-threshold-0.9x"]["failed"][0].startswith("tests/test_acceptance_top1.py::")
    assert rows["control-docstring"]["result"] == "survived" and rows["control-docstring"]["failed"] == []
    assert "1 of 1 bugs caught; controls surviving: 1 of 1" in res.stdout
    assert "| `top1-threshold-0.9x` |" in (tmp_path / "out.md").read_text()
    assert [p.read_bytes() for p in watched] == before


def test_list_and_bad_arguments():
    listed = subprocess.run([sys.executable, str(SCRIPT), "--list"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "shard-indices-unchecked" in listed.stdout and "control-docstring" in listed.stdout
    bad = subprocess.run([sys.executable, str(SCRIPT), "--only", "nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown plant(s) nope" in bad.stderr
