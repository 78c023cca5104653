"""Every command, every class of bad input: one line naming the argument, the right exit code, no file changed.

The table (``ROWS``) runs each command in this process through its ``main(argv)``, inside a
workspace holding a user's file, a user's folder, earlier outputs of the commands (some with files
their run did not write, one edited since), a folder with a stray marker of an older version, sample
sets, a bench report and an image beside it. Each row names the command, its argv, the expected exit
code (2: a mistake in the command line, 1: a failure while running) and strings the one error line
must hold (the argument, and what is wrong); the whole workspace is snapshot before and after, and
must not change. ``REQUIRED`` says which classes of argument each command must have rows for.

Below the table: OS failures (disk full, permission denied) injected where the output is written, a
second run on an output a first run holds, and a few real processes proving that no traceback
reaches stderr.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from sdvar_lib.bench.cli import main as bench_main
from sdvar_lib.bench.cli import plot_main
from sdvar_lib.demo.cli import main as demo_main
from sdvar_lib.eval.cli import evaluate_main, fid_main
from sdvar_lib.models.checkpoints import BUNDLED_DIR
from sdvar_lib.samples.cli import main as sample_main
from sdvar_lib.tiny.cli import main as tiny_main
from sdvar_lib.util.atomic import atomic_folder
from tests.test_atomic import held_by_another_thread

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()

COMMANDS: dict[str, tuple[Callable[..., int], str]] = {
    "main": (demo_main, "python -m sdvar_lib"),
    "sample": (sample_main, "python -m sdvar_lib.sample"),
    "evaluate": (evaluate_main, "python -m sdvar_lib.evaluate"),
    "fid": (fid_main, "python -m sdvar_lib.fid"),
    "train_tiny": (tiny_main, "python -m sdvar_lib.train_tiny"),
    "bench": (bench_main, "python -m sdvar_lib.bench"),
    "bench_plot": (plot_main, "python -m sdvar_lib.bench_plot"),
}
OWNERS = {"demo": "python -m sdvar_lib", "eval": "python -m sdvar_lib.evaluate", "tiny": "python -m sdvar_lib.train_tiny",
          "bench": "python -m sdvar_lib.bench"}


# ---- the workspace ------------------------------------------------------------------------------
def _owned(path: Path, owner: str, **files: str) -> Path:
    with atomic_folder(path, owner) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)
    return path


def build_workspace(ws: Path) -> Path:
    (ws / "afile").write_text("a user's file")
    (ws / "user").mkdir()
    (ws / "user" / "notes.txt").write_text("a user's notes")
    _owned(ws / "demo_out", OWNERS["demo"], **{"stats.md": "run 1"})
    _owned(ws / "eval_out", OWNERS["eval"], **{"evaluation.md": "run 1"})
    _owned(ws / "demo_notes", OWNERS["demo"], **{"stats.md": "run 1"})
    (ws / "demo_notes" / "notes.txt").write_text("written since")
    _owned(ws / "demo_edited", OWNERS["demo"], **{"stats.md": "run 1"})
    (ws / "demo_edited" / "stats.md").write_text("run 1, annotated")
    _owned(ws / "eval_notes", OWNERS["eval"], **{"evaluation.md": "run 1"})
    (ws / "eval_notes" / "analysis").mkdir()
    (ws / "eval_notes" / "analysis" / "nb.ipynb").write_text("{}")
    _owned(ws / "tiny_notes", OWNERS["tiny"], **{"config.json": "{}"})
    (ws / "tiny_notes" / "notes.txt").write_text("written since")
    _owned(ws / "bench_out", OWNERS["bench"], **{"bench.json": "{}", "bench.md": "run 1"})
    _owned(ws / "bench_notes", OWNERS["bench"], **{"bench.json": "{}", "bench.md": "run 1"})
    (ws / "bench_notes" / "latency.png").write_bytes(b"a plot of run 1")
    (ws / "legacy").mkdir()
    (ws / "legacy" / ".sdvar-output").write_text("written by python -m sdvar_lib\n")
    (ws / "legacy" / "comparison.png").write_text("an old figure")
    (ws / "holder").mkdir()
    shutil.copytree(BUNDLED_DIR, ws / "holder" / "bundle")
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    np.savez(ws / "set.npz", arr_0=images, arr_1=np.arange(6) % 10)
    np.savez(ws / "noarr.npz", images=images)
    (ws / "notnpz.npz").write_text("not an archive")
    shutil.copy(REPO / "docs" / "bench" / "h100_d16_d30.json", ws / "bench.json")
    (ws / "latency.png").write_bytes(b"an earlier plot")
    (ws / "notjson.json").write_text("{ not json")
    (ws / "norows.json").write_text("[]")
    return ws


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry below ``root``: kind, bytes of files, link targets."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_file():
            out[rel] = ("file", p.read_bytes())
        else:
            out[rel] = ("dir",)
    return out


@pytest.fixture
def ws(tmp_path, monkeypatch):
    (tmp_path / "ws").mkdir()
    root = build_workspace(tmp_path / "ws")
    monkeypatch.chdir(root)  # argv paths are relative to the workspace; "." is the workspace
    return root


def run(command: str, argv: list[str], capsys) -> tuple[int, str]:
    """``(exit code, the one error line)``; fails unless stderr holds exactly one error line and no traceback."""
    main, prog = COMMANDS[command]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert errors[0].startswith(f"{prog}: error: "), errors[0]
    return code, errors[0]


# ---- the table ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    command: str
    kind: str
    """number (out of range, NaN, inf), type (not a number, ...), path-in, path-out, device, model, method, choice."""
    argv: tuple[str, ...]
    code: int
    names: tuple[str, ...]
    """Every string the error line must hold: the argument, and what is wrong or allowed."""

    @property
    def id(self) -> str:
        return f"{self.command}:{self.kind}:{' '.join(self.argv)}"


def demo(*extra: str) -> tuple[str, ...]:
    return ("--out", "new", "--methods", "target", "--labels", "1", *extra)


def sample(*extra: str) -> tuple[str, ...]:
    return ("--method", "target", "--out", "new", "--per-class", "1", "--classes", "0-1", "--batch-size", "2",
            "--no-progress", *extra)


def evaluate(*extra: str) -> tuple[str, ...]:
    return ("--out", "new", "--samples", "2", "--seeds", "0", "--methods", "target", *extra)


def fid(*extra: str) -> tuple[str, ...]:
    return ("--samples", "set.npz", "--reference", "set.npz", "--extractor", "digits", *extra)


def tiny(*extra: str) -> tuple[str, ...]:
    return ("--quick", "--no-progress", "--out", "new", *extra)


def bench(*extra: str) -> tuple[str, ...]:
    return ("--out", "new", *extra)


NO_CUDA_DEVICE = ("--device", "cuda")

ROWS = [
    # python -m sdvar_lib
    Row("main", "number", demo("--cfg", "nan"), 2, ("--cfg", "finite")),
    Row("main", "number", demo("--cfg", "inf"), 2, ("--cfg", "finite")),
    Row("main", "number", demo("--cfg", "-1"), 2, ("--cfg", ">= 0")),
    Row("main", "number", demo("--cfg", "1e300"), 2, ("--cfg", "at most 1e+06", "1e+300")),
    Row("main", "number", demo("--top-p", "1.5"), 2, ("top_p", "[0, 1]")),
    Row("main", "number", demo("--top-p", "nan"), 2, ("top_p",)),
    Row("main", "number", demo("--top-k", "-1"), 2, ("top_k",)),
    Row("main", "number", demo("--top-k", "300"), 2, ("top_k", "256")),
    Row("main", "number", demo("--seed", "-1"), 2, ("--seed",)),
    Row("main", "number", demo("--seed", str(2**63)), 2, ("--seed", "2**63")),
    Row("main", "number", demo("--labels", "12"), 2, ("--labels", "[0, 10)")),
    Row("main", "number", demo("--threads", "0"), 2, ("--threads",)),
    Row("main", "number", demo("--gamma", "0"), 2, ("--gamma", ">= 1")),
    Row("main", "type", demo("--cfg", "abc"), 2, ("--cfg", "invalid float")),
    Row("main", "type", demo("--top-k", "2.5"), 2, ("--top-k", "invalid int")),
    Row("main", "type", demo("--seed", "x"), 2, ("--seed",)),
    Row("main", "type", demo("--labels", "one"), 2, ("--labels",)),
    Row("main", "type", demo("--gamma", "fast"), 2, ("--gamma", "'adaptive'")),
    Row("main", "path-out", demo("--out", "afile"), 2, ("--out", "afile", "not a folder")),
    Row("main", "path-out", demo("--out", "afile/sub"), 2, ("--out", "afile", "cannot be written")),
    Row("main", "path-out", demo("--out", "."), 2, ("--out", "current folder")),
    Row("main", "path-out", demo("--out", "user"), 2, ("--out", "no workbench run wrote", "notes.txt")),
    Row("main", "path-out", demo("--out", "demo_notes"), 2, ("--out", "did not write", "notes.txt")),
    Row("main", "path-out", demo("--out", "demo_edited"), 2, ("--out", "stats.md changed")),
    Row("main", "path-out", demo("--out", "legacy"), 2, ("--out", "older version")),
    Row("main", "path-out", demo("--out", "eval_out"), 2, ("--out", "output of python -m sdvar_lib.evaluate")),
    Row("main", "device", demo("--device", "meta"), 2, ("--device", "meta")),
    Row("main", "device", demo("--device", "tpu"), 2, ("device 'tpu'", "cpu")),
    *([Row("main", "device", demo(*NO_CUDA_DEVICE), 2, ("device 'cuda'", "CUDA is not available"))] if not CUDA else []),
    Row("main", "model", demo("--models", "huge"), 2, ("--models", "bundled")),
    Row("main", "model", demo("--models", "official", "--draft-depth", "17"), 2, ("--draft-depth", "16, 20, 24, 30")),
    Row("main", "model", demo("--target-depth", "24"), 2, ("--target-depth", "--models official")),
    Row("main", "method", demo("--methods", "nope"), 2, ("unknown method 'nope'",)),
    Row("main", "method", demo("--methods", "test3_e9"), 2, ("entry_num 9", "7 stages")),
    Row("main", "method", demo("--methods", "target", "target"), 2, ("repeat",)),
    # python -m sdvar_lib.sample
    Row("sample", "number", sample("--per-class", "0"), 2, ("--per-class", ">= 1")),
    Row("sample", "number", sample("--batch-size", "0"), 2, ("--batch-size", ">= 1")),
    Row("sample", "number", sample("--cfg", "nan"), 2, ("--cfg", "finite")),
    Row("sample", "number", sample("--cfg", "inf"), 2, ("--cfg", "finite")),
    Row("sample", "number", sample("--cfg", "1e300"), 2, ("--cfg", "at most 1e+06", "1e+300")),
    Row("sample", "number", sample("--top-p", "1.5"), 2, ("top_p", "[0, 1]")),
    Row("sample", "number", sample("--top-k", "-1"), 2, ("--top-k", ">= 0")),
    Row("sample", "number", sample("--top-k", "900"), 2, ("--top-k", "[0, 256]")),
    Row("sample", "number", sample("--seed", "-1"), 2, ("seed",)),
    Row("sample", "number", sample("--seed", str(2**63)), 2, ("seed", "2**63")),
    Row("sample", "number", sample("--threads", "0"), 2, ("--threads",)),
    Row("sample", "number", sample("--classes", "0-10"), 2, ("--classes", "10 do not exist")),
    Row("sample", "type", sample("--per-class", "x"), 2, ("--per-class", "invalid int")),
    Row("sample", "type", sample("--batch-size", "1.5"), 2, ("--batch-size", "invalid int")),
    Row("sample", "type", sample("--classes", "x"), 2, ("--classes",)),
    Row("sample", "type", sample("--cfg", "abc"), 2, ("--cfg", "invalid float")),
    Row("sample", "path-out", sample("--out", "afile"), 2, ("--out", "afile", "not a folder")),
    Row("sample", "path-out", sample("--out", "afile/sub"), 2, ("--out", "afile", "cannot be written")),
    Row("sample", "path-out", sample("--out", "."), 2, ("--out", "not made by the sampler")),
    Row("sample", "path-out", sample("--out", "user"), 2, ("--out", "not made by the sampler")),
    Row("sample", "path-out", sample("--out", "demo_out"), 2, ("--out", "not made by the sampler")),
    Row("sample", "device", sample("--device", "meta"), 2, ("--device", "meta")),
    Row("sample", "device", sample("--device", "tpu"), 2, ("device 'tpu'", "cpu")),
    *([Row("sample", "device", sample(*NO_CUDA_DEVICE), 2, ("device 'cuda'", "CUDA is not available"))] if not CUDA else []),
    Row("sample", "model", sample("--models", "huge"), 2, ("--models", "bundled")),
    Row("sample", "model", sample("--models", "official", "--draft-depth", "17"), 2, ("--draft-depth", "16, 20, 24, 30")),
    Row("sample", "method", sample("--method", "nope"), 2, ("--method", "unknown method 'nope'")),
    Row("sample", "method", sample("--method", "code_e8"), 2, ("entry_num 8", "7 stages")),
    Row("sample", "method", ("--out", "new"), 2, ("required", "--method")),
    Row("sample", "choice", sample("--engine", "eager", "--dtype", "bfloat16"), 2, ("--dtype bfloat16", "--engine fast")),
    *([Row("sample", "choice", sample("--dtype", "float16"), 2, ("--dtype float16", "--engine fast"))] if not CUDA else []),
    Row("sample", "choice", sample("--label-order", "random"), 2, ("--label-order", "invalid choice")),
    # python -m sdvar_lib.evaluate
    Row("evaluate", "number", evaluate("--samples", "1"), 2, ("--samples", ">= 2")),
    Row("evaluate", "number", evaluate("--seeds", "-1"), 2, ("--seeds",)),
    Row("evaluate", "number", evaluate("--batch-size", "0"), 2, ("--batch-size", ">= 1")),
    Row("evaluate", "number", evaluate("--threads", "0"), 2, ("--threads", ">= 1")),
    Row("evaluate", "number", evaluate("--cfg", "nan"), 2, ("--cfg", "finite")),
    Row("evaluate", "number", evaluate("--cfg", "inf"), 2, ("--cfg", "finite")),
    Row("evaluate", "number", evaluate("--cfg", "1e300"), 2, ("--cfg", "at most 1e+06", "1e+300")),
    Row("evaluate", "number", evaluate("--top-p", "2"), 2, ("top_p", "[0, 1]")),
    Row("evaluate", "number", evaluate("--extra-batch-size", "-1"), 2, ("--extra-batch-size", ">= 0")),
    Row("evaluate", "type", evaluate("--samples", "x"), 2, ("--samples", "invalid int")),
    Row("evaluate", "type", evaluate("--seeds", "zero"), 2, ("--seeds", "invalid int")),
    Row("evaluate", "type", evaluate("--cfg", "abc"), 2, ("--cfg", "invalid float")),
    Row("evaluate", "path-in", evaluate("--bundle-dir", "nope"), 2, ("nope", "config.json is missing")),
    Row("evaluate", "path-in", evaluate("--bundle-dir", "afile"), 2, ("afile",)),
    Row("evaluate", "path-out", ("--samples", "2"), 2, ("--out", "required")),
    Row("evaluate", "path-out", evaluate("--out", "afile"), 2, ("--out", "afile", "not a folder")),
    Row("evaluate", "path-out", evaluate("--out", "afile/sub"), 2, ("--out", "afile", "cannot be written")),
    Row("evaluate", "path-out", evaluate("--out", "."), 2, ("--out", "current folder")),
    Row("evaluate", "path-out", evaluate("--out", "user"), 2, ("--out", "no workbench run wrote", "notes.txt")),
    Row("evaluate", "path-out", evaluate("--out", "eval_notes"), 2, ("--out", "did not write", "analysis/nb.ipynb")),
    Row("evaluate", "path-out", evaluate("--out", "demo_out"), 2, ("--out", "output of python -m sdvar_lib,")),
    Row("evaluate", "path-out", evaluate("--out", "legacy"), 2, ("--out", "older version")),
    Row("evaluate", "path-out", evaluate("--out", "holder", "--bundle-dir", "holder/bundle"), 2,
        ("--out", "holder/bundle", "an input")),
    Row("evaluate", "device", evaluate("--device", "meta"), 2, ("--device", "meta")),
    Row("evaluate", "device", evaluate("--device", "tpu"), 2, ("device 'tpu'", "cpu")),
    Row("evaluate", "method", evaluate("--methods", "nope"), 2, ("unknown method", "nope")),
    Row("evaluate", "method", evaluate("--methods", ""), 2, ("--methods", "comma-separated")),
    Row("evaluate", "method", evaluate("--extra-batch-size", "2", "--extra-methods", "exact_g9"), 2, ("exact_g9",)),
    # python -m sdvar_lib.fid
    Row("fid", "number", fid("--batch-size", "0"), 2, ("--batch-size", ">= 1")),
    Row("fid", "type", fid("--batch-size", "x"), 2, ("--batch-size", "invalid int")),
    Row("fid", "path-in", ("--samples", "missing.npz", "--reference", "set.npz"), 2, ("missing.npz", "does not exist")),
    Row("fid", "path-in", ("--samples", "notnpz.npz", "--reference", "set.npz"), 2, ("notnpz.npz", "not an .npz")),
    Row("fid", "path-in", ("--samples", "noarr.npz", "--reference", "set.npz"), 2, ("noarr.npz", "no arr_0")),
    Row("fid", "path-in", ("--samples", "set.npz", "--reference", "user"), 2, ("user", "does not exist")),
    Row("fid", "path-in", fid("--extractor-weights", "none.pth"), 2, ("--extractor-weights", "does not exist")),
    Row("fid", "path-out", fid("--out", "afile/x.json"), 2, ("--out", "afile", "not a folder")),
    Row("fid", "path-out", fid("--out", "afile"), 2, ("--out", "'afile'", "already exists", "--replace")),
    Row("fid", "path-out", fid("--plot", "latency.png"), 2, ("--plot", "'latency.png'", "already exists", "--replace")),
    Row("fid", "path-out", fid("--out", "set.npz", "--replace"), 2, ("--out", "'set.npz'", "an input of this command")),
    Row("fid", "path-out", fid("--plot", "./user/../set.npz", "--replace"), 2, ("--plot", "an input of this command")),
    Row("fid", "path-out", fid("--extractor-weights", "afile", "--out", "afile", "--replace"), 2,
        ("--out", "'afile'", "an input of this command")),
    Row("fid", "path-out", fid("--out", "x.json", "--plot", "./user/../x.json"), 2, ("--out and --plot", "same file")),
    Row("fid", "path-out", fid("--out", "user"), 2, ("--out", "'user'", "is a folder")),
    Row("fid", "path-out", fid("--plot", "."), 2, ("--plot", "is a folder")),
    Row("fid", "choice", fid("--metrics", "is"), 2, ("--metrics", "must include fid")),
    Row("fid", "choice", fid("--extractor", "nope"), 2, ("--extractor", "invalid choice")),
    Row("fid", "device", fid("--device", "tpu"), 2, ("device 'tpu'", "cpu")),
    Row("fid", "device", fid("--device", "meta"), 2, ("--device", "meta")),
    *([Row("fid", "device", fid(*NO_CUDA_DEVICE), 2, ("device 'cuda'", "CUDA is not available"))] if not CUDA else []),
    # python -m sdvar_lib.train_tiny
    Row("train_tiny", "number", tiny("--max-steps", "0"), 2, ("--max-steps", ">= 1")),
    Row("train_tiny", "number", tiny("--vae-epochs", "0"), 2, ("--vae-epochs", ">= 1")),
    Row("train_tiny", "number", tiny("--seed", "-1"), 2, ("--seed",)),
    Row("train_tiny", "number", tiny("--seed", str(2**63)), 2, ("--seed", "2**63")),
    Row("train_tiny", "number", tiny("--threads", "0"), 2, ("--threads", ">= 1")),
    Row("train_tiny", "type", tiny("--seed", "x"), 2, ("--seed", "invalid int")),
    Row("train_tiny", "type", tiny("--max-steps", "1.5"), 2, ("--max-steps", "invalid int")),
    Row("train_tiny", "path-out", ("--quick",), 2, ("--out", "required")),
    Row("train_tiny", "path-out", tiny("--out", "afile"), 2, ("--out", "afile", "not a folder")),
    Row("train_tiny", "path-out", tiny("--out", "afile/sub"), 2, ("--out", "afile", "cannot be written")),
    Row("train_tiny", "path-out", tiny("--out", "."), 2, ("--out", "current folder")),
    Row("train_tiny", "path-out", tiny("--out", "user"), 2, ("--out", "no workbench run wrote", "notes.txt")),
    Row("train_tiny", "path-out", tiny("--out", "tiny_notes"), 2, ("--out", "did not write", "notes.txt")),
    Row("train_tiny", "path-out", tiny("--out", "demo_out"), 2, ("--out", "output of python -m sdvar_lib,")),
    Row("train_tiny", "path-out", tiny("--out", "legacy"), 2, ("--out", "older version")),
    Row("train_tiny", "path-out", ("--render-card", "--out", "user"), 2, ("--out", "metrics.json", "--render-card")),
    Row("train_tiny", "model", tiny("--out", str(BUNDLED_DIR)), 2, ("--out", "--replace-bundled")),
    Row("train_tiny", "model", tiny("--replace-bundled"), 2, ("--replace-bundled",)),
    Row("train_tiny", "device", tiny("--device", "meta"), 2, ("--device", "meta")),
    Row("train_tiny", "device", tiny("--device", "bogus"), 2, ("--device", "bogus")),
    # python -m sdvar_lib.bench (argument and --out checks come before the CUDA check)
    Row("bench", "number", bench("--batches", "0"), 2, ("batches", ">= 1")),
    Row("bench", "number", bench("--repeats", "0"), 2, ("repeats", ">= 1")),
    Row("bench", "number", bench("--cfg", "nan"), 2, ("--cfg", "finite")),
    Row("bench", "number", bench("--cfg", "1e300"), 2, ("--cfg", "at most 1e+06", "1e+300")),
    Row("bench", "type", bench("--batches", "x"), 2, ("--batches", "comma-separated ints")),
    Row("bench", "type", bench("--pairs", "16-30"), 2, ("--pairs", "draft:target")),
    Row("bench", "model", bench("--pairs", "16:31"), 2, ("target depth", "16, 20, 24, 30")),
    Row("bench", "method", bench("--methods", "nope"), 2, ("unknown method 'nope'",)),
    Row("bench", "path-out", bench("--out", "afile"), 2, ("--out", "afile", "not a folder")),
    Row("bench", "path-out", bench("--out", "afile/sub"), 2, ("--out", "afile", "cannot be written")),
    Row("bench", "path-out", bench("--out", "."), 2, ("--out", "current folder")),
    Row("bench", "path-out", bench("--out", "user"), 2, ("--out", "no workbench run wrote", "notes.txt")),
    Row("bench", "path-out", bench("--out", "bench_notes"), 2, ("--out", "did not write", "latency.png")),
    Row("bench", "path-out", bench("--out", "demo_out"), 2, ("--out", "output of python -m sdvar_lib,")),
    Row("bench", "path-out", bench("--out", "legacy"), 2, ("--out", "older version")),
    *([Row("bench", "device", bench(), 2, ("CUDA GPU",))] if not CUDA else []),
    # python -m sdvar_lib.bench_plot
    Row("bench_plot", "path-in", ("missing.json",), 2, ("report", "missing.json", "no such file")),
    Row("bench_plot", "path-in", (".", "--out", "x.png"), 2, ("report", "'.'", "is a folder")),
    Row("bench_plot", "path-in", ("notjson.json", "--out", "x.png"), 2, ("notjson.json", "not JSON")),
    Row("bench_plot", "path-in", ("norows.json", "--out", "x.png"), 2, ("norows.json", "not a bench report")),
    Row("bench_plot", "path-out", ("bench.json",), 2, ("--out", "latency.png", "already exists", "--replace")),
    Row("bench_plot", "path-out", ("bench.json", "--out", "latency.png"), 2, ("--out", "latency.png", "--replace")),
    Row("bench_plot", "path-out", ("bench.json", "--out", "bench.json", "--replace"), 2,
        ("--out", "bench.json", "same file as the input")),
    Row("bench_plot", "path-out", ("bench.json", "--out", "./user/../bench.json", "--replace"), 2,
        ("--out", "same file as the input")),
    Row("bench_plot", "path-out", ("bench.json", "--out", "."), 2, ("--out", "is a folder")),
    Row("bench_plot", "path-out", ("bench.json", "--out", "user"), 2, ("--out", "'user'", "is a folder")),
    Row("bench_plot", "path-out", ("bench.json", "--out", "afile/x.png"), 2, ("--out", "afile", "not a folder")),
    Row("bench_plot", "path-out", ("bench.json", "--out", "x.xyz"), 2, ("--out", ".xyz", ".png")),
    Row("bench_plot", "choice", ("bench.json", "--out", "x.png", "--series", "nope"), 2,
        ("--series", "'nope' not in the report", "exact_g2 [all-accepted]")),
    Row("bench_plot", "choice", ("bench.json", "--out", "x.png", "--series", "target,exact_g3"), 2,
        ("--series", "'exact_g3'",)),
    Row("bench_plot", "choice", ("bench.json", "--out", "x.png", "--series", ","), 2, ("--series", "names no series")),
]

REQUIRED = {
    "main": {"number", "type", "path-out", "device", "model", "method"},
    "sample": {"number", "type", "path-out", "device", "model", "method", "choice"},
    "evaluate": {"number", "type", "path-in", "path-out", "device", "method"},
    "fid": {"number", "type", "path-in", "path-out", "device", "choice"},
    "train_tiny": {"number", "type", "path-out", "device", "model"},
    "bench": {"number", "type", "path-out", "model", "method"},
    "bench_plot": {"path-in", "path-out", "choice"},
}


def test_every_command_has_rows_for_every_class_of_its_arguments():
    have: dict[str, set[str]] = {}
    for row in ROWS:
        have.setdefault(row.command, set()).add(row.kind)
    assert set(have) == set(COMMANDS) == set(REQUIRED)
    missing = {c: sorted(REQUIRED[c] - have[c]) for c in COMMANDS if REQUIRED[c] - have[c]}
    assert not missing, missing
    assert len({r.id for r in ROWS}) == len(ROWS), "two rows are the same"


WORK = [  # the first piece of real work of each command: none may start before every argument is checked
    "sdvar_lib.demo.cli.prepare_methods", "sdvar_lib.demo.cli.run_methods",
    "sdvar_lib.samples.cli.run_job",
    "sdvar_lib.eval.cli.evaluate_methods", "sdvar_lib.eval.cli.load_extractor", "sdvar_lib.eval.cli.score_samples",
    "sdvar_lib.tiny.cli.train_all", "sdvar_lib.tiny.cli.rerender_model_card",
    "sdvar_lib.bench.cli.run_bench", "sdvar_lib.bench.cli.plot_latency_vs_batch",
]


@pytest.fixture
def no_work(monkeypatch):
    for target in WORK:
        def refuse(*args, _target=target, **kwargs):
            raise AssertionError(f"{_target} started before every argument was checked")

        monkeypatch.setattr(target, refuse)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_a_bad_input_is_one_line_naming_it_and_changes_no_file(row, ws, capsys, no_work):
    before = snapshot(ws)
    code, line = run(row.command, list(row.argv), capsys)
    assert code == row.code, line
    for name in row.names:
        assert name in line, f"{name!r} not in {line!r}"
    assert snapshot(ws) == before


# ---- OS failures where the output is written (exit code 1) ---------------------------------------
def _write_fails(code: int):
    """Writing data fails (as the kernel reports it: no path): ``Path.write_text`` and ``os.fsync``."""
    real_write_text = pathlib.Path.write_text

    def write_text(self, *args, **kwargs):
        if "ws" in self.absolute().parts:
            raise OSError(code, os.strerror(code))
        return real_write_text(self, *args, **kwargs)

    def fsync(fd):
        raise OSError(code, os.strerror(code))

    return [(pathlib.Path, "write_text", write_text), (os, "fsync", fsync)]


def _rename_fails(code: int):
    """Renaming into the workspace fails (``os.replace`` names both paths, as it does)."""
    real_replace = os.replace

    def replace(src, dst):
        if "ws" in Path(os.path.abspath(dst)).parts:
            raise OSError(code, os.strerror(code), os.fspath(src), None, os.fspath(dst))
        return real_replace(src, dst)

    return [(os, "replace", replace)]


def _render_card_folder(ws: Path) -> Path:
    folder = ws / "card"
    folder.mkdir()
    for name in ("metrics.json", "config.json", "MODEL_CARD.md"):
        shutil.copy(BUNDLED_DIR / name, folder / name)
    return folder


# ---- the benchmark on a CPU: CUDA pretended, run_bench replaced (the writes of its --out folder are real) ----------
BENCH_ARGV = ("--pairs", "16:30", "--batches", "1", "--methods", "target")


def _pretend_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def _fake_bench(monkeypatch, between_rows: Callable[[], None] | None = None) -> None:
    """CUDA pretended; ``run_bench`` reports its (empty) report after each of two rows, ``between_rows`` in between."""
    from sdvar_lib.bench.bounds import Ceilings
    from sdvar_lib.bench.report import BenchReport
    from sdvar_lib.util.machine import MachineInfo

    machine = MachineInfo(device="cuda", cpu="GPU", torch_threads=1, torch_version="2", python_version="3",
                          platform="linux", cuda_version="12", driver="1")

    def run_bench(config, command, on_progress=None):
        report = BenchReport(machine=machine, command=command, ceilings=Ceilings(3e12, 7e14), decode=[], rows=[],
                             config=config)
        on_progress(report)
        if between_rows is not None:
            between_rows()
        on_progress(report)
        return report

    _pretend_cuda(monkeypatch)
    monkeypatch.setattr("sdvar_lib.bench.cli.run_bench", run_bench)


OS_CASES = {  # command -> (argv, what the line must name, files the command may add to the workspace)
    "main": (("--out", "demo_out", "--methods", "target", "--labels", "1"), "demo_out"),
    "evaluate": (("--out", "eval_out", "--samples", "2", "--seeds", "0", "--methods", "target"), "eval_out"),
    "sample": (sample("--out", "set1"), "set1"),
    "fid": (fid("--metrics", "fid", "--allow-few", "--out", "r.json"), "r.json"),
    "train_tiny": (("--render-card", "--out", "card"), "card"),
    "bench": ((*BENCH_ARGV, "--out", "bench_out"), "bench_out"),
    "bench_plot": (("bench.json", "--out", "latency.png", "--replace"), "latency.png"),
}
FAILURES = {"disk-full": (_write_fails, errno.ENOSPC, "no space left on the device"),
            "no-permission": (_rename_fails, errno.EACCES, "permission denied")}


@pytest.mark.parametrize("failure", FAILURES, ids=FAILURES)
@pytest.mark.parametrize("command", OS_CASES, ids=OS_CASES)
def test_an_os_failure_is_one_line_with_exit_code_1_and_keeps_every_earlier_file(command, failure, ws, capsys,
                                                                                 monkeypatch):
    argv, where = OS_CASES[command]
    if command == "train_tiny":
        _render_card_folder(ws)
    if command == "bench":
        _fake_bench(monkeypatch)
    make, code, words = FAILURES[failure]
    before = snapshot(ws)
    for owner, name, fn in make(code):
        monkeypatch.setattr(owner, name, fn)
    rc, line = run(command, list(argv), capsys)
    monkeypatch.undo()
    assert rc == 1, line
    assert where in line and words in line, line
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # a failed write leaves no figure open in pyplot
    after = snapshot(ws)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing earlier changed or went missing
    added = sorted(set(after) - set(before))
    if command == "sample":  # the sampler keeps what it made so far, to resume: its folder and manifest, no shard
        assert set(added) <= {"set1", "set1/manifest.json", "set1/shards"}, added
    else:
        assert added == [], added  # no temporary, no lock left behind


# ---- two runs on one output (exit code 1) ---------------------------------------------------------
TWO_RUNS = {  # command -> (argv, output, the first piece of work, which must not start)
    "main": (demo("--out", "demo_out"), "demo_out", "sdvar_lib.demo.cli.load_pair"),
    "evaluate": (evaluate("--out", "eval_out"), "eval_out", "sdvar_lib.eval.cli.load_bundled_classifier"),
    "sample": (sample("--out", "set1"), "set1", "sdvar_lib.samples.cli.load_pair"),
    "fid": (fid("--allow-few", "--out", "r.json", "--plot", "r.png"), "r.png", "sdvar_lib.eval.cli.load_extractor"),
    "train_tiny": (tiny("--out", "tiny_out"), "tiny_out", "sdvar_lib.tiny.cli.train_all"),
    "bench": (bench("--out", "bench_out"), "bench_out", "sdvar_lib.bench.cli.run_bench"),
    "bench_plot": (("bench.json", "--out", "plot.png"), "plot.png", "sdvar_lib.bench.cli.plot_latency_vs_batch"),
}


@pytest.mark.parametrize("command", TWO_RUNS, ids=TWO_RUNS)
def test_a_second_run_on_an_output_in_use_is_refused_before_any_work(command, ws, capsys, monkeypatch):
    argv, out, work = TWO_RUNS[command]
    if command == "bench":
        _pretend_cuda(monkeypatch)

    def no_work(*args, **kwargs):
        raise AssertionError(f"{work} started although another run holds {out}")

    monkeypatch.setattr(work, no_work)
    with held_by_another_thread(ws / out, "the first run"):
        before = snapshot(ws)
        code, line = run(command, list(argv), capsys)
        assert code == 1 and out in line and "being written by another run" in line and "the first run" in line, line
        assert snapshot(ws) == before


def test_the_bench_writes_a_folder_it_owns_and_stops_at_files_it_did_not_write(ws, capsys, monkeypatch):
    from sdvar_lib.util.atomic import OUTPUT_MANIFEST, check_output_folder

    _fake_bench(monkeypatch)
    for out in ("bench_out", "runs/one"):  # an earlier output of the bench (replaced), a new folder
        assert bench_main([*BENCH_ARGV, "--out", out]) == 0
        manifest = json.loads((ws / out / OUTPUT_MANIFEST).read_text())
        assert manifest["owner"] == OWNERS["bench"] and set(manifest["files"]) == {"bench.json", "bench.md"}
        assert json.loads((ws / out / "bench.json").read_text())["command"].endswith(f"--out {out}")
        assert check_output_folder(ws / out, owner=OWNERS["bench"]) == ws / out  # the next run may replace it
    before = snapshot(ws)
    # a plot of the partial report put into the folder while the bench runs: the next row's write refuses, it stays
    _fake_bench(monkeypatch, between_rows=lambda: (ws / "bench_out" / "latency.png").write_bytes(b"a plot"))
    code, line = run("bench", [*BENCH_ARGV, "--out", "bench_out"], capsys)
    assert code == 2 and "'bench_out'" in line and "did not write: latency.png" in line, line
    after = snapshot(ws)
    assert after.pop("bench_out/latency.png") == ("file", b"a plot") and after == before  # no temporary, no lock left


def test_the_bench_profiles_join_its_report(ws, capsys, monkeypatch):
    from sdvar_lib.util.atomic import OUTPUT_MANIFEST

    _fake_bench(monkeypatch)
    monkeypatch.setattr("sdvar_lib.bench.cli.profile_decodes", lambda batches, device: [])
    assert bench_main([*BENCH_ARGV, "--profile-decode", "--out", "bench_out"]) == 0
    names = {"bench.json", "bench.md", "profile.md", "profile.json"}
    assert set(json.loads((ws / "bench_out" / OUTPUT_MANIFEST).read_text())["files"]) == names
    assert {p.name for p in (ws / "bench_out").iterdir()} == names | {OUTPUT_MANIFEST}


# ---- real processes: the shims, and no traceback on stderr ----------------------------------------
def _process(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("SDVAR_TRACEBACK", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          **kwargs)


def _one_error_line(stderr: str, prog: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error:"), stderr
    return lines[0]


def test_a_bad_device_in_a_real_process(ws):
    before = snapshot(ws)
    done = _process(["-m", "sdvar_lib", "--out", "new", "--device", "meta"], ws)
    assert done.returncode == 2 and "--device 'meta'" in _one_error_line(done.stderr, "python -m sdvar_lib")
    assert snapshot(ws) == before


def test_disk_full_in_a_real_process(ws):
    """The shim's exit code and stderr: ENOSPC where the plot is written, injected before the command runs."""
    code = ("import errno, os, runpy, sys\n"
            "def fsync(fd):\n    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
            "os.fsync = fsync\n"
            "sys.argv = ['bench_plot', 'bench.json', '--out', 'plot.png']\n"
            "runpy.run_module('sdvar_lib.bench_plot', run_name='__main__')\n")
    before = snapshot(ws)
    done = _process(["-c", code], ws)
    line = _one_error_line(done.stderr, "python -m sdvar_lib.bench_plot")
    assert done.returncode == 1 and "'plot.png': no space left on the device" in line, line
    assert snapshot(ws) == before


