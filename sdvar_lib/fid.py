"""``python -m sdvar_lib.fid``: FID, Inception Score and precision/recall of sample sets against a reference.

    python -m sdvar_lib.fid --samples DIR/samples.npz --reference VIRTUAL_imagenet256_labeled.npz
    python -m sdvar_lib.fid --samples sdvar/samples.npz target/samples.npz --reference target/samples.npz

Several ``--samples`` are scored against one reference (its features are computed once); a
``stats.json`` of the sampler beside a samples file adds the method and its target passes to the
table -- the quality-against-target-passes table at any scale. Features: torch-fidelity's FID
InceptionV3 (``pip install "sdvar-workbench[fid]"``; ``--extractor-weights FILE`` without network),
or ``--extractor digits`` for the bundled pair. Do not substitute torchvision's InceptionV3 weights:
they give a different FID than the one papers report.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from sdvar_lib.eval.fid import (
    EXTRACTORS,
    REFERENCE_STATS,
    TORCH_FIDELITY_MISSING,
    Reference,
    load_extractor,
    score_samples,
)
from sdvar_lib.models.checkpoints import CheckpointError, pick_device
from sdvar_lib.samples.npz import npz_keys
from sdvar_lib.util.atomic import atomic_write_text, atomic_write_with, check_writable_dir

__all__ = ["build_parser", "main", "quality_table", "quality_figure"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sdvar_lib.fid",
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
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--plot", default=None, help="write a PNG of FID against target passes per image (sets with stats.json)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _stats_beside(samples: str) -> dict | None:
    path = Path(samples).with_name("stats.json")
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


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

    points = [(r["sampler"]["decoder_stats"]["target_passes_per_image"], r["fid"], r["sampler"]["method"])
              for r in rows if (r.get("sampler") or {}).get("decoder_stats", {}).get("target_passes_per_image") is not None]
    if not points:
        raise ValueError("--plot needs at least one samples file with the sampler's stats.json beside it")
    fig = Figure(figsize=(6.0, 4.2))
    ax = fig.subplots()
    for x, y, name in points:
        ax.plot(x, y, "o", color="#2b6cb0")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("target passes per image")
    ax.set_ylabel("FID (lower is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
    for name, value in (("--out", args.out), ("--plot", args.plot)):
        if value is not None:
            try:
                check_writable_dir(Path(value).parent, f"{name}'s folder")
            except ValueError as exc:
                parser.error(str(exc))
    try:
        device = pick_device(args.device)
        extractor = load_extractor(args.extractor, args.extractor_weights, device)
    except ImportError:
        parser.error(TORCH_FIDELITY_MISSING)
    except (ValueError, CheckpointError, FileNotFoundError, OSError) as exc:
        parser.error(str(exc).splitlines()[0])
    print(f"features: {extractor.describe()} on {device}")
    rows = []
    try:
        reference = Reference.load(args.reference, extractor, args.batch_size, args.reference_stats,
                                   need_features="pr" in metrics)
        for samples in args.samples:
            _warn_if_class_sorted(samples, "is" in metrics)
            report = score_samples(samples, reference, extractor, args.batch_size, metrics=metrics)
            row = dict(report.to_dict(), sampler=_stats_beside(samples))
            rows.append(row)
            print(f"{samples}: {report.line()}; reference statistics from {report.reference_stats}")
    except ValueError as exc:
        parser.error(str(exc).splitlines()[0])
    table = quality_table(rows)
    print()
    print(table)
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(dict(reference=args.reference, extractor=extractor.describe(), rows=rows),
                                               indent=1) + "\n")
        print(f"wrote {args.out}")
    if args.plot is not None:
        try:
            fig = quality_figure(rows)
        except ValueError as exc:
            parser.error(str(exc))
        atomic_write_with(args.plot, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
