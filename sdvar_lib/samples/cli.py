"""``python -m sdvar_lib.sample``: a sample set of any decoder, on one process or many (``torchrun``).

    python -m sdvar_lib.sample --models official --method exact_adaptive --per-class 50 --batch-size 32 --out DIR
    torchrun --nproc-per-node 8 -m sdvar_lib.sample --models official --method target --out DIR

Defaults follow VAR's evaluation protocol (50 images per class over every class, cfg 1.5, top-k 900,
top-p 0.96, ``more_smooth`` off). ``DIR/samples.npz`` (``arr_0``: uint8 ``(N, H, W, 3)``, ``arr_1``:
labels) is what the OpenAI guided-diffusion evaluator and ``python -m sdvar_lib.fid`` read. See
:mod:`sdvar_lib.samples.sampler` for the seed and label scheme, the folder layout and resuming.
``sdvar_lib/sample.py`` is the command's shim.
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

import torch

from sdvar_lib.models.checkpoints import MODEL_CHOICES, load_pair, pick_device
from sdvar_lib.models.presets import OFFICIAL_DEPTHS, ModelPair
from sdvar_lib.models.sampling import SamplingConfig, check_cfg
from sdvar_lib.samples.distributed import DistContext, init_distributed
from sdvar_lib.samples.sampler import (
    DTYPES,
    ENGINES,
    LABEL_ORDERS,
    SEED_STRIDE,
    VAR_PROTOCOL,
    BatchSampler,
    Progress,
    SampleFolder,
    SampleFolderError,
    SampleIdentity,
    SampleJob,
    SamplePlan,
    run_job,
)
from sdvar_lib.sdvar.registry import get_method, method_names
from sdvar_lib.util.atomic import output_lock
from sdvar_lib.util.cli import RUNTIME, check_run_device, command

__all__ = ["PROG", "parse_classes", "build_parser", "main"]

PROG = "python -m sdvar_lib.sample"


def parse_classes(text: str) -> tuple[int, ...]:
    """``"0-9,15,20-29"`` -> class ids (ranges inclusive); ``ValueError`` for anything else."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"--classes takes comma-separated class ids and ranges such as 0-9,15,20-29; got {text!r}")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(f"--classes: range {part!r} runs backwards")
        out.extend(range(a, b + 1))
    if len(set(out)) != len(out):
        raise ValueError(f"--classes names a class twice: {text!r}")
    return tuple(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Sample a set of images with any registered decoder (one process, or many under torchrun) into "
                    "DIR/samples.npz (arr_0: uint8 (N, H, W, 3), arr_1: labels) with DIR/stats.json; resumable.",
        epilog=f"Batch b uses g_seed = seed * {SEED_STRIDE} + b and the labels of images b*B .. b*B+B-1, so a given batch "
               "size gives the same set for any number of processes. Methods: "
               f"{', '.join(method_names())}; by pattern exact_g<N>, top1_<t>_g<N>, relaxed_<budget>_g<N>, "
               "test3_e<N>, code_e<N>.",
    )
    p.add_argument("--models", choices=MODEL_CHOICES, default="bundled",
                   help="bundled tiny digits pair (default), official checkpoints (./checkpoints, $SDVAR_CKPT_DIR or the "
                        "hub), random-official (official sizes, random weights: for timing) or tiny-random (the tests' "
                        "tiny random pair)")
    p.add_argument("--draft-depth", type=int, default=16, choices=OFFICIAL_DEPTHS, help="official draft depth (16)")
    p.add_argument("--target-depth", type=int, default=30, choices=OFFICIAL_DEPTHS, help="official target depth (30)")
    p.add_argument("--ckpt-dir", default=None, help="folder of the official checkpoint files")
    p.add_argument("--no-download", action="store_true", help="never try the hub for missing official files")
    p.add_argument("--method", required=False, help="decoder method name (see --list-methods)")
    p.add_argument("--per-class", type=int, default=50, help="images per class (default 50)")
    p.add_argument("--classes", default=None, help="class ids, e.g. 0-99 or 1,5,7 (default: every class)")
    p.add_argument("--batch-size", type=int, default=32, help="images per decoder call (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the set (default 0)")
    p.add_argument("--label-order", choices=LABEL_ORDERS, default="shuffled",
                   help="shuffled (default): the per-class labels in an order permuted by --seed, so that consecutive "
                        "images (the evaluator's IS splits, the decoder's batches) mix classes; sorted: class after class")
    p.add_argument("--cfg", type=float, default=VAR_PROTOCOL.cfg, help="classifier-free guidance (default 1.5)")
    p.add_argument("--top-k", type=int, default=None,
                   help="top-k (default 900, VAR's protocol; a smaller vocabulary such as the bundled pair's 256 uses "
                        "min(900, V) and says so; 0 disables)")
    p.add_argument("--top-p", type=float, default=VAR_PROTOCOL.top_p, help="top-p (default 0.96; 0 disables)")
    p.add_argument("--more-smooth", action="store_true", help="Gumbel smoothing (visuals only; off in the protocol)")
    p.add_argument("--out", required=False, help="output folder (resumed when it holds a set of the same arguments)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda:LOCAL_RANK when available)")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="fast: static caches and CUDA graphs (default on CUDA); eager: the library's eager path "
                        "(default on the CPU)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="VAR weights on the fast path (default bfloat16 on CUDA)")
    p.add_argument("--png", action="store_true",
                   help="also write DIR/png/ (one PNG per image; a rerun writes it unless it already holds exactly "
                        "this set's PNGs; a png/ the sampler did not write is refused)")
    p.add_argument("--keep-shards", action="store_true", help="keep DIR/shards/ after samples.npz is assembled")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list-methods", action="store_true", help="print the registered methods and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log (INFO) to stderr")
    return p


