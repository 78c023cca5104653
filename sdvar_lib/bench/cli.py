"""The commands of ``bench``: ``python -m sdvar_lib.bench`` and ``python -m sdvar_lib.bench_plot``.

``python -m sdvar_lib.bench`` (:func:`main`): GPU benchmark of the decoders at the official sizes, with
physical bounds. Every argument is checked (:class:`~sdvar_lib.bench.config.BenchConfig`, the ``--out``
folder) before the first model call, and before the check for CUDA; a mistake is one argparse-style
line. Without CUDA the command stops with one line. ``--out`` is a folder this command owns
(:func:`~sdvar_lib.util.atomic.check_output_folder`: new, empty, or an earlier output of this command
holding nothing else); after every row it is replaced as a whole (:func:`~sdvar_lib.util.atomic.atomic_folder`)
by ``bench.json`` / ``bench.md`` so far (and ``profile.*`` at the end), and the run holds its lock
throughout: a second run on the same folder is refused.

``python -m sdvar_lib.bench_plot`` (:func:`plot_main`): latency against batch size from a ``bench.json``
(:mod:`sdvar_lib.viz.latency`). It never writes over the report, nor over an existing image unless
``--replace`` is given, and refuses a ``--series`` the report does not hold (naming those it holds).

A failure of the disk or the permissions ends either command with one line (:func:`sdvar_lib.util.cli.command`).

``sdvar_lib/bench/__main__.py`` and ``sdvar_lib/bench_plot.py`` are the commands' shims.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from sdvar_lib.bench.components import COMPONENTS
from sdvar_lib.bench.config import BenchConfig
from sdvar_lib.bench.core import run_bench
from sdvar_lib.bench.methods import BENCH_ONLY_ROWS, DEFAULT_METHODS
from sdvar_lib.bench.profile import profile_decodes, profile_targets, write_profiles
from sdvar_lib.bench.report import BenchReport, format_list, write_report
from sdvar_lib.bench.scenarios import SCENARIOS
from sdvar_lib.models.sampling import check_cfg
from sdvar_lib.util.atomic import atomic_folder, check_new_output, check_output_folder, output_lock
from sdvar_lib.util.cli import command, describe_os_error
from sdvar_lib.viz.latency import canonical_method_name, load_points, plot_latency_vs_batch

__all__ = ["build_parser", "config_from_args", "main", "plot_parser", "plot_main"]

PROG = "python -m sdvar_lib.bench"
PLOT_PROG = "python -m sdvar_lib.bench_plot"
REPORT_FILES = ("bench.json", "bench.md")
"""The report in ``--out``, rewritten after every row; ``profile.md``/``profile.json`` join it at the end."""
DESCRIPTION = ("GPU benchmark of the decoders at the official sizes (random bf16 weights): latency, memory and the "
               "physical lower bound of every row")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from exc


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _pairs(text: str) -> tuple[tuple[int, int], ...]:
    try:
        return tuple((int(a), int(b)) for a, b in (p.split(":") for p in text.split(",") if p.strip()))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected draft:target depth pairs like 16:30,16:24, got {text!r}") from exc


def _str_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    p.add_argument("--pairs", type=_pairs, default=((16, 30), (16, 24)), help="draft:target depths (default 16:30,16:24)")
    p.add_argument("--batches", type=_int_list, default=(1, 8, 32), help="batch sizes (default 1,8,32)")
    p.add_argument("--methods", type=_str_list, default=DEFAULT_METHODS,
                   help=f"comma-separated rows (default {','.join(DEFAULT_METHODS)}): any registry method "
                        f"(sdvar_lib.get_method: exact_g<N>, test3_e<N>, code_e<N>, ...) or {', '.join(BENCH_ONLY_ROWS)}; "
                        "older names (sdvar_g2, sdvar_adaptive, sdvar_adaptive_cal) still work")
    p.add_argument("--scenarios", type=_str_list, default=None,
                   help=f"SDVAR acceptance, of {','.join(SCENARIOS)}: exact (the method's own policy), all (every "
                        "proposal accepted), profile (default exact,all plus profile when --acceptance-profile is given)")
    p.add_argument("--acceptance-profile", type=_float_list, default=None,
                   help="per-stage probability that a proposed stage is accepted, e.g. 1,1,1,0.9,0.8,...")
    p.add_argument("--acceptance-per-sample", action="store_true",
                   help="draw the scenario acceptance per sample instead of once per stage for the batch")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--passes-only-repeats", type=int, default=5, help="0 disables the transformer-only replay timing")
    p.add_argument("--calibration-calls", type=int, default=2,
                   help="exact_calibrated: target-alone calls per batch and SDVAR calls per scenario measured before "
                        "timing (default 2)")
    p.add_argument("--calibration-replays", type=int, default=3,
                   help="exact_calibrated: timed graph replays per chunk (median; default 3)")
    p.add_argument("--top-k", type=int, default=900)
    p.add_argument("--top-p", type=float, default=0.96)
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--no-cuda-graphs", action="store_true", help="fast path without graphs (diagnostics)")
    p.add_argument("--no-graph-decode", action="store_true", help="fast-path rows decode eagerly too")
    p.add_argument("--autocast-decode", action="store_true",
                   help="fast-path rows decode with the reference decode under bf16 autocast instead of the fast decode")
    p.add_argument("--no-cudnn-benchmark", action="store_true", help="leave torch.backends.cudnn.benchmark off")
    p.add_argument("--out", default="bench_out",
                   help="output folder (bench.json, bench.md, profile.*; default bench_out): new, empty or an earlier "
                        "output of this command holding nothing else (replaced as a whole)")
    p.add_argument("--profile-stages", type=_int_list, default=(),
                   help="after the bench, profile the single-stage passes of these stages of each pair's target "
                        "(graph replay time and kernel breakdown) at every batch size; written to profile.md")
    p.add_argument("--profile-decode", action="store_true",
                   help="after the bench, profile the fast VQVAE decode's kernels at every batch size (profile.md)")
    p.add_argument("--components", type=_str_list, default=(),
                   help=f"pieces of a call timed alone per pair and batch, of {','.join(COMPONENTS)}: decode (reference "
                        "against fast decode, graphed, with its bound), sampling (the last stage's draw: PyTorch kernels "
                        "against the fused kernel), host (host time by operator of one target call)")
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` of parsed arguments (raises ``ValueError``/``TypeError`` for bad values)."""
    scenarios = args.scenarios
    if scenarios is None:
        scenarios = ("exact", "all") + (("profile",) if args.acceptance_profile is not None else ())
    return BenchConfig(
        pairs=args.pairs, batches=args.batches, methods=args.methods, scenarios=scenarios,
        acceptance_profile=args.acceptance_profile, per_sample_acceptance=args.acceptance_per_sample,
        repeats=args.repeats, warmup=args.warmup, passes_only_repeats=args.passes_only_repeats,
        calibration_calls=args.calibration_calls, calibration_replays=args.calibration_replays, top_k=args.top_k,
        top_p=args.top_p, cfg=args.cfg, use_cuda_graphs=not args.no_cuda_graphs,
        graph_decode=not args.no_graph_decode, fast_decode=not args.autocast_decode,
        cudnn_benchmark=not args.no_cudnn_benchmark, out=args.out,
        profile_stages=args.profile_stages, profile_decode=args.profile_decode, components=args.components,
    )


