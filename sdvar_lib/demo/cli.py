"""``python -m sdvar_lib``: the main job's command (:mod:`sdvar_lib.demo.job` does the work).

    python -m sdvar_lib --out outputs/demo

Every argument a user can get wrong is checked before any model is loaded; a mistake is one
argparse-style line. The output folder is written as one set (:func:`sdvar_lib.util.atomic.atomic_folder`),
replacing only an earlier output of this command that holds nothing else, and one run at a time
(:func:`sdvar_lib.util.atomic.output_lock`); a failure of the disk or the permissions is one line
(:func:`sdvar_lib.util.cli.command`). ``sdvar_lib/__main__.py`` is the command's shim.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from sdvar_lib.demo.job import (
    DEFAULT_METHODS,
    MethodRow,
    demo_figure,
    format_table,
    prepare_methods,
    resolve_methods,
    run_methods,
    stored_quality,
)
from sdvar_lib.fast.setup import describe_setup, make_pair_sdvar, uses_fast_path
from sdvar_lib.models.checkpoints import MODEL_CHOICES, load_pair, pick_device
from sdvar_lib.models.presets import ModelPair, check_official_depth
from sdvar_lib.models.sampling import SamplingConfig, check_cfg
from sdvar_lib.sdvar.registry import Method
from sdvar_lib.util.atomic import atomic_folder, check_output_folder, output_lock
from sdvar_lib.util.checks import SEED_LIMIT, check_seed
from sdvar_lib.util.cli import check_run_device, command
from sdvar_lib.util.progress import show_progress

__all__ = ["PROG", "DESCRIPTION", "FIGURE", "parse_gamma", "build_parser", "main"]

PROG = "python -m sdvar_lib"

DESCRIPTION = "The workbench's main job: every decoder that matters on one pair, and what each one trades."
FIGURE = "comparison.png"


def parse_gamma(text: str):
    """``--gamma``: an int >= 1 or ``"adaptive"``."""
    if text == "adaptive":
        return "adaptive"
    if not re.fullmatch(r"[0-9]+", text) or int(text) < 1:
        raise ValueError(f"--gamma must be an int >= 1 or 'adaptive', got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"),
                        help="output folder: new, empty or an earlier output of this command holding nothing else "
                             "(replaced as a whole)")
    parser.add_argument("--models", choices=MODEL_CHOICES, default="bundled",
                        help="bundled (default, offline), official (d16 -> d30 from ./checkpoints or the hub), "
                             "random-official (official sizes, random weights: for timing) or tiny-random")
    parser.add_argument("--draft-depth", type=int, default=None,
                        help="official(-size) draft depth: 16, 20, 24 or 30 (default 16)")
    parser.add_argument("--target-depth", type=int, default=None,
                        help="official(-size) target depth: 16, 20, 24 or 30 (default 30)")
    parser.add_argument("--labels", type=int, nargs="+", default=None,
                        help="class labels (default: the first 10 classes; for the 1000-class models the notebooks' "
                             "ImageNet classes 207 360 388 980, as a batch of 10 would not fit a 15 GB GPU)")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="NAME",
                        help=f"decoders by registry name (default: {' '.join(DEFAULT_METHODS)}; also exact_g<N>, "
                             "top1_<t>_g<N>, relaxed_<b>_g<N>, test3_e<N>, code_e<N>, draft, ...)")
    parser.add_argument("--gamma", default=None, help="int >= 1 or 'adaptive': replaces the gamma of every SDVAR method")
    parser.add_argument("--seed", type=int, default=0, help="seed of the call of all labels; image i at batch 1 uses seed + i")
    parser.add_argument("--cfg", type=float, default=1.5)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=0.0)
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--eager", action="store_true",
                        help="run the eager float32 path on a GPU too (default there: the bf16/fp16 fast path)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default 1 on the CPU: the bundled models are tiny)")
    parser.add_argument("--verbose", action="store_true")
    return parser


@dataclass(frozen=True)
class _Args:
    """The checked arguments (everything a user can get wrong is checked before any model is loaded)."""

    out: Path
    models: str
    draft_depth: int
    target_depth: int
    methods: list[Method]
    sampling: SamplingConfig
    seed: int
    device: torch.device
    eager: bool
    threads: int | None


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> _Args:
    try:
        check_output_folder(args.out, owner=PROG)
        official_size = args.models in ("official", "random-official")
        if not official_size and (args.draft_depth is not None or args.target_depth is not None):
            raise ValueError("--draft-depth/--target-depth choose official sizes; they need --models official or "
                             "random-official")
        draft_depth = 16 if args.draft_depth is None else args.draft_depth
        target_depth = 30 if args.target_depth is None else args.target_depth
        if official_size:
            check_official_depth(draft_depth, "--draft-depth")
            check_official_depth(target_depth, "--target-depth")
        gamma = None if args.gamma is None else parse_gamma(args.gamma)
        methods = resolve_methods(args.methods, gamma)
        check_cfg(args.cfg, "--cfg")
        sampling = SamplingConfig(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p)
        check_seed(args.seed, "--seed", allow_none=False)
        if args.seed + max(len(args.labels or ()), 10) > SEED_LIMIT:
            raise ValueError(f"--seed must leave room for one seed per image below 2**63, got {args.seed}")
        device = check_run_device(pick_device(args.device))
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be an int >= 1, got {args.threads}")
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    return _Args(out=args.out, models=args.models, draft_depth=draft_depth, target_depth=target_depth, methods=methods,
                 sampling=sampling, seed=args.seed, device=device, eager=args.eager, threads=args.threads)


IMAGENET_LABELS = (207, 360, 388, 980)
"""The default labels of the 1000-class (official-size) models: the notebooks' four classes. A batch of four keeps the
main job within a 15 GB GPU (Colab's T4) with d16 -> d30 in half precision; ten did not (measured on an H200 capped at
14.5 GiB: out of memory in the VQVAE decode of the batch of ten)."""


def default_labels(num_classes: int) -> list[int]:
    """The first (at most) 10 classes; :data:`IMAGENET_LABELS` for the 1000-class models."""
    return list(IMAGENET_LABELS) if num_classes >= 1000 else list(range(min(num_classes, 10)))


def _check_against_pair(parser: argparse.ArgumentParser, a: _Args, labels_arg, pair: ModelPair) -> list[int]:
    try:
        num_classes = pair.target.num_classes
        labels = list(labels_arg) if labels_arg is not None else default_labels(num_classes)
        bad = [c for c in labels if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"--labels must be class ids in [0, {num_classes}) for {pair.description}, got {bad}")
        a.sampling.check_vocabulary(pair.target.V)
        for m in a.methods:
            m.check_for(pair.target.num_stages)
    except ValueError as exc:
        parser.error(str(exc))
    return labels


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    a = _check_args(parser, ns)
    with output_lock(a.out, PROG):  # one run at a time on this folder, from before the models load
        return _run(parser, ns, a, argv)


def _run(parser: argparse.ArgumentParser, ns: argparse.Namespace, a: _Args, argv: list[str] | None) -> int:
    if a.device.type == "cpu":
        torch.set_num_threads(a.threads or 1)
    elif a.threads is not None:
        torch.set_num_threads(a.threads)
    run_id = f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"

    pair = load_pair(a.models, a.draft_depth, a.target_depth, device=a.device)
    if pair.fallback_reason:
        print(f"FALLBACK: the bundled tiny pair stands in for the official models ({pair.fallback_reason})")
    labels = _check_against_pair(parser, a, ns.labels, pair)
    sd = make_pair_sdvar(pair, fast=False if a.eager else None)
    setup = describe_setup(sd)
    print(f"models: {pair.description}")
    print(setup)

    show_progress(err=True)  # one-off preparation (kernel compiles, graph captures) is said as it happens
    fast = uses_fast_path(sd)
    if fast:
        print(f"preparing the fast path for {len(a.methods)} methods at batch 1 and {len(labels)}: compiling kernels and "
              "capturing CUDA graphs once (5-10 s on a fresh machine, a few seconds with Triton's kernel cache); "
              "no reported time includes it", flush=True)
    preparation_s = prepare_methods(sd, a.methods, labels, a.seed, a.sampling)
    if fast:
        print(f"prepared in {preparation_s:.1f} s (one-off)", flush=True)
    t0 = time.perf_counter()
    measured, images = run_methods(sd, a.methods, labels, a.seed, a.sampling)
    quality = stored_quality([m["name"] for m in measured], a.models == "bundled" or pair.fallback_reason is not None,
                             a.sampling)
    rows = [MethodRow(**m, quality=quality[m["name"]]) for m in measured]
    elapsed = time.perf_counter() - t0

    title = (f"{pair.description}\n{len(labels)} labels, seed {a.seed}, cfg {a.sampling.cfg:g}: one row per method "
             "(images of one call of all labels)")
    fig = demo_figure(rows, images, labels, run_id, title)
    table = format_table(rows)
    command_line = f"{PROG} " + shlex.join(sys.argv[1:] if argv is None else argv)
    quality_note = rows[0].quality.source
    stats = {
        "run_id": run_id, "figure": FIGURE, "command": command_line, "setup": setup,
        "pair": {"description": pair.description, "fallback_reason": pair.fallback_reason,
                 "device": str(pair.target.device), "var_dtype": str(pair.target.pos_1LC.dtype).removeprefix("torch."),
                 "fast_path": uses_fast_path(sd), "num_stages": pair.target.num_stages},
        "sampling": asdict(a.sampling), "seed": a.seed, "labels": labels, "batch_size": len(labels),
        "quality_source": quality_note, "wall_time_s": round(elapsed, 2),
        "preparation_s": round(preparation_s, 2),
        "rows": [asdict(r) for r in rows],
    }
    markdown = (
        f"# SDVAR main job, run {run_id}\n\nModels: {pair.description}; {setup}.\n\n"
        + (f"FALLBACK: {pair.fallback_reason}\n\n" if pair.fallback_reason else "")
        + f"Figure: `{FIGURE}` (same run id). Command: `{command_line}`. {len(labels)} labels {labels}, seed {a.seed}; "
        f"batch 1 = one call per image (seed + i), batch {len(labels)} = one call of all labels. Times are steady "
        f"times: an untimed warm-up of every method at both batch sizes ({preparation_s:.1f} s) went first, and any "
        "one-off preparation left in a timed call is counted apart.\n\n"
        f"Quality: {quality_note}.\n\n{table}\n"
    )
    with atomic_folder(a.out, PROG) as tmp:
        fig.savefig(tmp / FIGURE, dpi=100, metadata={"Description": f"sdvar_lib main job, run {run_id}"})
        (tmp / "stats.md").write_text(markdown)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(table)
    print(f"quality: {quality_note}")
    print(f"run {run_id}: wrote {a.out / FIGURE}, {a.out / 'stats.md'}, {a.out / 'stats.json'} ({elapsed:.1f} s)")
    return 0