def test_two_real_runs_on_one_output(ws):
    holder_code = ("import sys, time; from sdvar_lib.util.atomic import output_lock\n"
                   "with output_lock('demo_out', 'the first run'):\n    print('held', flush=True); time.sleep(120)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    holder = subprocess.Popen([sys.executable, "-c", holder_code], cwd=ws, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(ws)
        done = _process(["-m", "sdvar_lib", "--out", "demo_out", "--methods", "target", "--labels", "1"], ws)
        line = _one_error_line(done.stderr, "python -m sdvar_lib")
        assert done.returncode == 1 and "being written by another run" in line and f"process {holder.pid}" in line
        assert snapshot(ws) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_traceback_comes_back_on_request(ws, monkeypatch, capsys):
    monkeypatch.setenv("SDVAR_TRACEBACK", "1")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError) as info:
        plot_main(["bench.json", "--out", "plot.png"])
    assert info.value.errno == errno.ENOSPC and info.value.filename == "plot.png"


def test_bench_plot_draws_only_the_series_asked_for_and_replaces_only_on_request(ws, capsys):
    assert plot_main(["bench.json", "--out", "plot.png", "--series", "target,sdvar_g2 [all-accepted]"]) == 0
    first = (ws / "plot.png").read_bytes()
    assert first.startswith(b"\x89PNG")
    assert plot_main(["bench.json", "--replace"]) == 0  # the default output beside the report, asked to replace
    assert (ws / "latency.png").read_bytes().startswith(b"\x89PNG") and (ws / "plot.png").read_bytes() == first
    assert json.loads((ws / "bench.json").read_text())["rows"]


def test_a_re_rendered_model_card_stays_the_runs_own_file(ws, capsys):
    """``train_tiny --render-card`` rewrites a file of its own output: the folder stays replaceable by the next run."""
    from sdvar_lib.tiny.bundle import OWNER, check_bundle_out

    with atomic_folder(ws / "bundle", OWNER) as tmp:
        for name in ("metrics.json", "config.json"):
            shutil.copy(BUNDLED_DIR / name, tmp / name)
        (tmp / "MODEL_CARD.md").write_text("an older card")
    assert tiny_main(["--render-card", "--out", "bundle"]) == 0
    assert (ws / "bundle" / "MODEL_CARD.md").read_text() != "an older card"
    assert check_bundle_out(ws / "bundle") == ws / "bundle"
