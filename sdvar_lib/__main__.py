"""The workbench's main job: target alone vs SDVAR on the bundled pair, a figure and a statistics table.

    python -m sdvar_lib --out outputs/demo

writes ``comparison.png`` (one row per method, one column per label), ``stats.md`` and
``stats.json`` (target passes, draft passes, acceptance per stage, time) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sdvar_lib.models.checkpoints import MODEL_CHOICES, load_pair
from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.sdvar.acceptance import make_policy
from sdvar_lib.sdvar.decoder import SDVAR
from sdvar_lib.sdvar.registry import Method, get_method
from sdvar_lib.sdvar.stats import SDVAROutput
from sdvar_lib.util.atomic import atomic_folder, check_output_folder
from sdvar_lib.viz.plotting import comparison_figure

__all__ = ["MethodRun", "run_demo", "main"]


@dataclass
class MethodRun:
    """One method's result in the demo table."""

    method: str
    target_passes: int
    draft_passes: int
    token_acceptance_per_stage: list[float | None]
    wall_time_ms: float
    labels: list[int]


def _row(method: str, out: SDVAROutput) -> MethodRun:
    st = out.stats
    return MethodRun(
        method=method, target_passes=st.target_passes, draft_passes=st.draft_passes,
        token_acceptance_per_stage=[None if a is None else round(a, 4) for a in st.token_acceptance_per_stage],
        wall_time_ms=round(st.wall_time_s * 1000, 1), labels=out.label_B.tolist(),
    )


def run_demo(
    sd: SDVAR, labels: list[int], seed: int, cfg: float, gamma, policy: str, top_k: int, top_p: float
) -> tuple[list[MethodRun], list[torch.Tensor]]:
    """Run the target alone and SDVAR with the same seed; returns table rows and image batches."""
    B = len(labels)
    sampling = SamplingConfig(cfg=cfg, top_k=top_k, top_p=top_p)
    target = get_method("target")
    sdvar = Method(f"sdvar_{policy}_g{gamma}", "sdvar", policy=make_policy(policy), gamma=gamma)
    target.run(sd, B, labels, seed, sampling)  # warm-up, not reported
    base = target.run(sd, B, labels, seed, sampling)
    spec = sdvar.run(sd, B, labels, seed, sampling)
    rows = [_row("target alone", base), _row(f"SDVAR {policy}, gamma {gamma}", spec)]
    return rows, [base.images_B3HW, spec.images_B3HW]


def format_table(rows: list[MethodRun]) -> str:
    lines = [
        "| method | target passes | draft passes | token acceptance per stage | time (ms) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        acc = " ".join("-" if a is None else f"{a:.2f}" for a in r.token_acceptance_per_stage)
        lines.append(f"| {r.method} | {r.target_passes} | {r.draft_passes} | {acc} | {r.wall_time_ms:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdvar_lib", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder")
    parser.add_argument("--models", choices=MODEL_CHOICES, default="bundled")
    parser.add_argument("--draft-depth", type=int, default=16)
    parser.add_argument("--target-depth", type=int, default=30)
    parser.add_argument("--labels", type=int, nargs="+", default=None, help="class labels (default: every class, max 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cfg", type=float, default=1.5)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=0.0)
    parser.add_argument("--gamma", default="2", help="int >= 1 or 'adaptive'")
    parser.add_argument("--policy", default="exact", choices=["exact", "top1_match", "relaxed"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    check_output_folder(args.out)
    gamma = args.gamma if args.gamma == "adaptive" else int(args.gamma)
    pair = load_pair(args.models, args.draft_depth, args.target_depth, device=args.device)
    print(f"models: {pair.description} on {pair.target.device}")
    labels = args.labels if args.labels is not None else list(range(min(pair.target.num_classes, 10)))
    sd = SDVAR(pair.draft, pair.target)
    rows, images = run_demo(sd, labels, args.seed, args.cfg, gamma, args.policy, args.top_k, args.top_p)

    fig = comparison_figure(
        {r.method: img for r, img in zip(rows, images)},
        captions={r.method: f"{r.target_passes} target passes" for r in rows},
        row_labels=[f"class {label}" for label in labels],
        methods_as_rows=True,
    )
    table = format_table(rows)
    with atomic_folder(args.out, "python -m sdvar_lib") as tmp:
        fig.savefig(tmp / "comparison.png", dpi=120, bbox_inches="tight")
        (tmp / "stats.md").write_text(f"models: {pair.description}\n\n{table}\n")
        (tmp / "stats.json").write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    print(table)
    print(f"wrote {args.out / 'comparison.png'}, {args.out / 'stats.md'}, {args.out / 'stats.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