def _print_summary(report: BenchReport, table: str) -> None:
    print(table)
    if report.calibrations:
        print("calibrated priors and gamma per round of one timed call:")
        for c in report.calibrations:
            print(f"  {c.pair} B={c.batch} {c.scenario}: priors [{format_list(c.priors, 3)}] ({c.prior_source}); "
                  f"step {c.step_overhead_ms:.3f} ms, round {c.round_overhead_ms:.3f} ms; runs as {c.dispatch}; "
                  f"gamma/round {c.gamma_per_round}")


def _write_out(out: Path, write: Callable[[Path], str], keep: Sequence[str] = ()) -> str:
    """Replace the whole ``--out`` folder (an earlier output of this command, or new) by what ``write`` puts in it."""
    with atomic_folder(out, PROG, keep=keep) as tmp:
        text = write(tmp)
    return text


@command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_cfg(args.cfg, "--cfg")
        config = config_from_args(args)
        out = check_output_folder(config.out, "--out", owner=PROG)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    if not torch.cuda.is_available():
        parser.exit(2, f"{parser.prog}: error: the benchmark needs a CUDA GPU (torch.cuda.is_available() is False); "
                       "the official-size models cannot be timed on the CPU\n")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    command = f"{PROG} {shlex.join(argv)}".rstrip()
    with output_lock(out, PROG):  # one run at a time on this folder, from before the first model call
        report = run_bench(config, command, on_progress=lambda partial: _write_out(out, lambda tmp: write_report(partial, tmp)))
        table = _write_out(out, lambda tmp: write_report(report, tmp))
        if config.profile_stages or config.profile_decode:
            device = torch.device("cuda")
            profiles = profile_targets([t for _, t in config.pairs], config.batches, config.profile_stages,
                                       report.ceilings, device) if config.profile_stages else []
            decodes = profile_decodes(config.batches, device) if config.profile_decode else []
            print(_write_out(out, lambda tmp: write_profiles(profiles, tmp, decodes), keep=REPORT_FILES))
    _print_summary(report, table)
    return 0