def _models_label(args) -> str:
    if args.models in ("bundled", "tiny-random"):
        return args.models
    return f"{args.models} d{args.draft_depth}->d{args.target_depth}"


def _sampling(args, vocabulary: int | None) -> tuple[SamplingConfig, str | None]:
    """The sampling settings; the default top-k becomes ``min(900, V)`` with a note (an explicit one is never changed)."""
    note = None
    top_k = args.top_k
    if top_k is None:
        top_k = VAR_PROTOCOL.top_k
        if vocabulary is not None and vocabulary < top_k:
            note = (f"note: top-k {vocabulary} instead of VAR's default 900, which exceeds this pair's vocabulary of "
                    f"{vocabulary} (pass --top-k to choose)")
            top_k = vocabulary
    return SamplingConfig(cfg=args.cfg, top_k=top_k, top_p=args.top_p, more_smooth=args.more_smooth), note


def _validate(parser: argparse.ArgumentParser, args) -> None:
    """Every check that needs no model (one argparse-style line per mistake)."""
    if args.list_methods:
        return
    if args.method is None or args.out is None:
        parser.error("the following arguments are required: " + ", ".join(
            n for n, v in (("--method", args.method), ("--out", args.out)) if v is None))
    try:
        get_method(args.method)
    except ValueError as exc:
        parser.error(f"--method: {exc}")
    if args.per_class < 1:
        parser.error(f"--per-class must be >= 1, got {args.per_class}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.classes is not None:
        try:
            args.class_ids = parse_classes(args.classes)
        except ValueError as exc:
            parser.error(str(exc))
    else:
        args.class_ids = None
    if args.top_k is not None and args.top_k < 0:
        parser.error(f"--top-k must be >= 0, got {args.top_k}")
    try:
        check_cfg(args.cfg, "--cfg")
        _sampling(args, None)
        SamplePlan(method=args.method, classes=args.class_ids or (0,), per_class=args.per_class,
                   batch_size=args.batch_size, seed=args.seed, label_order=args.label_order)
        device = check_run_device(pick_device(args.device))
        engine, dtype = BatchSampler.resolve(args.engine, args.dtype, device, names=("--engine", "--dtype"))
        known = SampleIdentity(method=args.method, models=_models_label(args), classes=args.class_ids,
                               per_class=args.per_class, batch_size=args.batch_size, seed=args.seed,
                               label_order=args.label_order, cfg=args.cfg, top_k=args.top_k, top_p=args.top_p,
                               more_smooth=args.more_smooth, engine=engine, dtype=dtype, device_type=device.type)
        folder = SampleFolder(args.out)
        folder.check(known, verify=False)  # (sizes only: run_job verifies a complete set's hashes)
        if args.png:
            folder.check_png_folder()
    except (TypeError, ValueError, RuntimeError) as exc:
        parser.error(str(exc).splitlines()[0])


def _load(args, device: torch.device) -> ModelPair:
    return load_pair(args.models, args.draft_depth, args.target_depth, device=device, ckpt_dir=args.ckpt_dir,
                     download=not args.no_download)


class ProgressBar:
    """A one-line progress bar on stderr (rewritten in place on a terminal, a line every 10 s otherwise)."""

    def __init__(self, stream=None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = 0.0

    @staticmethod
    def _hms(seconds: float | None) -> str:
        if seconds is None:
            return "?"
        s = int(round(seconds))
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        final = p.done_images >= p.total_images
        if not self.tty and not final and now - self._last < 10:
            return
        self._last = now
        filled = int(self.width * p.done_images / max(p.total_images, 1))
        line = (f"[{'#' * filled}{'.' * (self.width - filled)}] {p.done_images}/{p.total_images} images  "
                f"{p.images_per_s:.2f} img/s  remaining {self._hms(p.eta_s)}")
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        if self.tty and final:
            self.stream.write("\n")
        self.stream.flush()


def _summary(stats: dict, out: str) -> list[str]:
    d, s = stats["decoder_stats"], stats["session"]
    acc = " ".join("-" if a is None else f"{a:.2f}" for a in d["token_acceptance_per_stage"])
    lines = [
        f"wrote {out}/samples.npz ({stats['num_images']} images {'x'.join(map(str, stats['image_shape']))}, "
        f"{stats['num_classes']} classes) and {out}/stats.json",
        f"method {stats['method']} ({stats['description']}): {d['target_passes_per_batch']:.2f} target and "
        f"{d['draft_passes_per_batch']:.2f} draft passes per batch of {stats['batch_size']}",
    ]
    if any(a is not None for a in d["token_acceptance_per_stage"]):
        lines.append(f"token acceptance per stage: {acc}")
    if s["images"]:
        lines.append(f"this session: {s['images']} images on {s['world_size']} process(es) in {s['wall_time_s']:.1f} s "
                     f"= {s['images_per_s']:.2f} images/s (setup {s['setup_s']:.1f} s; {s['resumed_batches']} batches "
                     "were already done)")
    return lines


@command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.list_methods:
        for name in method_names():
            print(f"{name:<18} {get_method(name).describe()}")
        return 0
    _validate(parser, args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        dist: DistContext = init_distributed(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        return _run(parser, args, dist, argv)
    finally:
        dist.shutdown()


def _run(parser: argparse.ArgumentParser, args, dist: DistContext, argv) -> int:
    """Rank 0 holds the lock of ``--out`` (beside it) for the whole job, from before the models load."""
    with contextlib.ExitStack() as stack:
        error = None
        if dist.is_main:
            try:
                stack.enter_context(output_lock(args.out, PROG))
            except BaseException as exc:  # every rank must hear of it, or the others would wait for rank 0
                error = exc
        failed = dist.broadcast(error is not None)
        if error is not None:
            raise error
        if failed:
            return RUNTIME  # rank 0 says why
        return _sample(parser, args, dist, argv)


def _sample(parser: argparse.ArgumentParser, args, dist: DistContext, argv) -> int:
    say = print if dist.is_main else (lambda *a, **k: None)
    pair = _load(args, dist.device)
    if pair.fallback_reason:
        say(f"FALLBACK: {pair.fallback_reason}; sampling the bundled pair instead ({pair.description})")
    else:
        say(f"models: {pair.description} on {dist.device} ({dist.world_size} process(es))")
    sampling, note = _sampling(args, pair.target.V)
    if note:
        say(note)
    classes = args.class_ids if args.class_ids is not None else tuple(range(pair.target.num_classes))
    argv_list = list(sys.argv[1:] if argv is None else argv)
    try:
        plan = SamplePlan(method=args.method, classes=classes, per_class=args.per_class, batch_size=args.batch_size,
                          seed=args.seed, sampling=sampling, label_order=args.label_order)
        job = SampleJob(plan=plan, out=args.out, models=_models_label(args), engine=args.engine, dtype=args.dtype,
                        png=args.png, keep_shards=args.keep_shards,
                        command=f"{PROG} " + shlex.join(argv_list))
        bad = [c for c in classes if c >= pair.target.num_classes]
        if bad:
            raise ValueError(f"--classes: {_few(bad)} do not exist, the pair has {pair.target.num_classes} classes "
                             f"(0-{pair.target.num_classes - 1})")
        if sampling.top_k > pair.target.V:
            raise ValueError(f"--top-k must be in [0, {pair.target.V}] (this pair's vocabulary), got {sampling.top_k}")
        get_method(args.method).check_for(pair.target.num_stages)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc).splitlines()[0])
    say(f"{plan.num_images} images ({len(classes)} classes x {plan.per_class}), {plan.num_batches} batches of "
        f"{plan.batch_size}, method {args.method}, cfg {sampling.cfg:g}, top-k {sampling.top_k}, top-p {sampling.top_p:g}")
    progress = ProgressBar() if dist.is_main and not args.no_progress else None
    try:
        result = run_job(job, pair, dist, on_progress=progress)
    except SampleFolderError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if dist.is_main:  # (run_job checked the folder against the full arguments on rank 0 and told every rank)
        if result.state == "complete":
            say(f"{args.out} already holds the complete set ({result.samples_path}, verified against its manifest); "
                "nothing to do")
        elif result.stats is not None:
            for line in _summary(result.stats, args.out):
                say(line)
        if result.png == "written":
            say(f"wrote {args.out}/png ({result.stats['num_images']} PNGs)")
        elif result.png == "present":
            say(f"{args.out}/png already holds the {result.stats['num_images']} PNGs of this set")
        if result.stats is not None and args.verbose:
            print(json.dumps(result.stats["session"], indent=1), file=sys.stderr)
    return 0


def _few(values: Sequence[int]) -> str:
    return ", ".join(map(str, values[:5])) + (f" and {len(values) - 5} more" if len(values) > 5 else "")
