"""``python -m sdvar_lib.train_tiny``: retrain the tiny digits pair from a seed and write a bundle.

Every argument is checked before any training: a mistake is one argparse-style line (exit code 2).
``--out`` is required and written as one set, by one run at a time (a lock beside it); it must be
new, empty or an earlier output of this command holding nothing else, and the package's bundled
models are replaced only with ``--out sdvar_lib/assets/tiny_digits --replace-bundled`` (see
:mod:`sdvar_lib.tiny.bundle`). A failure of the disk or the permissions is one line (exit code 1).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from sdvar_lib.models.checkpoints import pick_device
from sdvar_lib.tiny.bundle import OWNER, check_bundle_out, check_shipped, save_bundle
from sdvar_lib.tiny.card import CARD_NAME, rerender_model_card
from sdvar_lib.tiny.config import TinyTrainConfig, default_config, quick_config
from sdvar_lib.tiny.train import train_all
from sdvar_lib.util.atomic import output_lock, record_output_files
from sdvar_lib.util.checks import check_int, check_seed
from sdvar_lib.util.cli import check_run_device, command

__all__ = ["build_parser", "check_args", "config_from_args", "main"]

PROG = "python -m sdvar_lib.train_tiny"
EPOCH_FLAGS = {"vae_optim": "--vae-epochs", "target_optim": "--target-epochs", "draft_optim": "--draft-epochs",
               "classifier_optim": "--classifier-epochs"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Retrain the tiny digits draft/target pair, its VQVAE and "
                                "the metric classifier from a seed; write them with config, metrics and model card.")
    p.add_argument("--out", required=True,
                   help="output folder: new, empty or an earlier run's (the bundled folder only with --replace-bundled)")
    p.add_argument("--replace-bundled", action="store_true",
                   help="allow --out to be the package's bundled folder: replace its models, config, metrics, card "
                        "and samples as one set")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of every phase (default 0: the bundled models)")
    p.add_argument("--quick", action="store_true", help="smoke run: a few steps per phase on a subset")
    for flag in EPOCH_FLAGS.values():
        p.add_argument(flag, type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="cap the steps of every phase")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--no-eval", action="store_true", help="skip the generation metrics (no metrics.json/MODEL_CARD.md)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--render-card", action="store_true",
                   help="only re-render MODEL_CARD.md in --out from its metrics.json and config.json (no training)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Raise ``TypeError``/``ValueError`` naming the flag for any argument that cannot work; creates nothing."""
    if args.render_card:
        check_shipped(args.out, args.replace_bundled, "--out", "--replace-bundled")
        for name in ("metrics.json", "config.json"):
            if not (Path(args.out) / name).is_file():
                raise ValueError(f"--out {args.out!r} has no {name}: --render-card needs a folder written by a training run")
        return
    check_seed(args.seed, "--seed", allow_none=False)
    for flag in (*EPOCH_FLAGS.values(), "--max-steps", "--threads"):
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value is not None:
            check_int(value, flag, 1)
    try:
        check_run_device(pick_device(args.device), "device")
    except ValueError as exc:
        raise ValueError(f"--device: {exc}") from None
    if args.replace_bundled and args.no_eval:
        raise ValueError("--replace-bundled needs the evaluation (the bundled set includes metrics.json and "
                         "MODEL_CARD.md); drop --no-eval")
    check_bundle_out(args.out, args.replace_bundled, "--out", "--replace-bundled")


def config_from_args(args: argparse.Namespace) -> TinyTrainConfig:
    cfg = quick_config(args.seed) if args.quick else default_config(args.seed)
    for attr, flag in EPOCH_FLAGS.items():
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value is not None:
            setattr(cfg, attr, replace(getattr(cfg, attr), epochs=value))
    if args.max_steps is not None:
        for attr in EPOCH_FLAGS:
            setattr(cfg, attr, replace(getattr(cfg, attr), max_steps=args.max_steps))
    return cfg


@command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    with output_lock(args.out, OWNER):  # one run at a time on this folder
        if args.render_card:
            path = rerender_model_card(args.out)
            record_output_files(args.out, [CARD_NAME], OWNER)  # the card is still this command's own file
            print(f"[train_tiny] re-rendered {path}")
            return 0
        return _train(args, argv)


def _train(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = config_from_args(args)
    command_line = f"{PROG} " + " ".join(sys.argv[1:] if argv is None else list(argv))

    def announce(name: str) -> None:
        print(f"[train_tiny] {name} ...", flush=True)

    models, report = train_all(config, args.device, progress=not args.no_progress, evaluate=not args.no_eval, on_phase=announce)
    description = (
        f"tiny digits pair (seed {config.seed}): target d{config.target.depth} w{config.target.embed_dim} "
        f"({report.target.num_parameters:,} params), draft d{config.draft.depth} w{config.draft.embed_dim} "
        f"({report.draft.num_parameters:,} params), shared VQVAE vocab {config.vae.vocab_size} Cvae {config.vae.z_channels}, "
        "16x16 sklearn digits"
    )
    if args.quick:
        description += " [--quick smoke run, not for use]"
    report.command = command_line
    save_bundle(args.out, models, config, description, None if args.no_eval else report, args.replace_bundled)
    machine = report.machine
    print(f"[train_tiny] training took {report.train_seconds:.0f} s on {machine.device} ({machine.torch_threads} threads)")
    usage = [round(u) for u in report.vae.heldout_usage_per_stage]
    print(f"[train_tiny] VQVAE held-out L1 {report.vae.heldout_l1:.4f}, codebook usage per stage (%) {usage}")
    print(f"[train_tiny] classifier held-out accuracy {report.classifier.heldout_accuracy:.4f}")
    print(f"[train_tiny] held-out NLL: target {report.target.final_heldout_nll:.4f}, draft {report.draft.final_heldout_nll:.4f}")
    for role in ("target", "draft"):
        q = getattr(report, f"{role}_quality")
        if q is not None:
            print(f"[train_tiny] {role} cfg={q.cfg}: class-consistency {q.class_consistency.format()}, "
                  f"Fréchet {q.frechet_distance.format()}")
    print(f"[train_tiny] wrote {args.out}")
    return 0