# ---- python -m sdvar_lib.bench_plot -------------------------------------------------------------
def plot_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PLOT_PROG,
                                description="Latency vs batch size per method from a ``python -m sdvar_lib.bench`` JSON report.")
    p.add_argument("report", help="bench.json written by python -m sdvar_lib.bench")
    p.add_argument("--out", default=None,
                   help="image file, .png/.svg/.pdf (default: latency.png beside the report); never the report itself")
    p.add_argument("--replace", action="store_true", help="overwrite --out if it exists (default: refuse)")
    p.add_argument("--series", default=None,
                   help="comma-separated series to draw, as the report names them (default all)")
    return p


def _series_name(name: str) -> str:
    """A series as the report's points name it (older method names allowed, see viz.latency)."""
    method, sep, rest = name.partition(" [")
    return canonical_method_name(method) + sep + rest


@command(PLOT_PROG)
def plot_main(argv: Sequence[str] | None = None) -> int:
    """``python -m sdvar_lib.bench_plot``."""
    parser = plot_parser()
    args = parser.parse_args(argv)
    try:
        points = load_points(args.report)
    except OSError as exc:
        parser.error(f"report {describe_os_error(exc)}")
    except ValueError as exc:  # not JSON, or no rows (load_points names the file)
        text = str(exc).splitlines()[0]
        parser.error(text if args.report in text else f"report {args.report!r} is not JSON ({text})")
    except (KeyError, TypeError) as exc:
        detail = f"a row has no {exc}" if isinstance(exc, KeyError) else f"a row is not as {PROG} writes it: {exc}"
        parser.error(f"report {args.report!r} is not a bench JSON report ({detail})")
    if not points:
        parser.error(f"report {args.report!r} holds no timed rows: nothing to plot")
    out = args.out if args.out is not None else str(Path(args.report).with_name("latency.png"))
    series = None
    if args.series is not None:
        series = [s.strip() for s in args.series.split(",") if s.strip()]
        known = list(dict.fromkeys(p.series for p in points))
        unknown = [s for s in series if _series_name(s) not in known]
        if not series or unknown:
            what = f"names no series ({args.series!r})" if not series else f"{', '.join(map(repr, unknown))} not in the report"
            parser.error(f"--series: {what}; the report holds {', '.join(known)}")
    try:
        check_new_output(out, "--out", inputs=[args.report], replace=args.replace)
    except ValueError as exc:
        parser.error(str(exc))
    from matplotlib.backend_bases import FigureCanvasBase

    kinds = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(out).suffix[1:].lower()
    if suffix and suffix not in kinds:
        parser.error(f"--out {out!r}: matplotlib cannot write .{suffix} files; use one of .{', .'.join(sorted(kinds))}")
    with output_lock(out, PLOT_PROG):
        print(plot_latency_vs_batch(points, out, series))
    return 0
