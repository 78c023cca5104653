"""The commands of ``eval``: ``python -m sdvar_lib.evaluate`` and ``python -m sdvar_lib.fid``.

``python -m sdvar_lib.evaluate --out outputs/evaluation``: quality (class-consistency, Fréchet
distance) against target passes for every decoder on the bundled pair
(:mod:`sdvar_lib.eval.evaluation`), written as ``evaluation.json`` / ``evaluation.md``.

``python -m sdvar_lib.fid``: FID, Inception Score and precision/recall of sample sets against a reference::

    python -m sdvar_lib.fid --samples DIR/samples.npz --reference VIRTUAL_imagenet256_labeled.npz
    python -m sdvar_lib.fid --samples sdvar/samples.npz target/samples.npz --reference target/samples.npz

Several ``--samples`` are scored against one reference (its features are computed once); a
``stats.json`` of the sampler beside a samples file adds the method and its target passes to the
table -- the quality-against-target-passes table at any scale -- when it records that very file
(its size and SHA-256); one that records another file is refused. Every row says how many images
it rests on; below the protocol's sizes a note says what the numbers can be compared with, and
FID of fewer images than the feature width + 1 is refused unless ``--allow-few``
(:mod:`sdvar_lib.eval.fid` documents the minimums and why). ``--out`` and ``--plot`` never write
over an existing file unless ``--replace``, and never over an input of the same command. Features: torch-fidelity's FID
InceptionV3 (``pip install "sdvar-workbench[fid]"``; ``--extractor-weights FILE`` without network),
or ``--extractor digits`` for the bundled pair (:mod:`sdvar_lib.eval.fid`). Do not substitute
torchvision's InceptionV3 weights: they give a different FID than the one papers report.

Every argument is checked before the first model call; a mistake is one argparse-style line.
``sdvar_lib/evaluate.py`` and ``sdvar_lib/fid.py`` are the commands' shims.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from sdvar_lib.eval.evaluation import (
    EvaluationReport,
    default_methods,
    evaluate_methods,
    real_reference_images,
    select_methods,
)
from sdvar_lib.eval.fid import (
    EXTRACTORS,
    REFERENCE_STATS,
    TORCH_FIDELITY_MISSING,
    Reference,
    load_extractor,
    sampler_stats,
    score_samples,
)
from sdvar_lib.eval.metrics import load_bundled_classifier
from sdvar_lib.models.checkpoints import CheckpointError, load_bundled, pick_device
from sdvar_lib.models.sampling import SamplingConfig, check_cfg
from sdvar_lib.samples.npz import npz_keys
from sdvar_lib.util.atomic import (
    atomic_folder,
    atomic_write_text,
    atomic_write_with,
    check_new_outputs,
    check_output_folder,
    output_lock,
)
from sdvar_lib.util.checks import SEED_LIMIT, check_int, check_int_sequence
from sdvar_lib.util.cli import check_run_device, command
from sdvar_lib.util.machine import MachineInfo

__all__ = ["DEFAULT_EXTRA_METHODS", "evaluate_parser", "evaluate_main", "fid_parser", "fid_main", "quality_table",
           "quality_figure"]


# ---- python -m sdvar_lib.evaluate ---------------------------------------------------------------
EVALUATE_PROG = "python -m sdvar_lib.evaluate"
DEFAULT_EXTRA_METHODS = ("target", "exact_g1", "exact_g2", "exact_g3", "exact_g4", "exact_adaptive")


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated method names, got {text!r}")
    return names


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=EVALUATE_PROG,
        description="Quality (class-consistency, Fréchet distance) against target passes for every decoder on the "
                    "bundled draft/target pair; writes evaluation.json and evaluation.md and prints the table.",
    )
    p.add_argument("--out", default=None,
                   help="output folder (evaluation.json, evaluation.md): new, empty or an earlier output of this command "
                        "holding nothing else (replaced as a whole); required unless --list-methods")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default 0 1 2 3 4)")
    p.add_argument("--samples", type=int, default=100, help="samples per seed and method (default 100)")
    p.add_argument("--batch-size", type=int, default=1, help="images per call of the main table (default 1)")
    p.add_argument("--methods", type=_names, default=None,
                   help="comma-separated subset of the default methods (default: all); see --list-methods")
    p.add_argument("--extra-batch-size", type=int, default=0,
                   help="also evaluate --extra-methods at this batch size (default 0: no extra table)")
    p.add_argument("--extra-methods", type=_names, default=list(DEFAULT_EXTRA_METHODS),
                   help=f"methods of the extra table (default {','.join(DEFAULT_EXTRA_METHODS)})")
    p.add_argument("--extra-samples", type=int, default=None, help="samples per seed of the extra table (default --samples)")
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=0.0)
    p.add_argument("--bundle-dir", default=None, help="folder of the bundled pair and classifier (default: the package's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (default 1)")
    p.add_argument("--device", default="cpu", help="device (default cpu)")
    p.add_argument("--list-methods", action="store_true", help="print the default methods and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log per method (INFO) to stderr")
    return p


@command(EVALUATE_PROG)
def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """``python -m sdvar_lib.evaluate``."""
    parser = evaluate_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s",
                        stream=sys.stderr)
    try:  # every argument before the first model call; a mistake is one line
        check_int(args.threads, "--threads", 1)
        check_int_sequence(args.seeds, "--seeds", 0, SEED_LIMIT - 1)
        check_int(args.samples, "--samples", 2)
        check_int(args.batch_size, "--batch-size", 1)
        check_int(args.extra_batch_size, "--extra-batch-size", 0)
        if args.extra_samples is not None:
            check_int(args.extra_samples, "--extra-samples", 2)
        check_cfg(args.cfg, "--cfg")
        SamplingConfig(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p)
        device = check_run_device(pick_device(args.device))
        pair = load_bundled(device=device, folder=args.bundle_dir)
        all_methods = default_methods(pair.target.num_stages)
        methods = all_methods if args.methods is None else select_methods(all_methods, args.methods)
        extra = select_methods(all_methods, args.extra_methods) if args.extra_batch_size else []
        if not args.list_methods:
            if args.out is None:
                raise ValueError("--out is required (the output folder)")
            check_output_folder(args.out, owner=EVALUATE_PROG, inputs=[args.bundle_dir] if args.bundle_dir else [])
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    if args.list_methods:
        for m in all_methods:
            print(f"{m.name:<16} {m.describe()}")
        return 0
    with output_lock(args.out, EVALUATE_PROG):  # one run at a time on this folder
        return _evaluate(args, argv, device, pair, methods, extra)


def _evaluate(args, argv: Sequence[str] | None, device: torch.device, pair, methods, extra) -> int:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    classifier = load_bundled_classifier(device=device, folder=args.bundle_dir)
    real, reference = real_reference_images()
    common = dict(seeds=args.seeds, cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, classifier=classifier,
                  real_img_B3HW=real)
    results = evaluate_methods(pair, methods, samples_per_seed=args.samples, batch_size=args.batch_size, **common)
    if extra:
        samples = args.extra_samples if args.extra_samples is not None else args.samples
        results += evaluate_methods(pair, extra, samples_per_seed=samples, batch_size=args.extra_batch_size, **common)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    report = EvaluationReport(
        pair_description=pair.description, num_stages=pair.target.num_stages, patch_nums=list(pair.target.patch_nums),
        cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, reference=reference,
        machine=MachineInfo.current(device), results=results,
        command=f"{EVALUATE_PROG} " + shlex.join(argv_list), wall_time_s=time.perf_counter() - t0,
    )
    out = Path(args.out)
    table = report.markdown()
    with atomic_folder(out, EVALUATE_PROG, inputs=[args.bundle_dir] if args.bundle_dir else []) as tmp:
        report.save(tmp / "evaluation.json")
        (tmp / "evaluation.md").write_text(table + "\n")
    print(f"wrote {out / 'evaluation.json'} and {out / 'evaluation.md'} ({report.wall_time_s:.0f} s)")
    print(table)
    return 0


# ---- python -m sdvar_lib.fid --------------------------------------------------------------------
FID_PROG = "python -m sdvar_lib.fid"


def fid_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=FID_PROG,
        description="FID, Inception Score and precision/recall (k=3) of sample sets (.npz, arr_0 uint8 (N, H, W, 3)) "
                    "against a reference batch (e.g. VIRTUAL_imagenet256_labeled.npz) or another sample set.",
        epilog="Numbers comparable with papers need --extractor inception (torch-fidelity's FID InceptionV3, the port of "
               "the evaluator's TensorFlow graph); torchvision's InceptionV3 weights give a different FID and must not "
               "be used for reported numbers.",
    )
    p.add_argument("--samples", nargs="+", required=True, help="sample .npz file(s) (arr_0)")
    p.add_argument("--reference", required=True, help="reference .npz (arr_0; its mu/sigma are used when present)")
    p.add_argument("--extractor", choices=EXTRACTORS, default="inception",
                   help="inception: torch-fidelity's FID InceptionV3 (default); digits: the bundled digit classifier")
    p.add_argument("--extractor-weights", default=None,
                   help="local weights file of the extractor (for inception: torch-fidelity's "
                        "weights-inception-2015-12-05-6726825d.pth, on machines without network)")
    p.add_argument("--reference-stats", choices=REFERENCE_STATS, default="auto",
                   help="auto: use mu/sigma stored in the reference (inception only), as the evaluator does; "
                        "images: recompute them from arr_0")
    p.add_argument("--metrics", default="fid,is,pr", help="comma-separated subset of fid,is,pr (default all)")
    p.add_argument("--batch-size", type=int, default=100, help="images per extractor call (default 100)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default=None, help="write the results as JSON here (a new file, unless --replace)")
    p.add_argument("--plot", default=None, help="write a PNG of FID against target passes per image (sets with stats.json; "
                                                "a new file, unless --replace)")
    p.add_argument("--replace", action="store_true",
                   help="let --out/--plot write over an existing file (never over an input of this command)")
    p.add_argument("--allow-few", action="store_true",
                   help="compute FID of fewer images than the feature width + 1 (a singular covariance: the number then "
                        "mostly measures the sample size); the notes still say so")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def quality_table(rows: Sequence[dict]) -> str:
    """Markdown: one row per sample set (method and passes from its ``stats.json`` when there is one)."""
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = ["| samples | method | images | target passes / image | draft passes / image | FID | IS | precision | recall |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s = r.get("sampler") or {}
        d = s.get("decoder_stats") or {}
        b = s.get("batch_size")
        draft = d["draft_passes_per_batch"] / b if d.get("draft_passes_per_batch") is not None and b else None
        lines.append(f"| {r['samples']} | {s.get('method', '-')} | {r['num_samples']} | "
                     f"{f(d.get('target_passes_per_image'), '.3f')} | {f(draft, '.3f')} | {r['fid']:.4f} | "
                     f"{f(r['inception_score'], '.3f')} | {f(r['precision'], '.4f')} | {f(r['recall'], '.4f')} |")
    return "\n".join(lines)


def _warn_if_class_sorted(samples: str, inception_score: bool) -> None:
    """The evaluator's IS takes consecutive splits of 5,000 images: class-sorted sets score lower than they are."""
    import numpy as np

    with np.load(samples) as z:
        labels = z["arr_1"] if "arr_1" in z.files else None
    if inception_score and labels is not None and labels.ndim == 1 and len(labels) > 5000 and len(np.unique(labels)) > 1 \
            and bool(np.all(np.diff(labels) >= 0)):
        print(f"note: {samples} is sorted by class (arr_1); its Inception Score over consecutive splits of 5,000 images "
              "is deflated. Sample with --label-order shuffled (the default) for a score comparable with papers.")


