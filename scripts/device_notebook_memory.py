#!/usr/bin/env python
"""Peak GPU memory and time of each notebook's workload, on the official-size pair, in float16 and bfloat16.

    python scripts/device_notebook_memory.py --out outputs/notebook_memory.json      # every notebook, fp16 and bf16
    python scripts/device_notebook_memory.py --notebooks 00 03 05 --dtypes float16   # a subset
    python scripts/device_notebook_memory.py --models tiny-random --device cpu --notebooks 00   # CPU smoke test

Each (notebook, dtype) runs in a fresh Python process: the notebook's code cells are executed in
order in one namespace (IPython magics dropped, figures drawn with the Agg backend), with the
notebook's own set-up cell, except that

- ``load_pair`` gives the official-size d16 -> d30 pair with **random weights** (no checkpoints
  or network needed; ``--models`` picks another pair), on ``--device``;
- ``make_pair_sdvar`` runs the fast path in ``--dtypes``' type (fp16 is what a T4 gets; bf16 what
  Ampere and newer get). A notebook whose set-up cell sets ``FAST = False`` (01, 02, 04: the eager
  internals) runs eager float32 whatever the dtype, so it is measured once.

Per run it reports the peak of ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved``
(the CUDA context, about 0.3-0.6 GiB, comes on top), the memory the models hold after the set-up
cell, and the wall time of the set-up cell and of the whole notebook. ``fits 15 GB`` says whether
the peak reserved memory stays below :data:`T4_USABLE_GIB`. Results are written to ``--out`` (JSON)
after every run, and printed as a Markdown table for ``docs/NOTEBOOKS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
DTYPES = ("float16", "bfloat16")
MODELS = ("official-random", "tiny-random", "bundled")
T4_USABLE_GIB = 14.5
"""What a 15 GB GPU (Colab's T4: 15,360 MiB) leaves for PyTorch's allocator after its CUDA context."""


def notebook_paths(prefixes: list[str] | None) -> list[Path]:
    paths = sorted(NOTEBOOKS.glob("0*.ipynb"))
    if prefixes is None:
        return paths
    chosen = []
    for prefix in prefixes:
        match = [p for p in paths if p.name.startswith(prefix)]
        if len(match) != 1:
            raise ValueError(f"--notebooks {prefix!r} matches {len(match)} notebooks of {[p.name for p in paths]}")
        chosen.append(match[0])
    return chosen


# ---- the child: one notebook in one dtype ----------------------------------------------------
def _code_cells(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    out = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        out.append("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
    return out


def run_child(notebook: Path, dtype_name: str, models: str, device_name: str) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import torch

    import sdvar_lib
    import sdvar_lib.fast
    import sdvar_lib.models

    dtype = getattr(torch, dtype_name)
    device = sdvar_lib.pick_device(device_name)
    cuda = device.type == "cuda"
    real_load, real_make = sdvar_lib.load_pair, sdvar_lib.make_pair_sdvar

    def load_pair(choice="bundled", draft_depth=16, target_depth=30, device=None, **kwargs):
        if models == "official-random":
            return sdvar_lib.models.build_official_pair(draft_depth, target_depth, device=device)
        return real_load(models, draft_depth, target_depth, device=device)

    def make_pair_sdvar(pair, fast=None, dtype_arg=None, config=None):
        eager = fast is False or (fast is None and pair.target.device.type != "cuda")
        return real_make(pair, fast, dtype_arg if eager else dtype, config)

    sdvar_lib.load_pair, sdvar_lib.make_pair_sdvar = load_pair, make_pair_sdvar
    sdvar_lib.pick_device = lambda prefer=None: device
    os.chdir(NOTEBOOKS)  # where the notebooks run (the set-up cell finds the checkout from here)
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(device)
    namespace: dict = {"__name__": "__main__"}
    result = dict(notebook=notebook.name, dtype_requested=dtype_name, models=models, device=str(device),
                  device_name=torch.cuda.get_device_name(device) if cuda else "cpu", torch=torch.__version__)
    t0 = time.perf_counter()
    try:
        for i, code in enumerate(_code_cells(notebook)):
            exec(compile(code, f"{notebook.name}[cell {i}]", "exec"), namespace)  # noqa: S102 (our own notebooks)
            if i == 0:
                if cuda:
                    torch.cuda.synchronize(device)
                result["setup_s"] = round(time.perf_counter() - t0, 2)
                result["models_gib"] = round(torch.cuda.memory_allocated(device) / 2**30, 3) if cuda else None
                sd, pair = namespace["sd"], namespace["pair"]
                result["setup"] = sdvar_lib.describe_setup(sd)
                result["models"] = pair.description
                result["fast_path"] = sdvar_lib.fast.uses_fast_path(sd)
                result["var_dtype"] = str(pair.target.pos_1LC.dtype).removeprefix("torch.")
        if cuda:
            torch.cuda.synchronize(device)
        result["status"] = "ok"
    except Exception as exc:
        result["status"] = f"error: {type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc(limit=8)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    result["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if cuda else None
    result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 3) if cuda else None
    result["fits_15gb"] = None if not cuda else result["peak_reserved_gib"] <= T4_USABLE_GIB
    return result


# ---- the parent: one process per run, a table at the end ---------------------------------------
def markdown_table(rows: list[dict]) -> str:
    def gib(v) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    lines = [
        "| notebook | VAR weights | fast path | models after set-up (GiB) | peak allocated (GiB) | peak reserved (GiB) "
        "| fits 15 GB | set-up (s) | notebook (s) | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        fits = "n/a" if r.get("fits_15gb") is None else ("yes" if r["fits_15gb"] else "**no**")
        lines.append(
            f"| {r['notebook']} | {r.get('var_dtype', '?')} | {'on' if r.get('fast_path') else 'off'} "
            f"| {gib(r.get('models_gib'))} | {gib(r.get('peak_allocated_gib'))} | {gib(r.get('peak_reserved_gib'))} "
            f"| {fits} | {r.get('setup_s', 'n/a')} | {r['seconds']} | {r['status'].splitlines()[0][:80]} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--notebooks", nargs="+", default=None, metavar="PREFIX", help="e.g. 00 03 (default: all)")
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    p.add_argument("--models", choices=MODELS, default="official-random")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=Path("outputs/notebook_memory.json"))
    p.add_argument("--timeout", type=int, default=900, help="seconds per notebook run")
    p.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.paths = notebook_paths(args.notebooks) if args.child is None else [args.child]
    except ValueError as exc:
        p.error(str(exc))
    if args.timeout < 1:
        p.error(f"--timeout must be >= 1 second, got {args.timeout}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:  # one run, in this process
        args.result.write_text(json.dumps(run_child(args.child, args.dtypes[0], args.models, args.device)))
        return 0
    sys.path.insert(0, str(ROOT))
    from sdvar_lib.util.atomic import atomic_write_text, check_writable_dir

    try:
        check_writable_dir(args.out.parent, "--out folder")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    rows: list[dict] = []
    for path in args.paths:
        for dtype_name in args.dtypes:
            if any(r["notebook"] == path.name and r.get("status") == "ok" and not r.get("fast_path") for r in rows):
                continue  # eager float32: the dtype does not apply, measured once
            with tempfile.TemporaryDirectory() as tmp:
                result_path = Path(tmp) / "result.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(path), "--result", str(result_path),
                       "--dtypes", dtype_name, "--models", args.models, "--device", args.device]
                t0 = time.perf_counter()
                try:
                    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
                    row = json.loads(result_path.read_text()) if result_path.is_file() else dict(
                        notebook=path.name, dtype_requested=dtype_name,
                        status=f"error: the run exited {run.returncode}: {run.stderr.strip().splitlines()[-1:]}")
                except subprocess.TimeoutExpired:
                    row = dict(notebook=path.name, dtype_requested=dtype_name, status=f"error: timeout after {args.timeout} s")
                row.setdefault("seconds", round(time.perf_counter() - t0, 2))
            rows.append(row)
            print(f"{row['notebook']} ({dtype_name}): {row['status'].splitlines()[0]}; {row['seconds']} s, peak reserved "
                  f"{row.get('peak_reserved_gib')} GiB", flush=True)
            if row.get("traceback"):
                print(row["traceback"], flush=True)
            atomic_write_text(args.out, json.dumps({"rows": rows, "t4_usable_gib": T4_USABLE_GIB}, indent=2) + "\n")
    print()
    print(markdown_table(rows))
    print(f"\nwrote {args.out}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