def quality_figure(rows: Sequence[dict]):
    """FID against target passes per image, one labelled point per sample set that has the sampler's stats.json."""
    from matplotlib.figure import Figure

    points = [(r["sampler"]["decoder_stats"]["target_passes_per_image"], r["fid"],
               f"{r['sampler']['method']} (N={r['num_samples']:,})")
              for r in rows if (r.get("sampler") or {}).get("decoder_stats", {}).get("target_passes_per_image") is not None]
    if not points:
        raise ValueError("--plot needs at least one samples file with the sampler's stats.json beside it")
    fig = Figure(figsize=(6.0, 4.2))
    ax = fig.subplots()
    for x, y, name in points:
        ax.plot(x, y, "o", color="#2b6cb0")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("target passes per image")
    counts = sorted({r["num_samples"] for r in rows})
    ax.set_ylabel("FID (lower is better)")
    if len(counts) > 1:  # FID is biased by 1/N: points of different N are not comparable
        ax.set_title(f"sets of {', '.join(f'{n:,}' for n in counts)} images: FIDs of different N are not comparable",
                     fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _fid_outputs(args) -> dict[str, Path]:
    """``--out`` and ``--plot`` (``OutputRefusedError``): new files, or ``--replace``; never an input, never each other."""
    inputs = [*args.samples, args.reference, *([args.extractor_weights] if args.extractor_weights else [])]
    return check_new_outputs({"--out": args.out, "--plot": args.plot}, inputs=inputs, replace=args.replace)


@command(FID_PROG)
def fid_main(argv: Sequence[str] | None = None) -> int:
    """``python -m sdvar_lib.fid``."""
    parser = fid_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if "fid" not in metrics or set(metrics) - {"fid", "is", "pr"}:
        parser.error(f"--metrics must include fid and may add is and pr, got {args.metrics!r}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    for path in [*args.samples, args.reference]:
        if not Path(path).is_file():
            parser.error(f"{path} does not exist")
        try:
            keys = npz_keys(path)
        except Exception as exc:  # not a zip archive
            parser.error(f"{path} is not an .npz archive ({type(exc).__name__})")
        if "arr_0" not in keys:
            parser.error(f"{path} holds no arr_0 (it holds {', '.join(keys) or 'nothing'})")
    if args.extractor_weights is not None and not Path(args.extractor_weights).is_file():
        parser.error(f"--extractor-weights {args.extractor_weights} does not exist")
    try:
        outputs = _fid_outputs(args)
        device = check_run_device(pick_device(args.device))
    except ValueError as exc:
        parser.error(str(exc))
    with contextlib.ExitStack() as locks:  # one run at a time on each output, from before the extractor loads
        for path in outputs.values():
            locks.enter_context(output_lock(path, FID_PROG))
        return _fid(parser, args, metrics, device)


def _fid(parser: argparse.ArgumentParser, args, metrics: list[str], device: torch.device) -> int:
    try:
        extractor = load_extractor(args.extractor, args.extractor_weights, device)
    except ImportError:
        parser.error(TORCH_FIDELITY_MISSING)
    except (ValueError, CheckpointError, FileNotFoundError, OSError) as exc:
        parser.error(str(exc).splitlines()[0])
    print(f"features: {extractor.describe()} on {device}")
    rows = []
    try:
        attached = []
        for samples in args.samples:  # before any feature: a stats.json of another set is refused up front
            stats, note = sampler_stats(samples)
            if note:
                print(f"note: {note}")
            attached.append(stats)
        reference = Reference.load(args.reference, extractor, args.batch_size, args.reference_stats,
                                   need_features="pr" in metrics, allow_few=args.allow_few)
        for samples, stats in zip(args.samples, attached):
            _warn_if_class_sorted(samples, "is" in metrics)
            report = score_samples(samples, reference, extractor, args.batch_size, metrics=metrics,
                                   allow_few=args.allow_few)
            rows.append(dict(report.to_dict(), sampler=stats))
            print(f"{samples}: {report.line()}; reference statistics from {report.reference_stats}")
            for note in report.notes:
                print(f"  note: {note}")
    except ValueError as exc:
        parser.error(str(exc).splitlines()[0])
    table = quality_table(rows)
    print()
    print(table)
    fig = None
    if args.plot is not None:
        try:
            fig = quality_figure(rows)
        except ValueError as exc:
            parser.error(str(exc))
    try:
        _fid_outputs(args)  # again: the scoring took a while, a file may have appeared since
    except ValueError as exc:
        parser.error(str(exc))
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(dict(reference=args.reference, extractor=extractor.describe(), rows=rows),
                                               indent=1) + "\n")
        print(f"wrote {args.out}")
    if fig is not None:
        atomic_write_with(args.plot, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
        print(f"wrote {args.plot}")
    return 0
