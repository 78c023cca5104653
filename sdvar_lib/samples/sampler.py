"""Sample sets at scale: any registered decoder, one process or many, resumable, in VAR's evaluation format.

The set is planned by global image index, independently of how many processes make it:

- every class gets ``per_class`` images (VAR's protocol: 50 per class). With
  ``label_order="shuffled"`` (the default) image ``i`` (``0 <= i < N``, ``N = len(classes) *
  per_class``) has the class ``sorted_labels[perm[i]]``, where ``sorted_labels`` lists each class
  ``per_class`` times class after class and ``perm = torch.randperm(N)`` from a CPU generator seeded
  with ``seed``; with ``"sorted"`` it has ``classes[i // per_class]``. Shuffled is the default
  because the evaluator's Inception Score takes consecutive splits of 5,000 images of ``arr_0``
  (class-sorted images would score a deflated IS) and because a batch then mixes classes as a
  served batch would (SDVAR's acceptance is shared by the batch);
- batch ``b`` holds images ``b * B .. (b + 1) * B - 1`` and is one decoder call with
  ``g_seed = seed * SEED_STRIDE + b`` and those labels. The last batch is filled up to ``B`` with
  the labels of images ``N, N + 1, ...`` taken modulo ``N`` (those extra images are dropped), so
  every call has the same shape (one set of CUDA graphs).

A batch's labels and random stream therefore depend on ``(seed, b)`` alone: for a given batch size
the set is identical whatever the world size and whichever rank makes the batch. SDVAR's rounds
are shared by a batch (a stage is committed from the proposals only when every sample accepts it),
so another batch size draws a different -- equally distributed for the lossless decoders -- set.

Output folder (``--out DIR``)::

    manifest.json     what defines the set (method, models, classes, seed, sampling, engine, ...) and its set id;
                      once complete, the size and SHA-256 of samples.npz, stats.json and every shard
    shards/batch_000123.npz   one per batch: images uint8 (b, H, W, 3), labels, indices, decoder statistics,
                      and its set id, batch, g_seed and the SHA-256 of its images
    samples.npz       arr_0: uint8 (N, H, W, 3) (the OpenAI guided-diffusion evaluator's input), arr_1: labels
    stats.json        decoder statistics over the whole set and this session's timing, reduced over ranks, and
                      the size and SHA-256 of the samples.npz they describe
    png/              optional: one PNG per image (RGB, as arr_0)

Every file is renamed into place when complete (:mod:`sdvar_lib.util.atomic`); a restart with the
same arguments skips the batches whose shard exists (each checked to be that batch of this set
first), a folder made with other arguments is refused, and an interrupt loses at most the batches
in flight. ``samples.npz`` is assembled at the end (by rank 0), after which the shards are removed
unless ``keep_shards``. A rerun on a complete set verifies ``samples.npz`` and ``stats.json``
against the manifest (:meth:`SampleFolder.verify_complete`) and refuses a changed or truncated
one; with ``png`` it writes ``png/`` unless it already holds exactly this set's PNGs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from sdvar_lib.fast.factory import FastRunFactory
from sdvar_lib.fast.graphs import GraphedDecode
from sdvar_lib.fast.setup import fast_dtype, make_pair_sdvar, precapture
from sdvar_lib.models.presets import ModelPair
from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.samples.distributed import DistContext
from sdvar_lib.samples.npz import NpzArrayReader, NpzMember, write_npz_stream
from sdvar_lib.samples.plan import LABEL_ORDERS, SEED_STRIDE, VAR_PROTOCOL, BatchSpec, SamplePlan
from sdvar_lib.samples.shards import FileRecord, SampleFolder, SampleFolderError, SampleIdentity, Shard
from sdvar_lib.sdvar.decoder import SDVAR
from sdvar_lib.sdvar.registry import Method, get_method
from sdvar_lib.sdvar.stats import PooledStats, SDVAROutput
from sdvar_lib.util.atomic import atomic_folder, atomic_write_text
from sdvar_lib.util.checks import check_bool, check_choice

log = logging.getLogger(__name__)

__all__ = [
    "SEED_STRIDE",
    "LABEL_ORDERS",
    "VAR_PROTOCOL",
    "ENGINES",
    "DTYPES",
    "SamplePlan",
    "BatchSpec",
    "SampleIdentity",
    "Shard",
    "SampleFolder",
    "SampleFolderError",
    "images_to_uint8",
    "BatchSampler",
    "RankSession",
    "Progress",
    "decoder_stats",
    "SampleJob",
    "JobResult",
    "run_job",
    "write_pngs",
]

ENGINES = ("auto", "eager", "fast")
DTYPES = ("float32", "bfloat16", "float16")


# ---- making one batch -----------------------------------------------------------------------------
def images_to_uint8(images_B3HW: torch.Tensor) -> np.ndarray:
    """Images in ``[0, 1]`` to uint8 ``(B, H, W, 3)`` (``round(255 x)``, as ``torchvision.utils.save_image``)."""
    u8 = images_B3HW.float().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
    return u8.permute(0, 2, 3, 1).contiguous().cpu().numpy()


class BatchSampler:
    """Runs one batch of a method on a pair: the eager path, or the CUDA fast path (bf16, graphs, graphed decode).

    :meth:`build` converts the VARs to ``dtype`` for the fast path and captures every pass shape the
    method uses (:meth:`Method.chunks`) ahead of the first call. The VQVAE stays float32 and runs
    without autocast (its decode is one graph per batch shape), so the images are not rounded to
    bf16 before they become uint8; the transformer's logits are float32 on either path.
    """

    def __init__(self, pair: ModelPair, method: Method, sampling: SamplingConfig, batch_size: int, engine: str,
                 dtype: str, sd: SDVAR, factory: FastRunFactory | None, decode: GraphedDecode | None) -> None:
        self.pair, self.method, self.sampling, self.batch_size = pair, method, sampling, batch_size
        self.engine, self.dtype, self.sd, self.factory, self.decode = engine, dtype, sd, factory, decode

    @staticmethod
    def resolve(engine: str, dtype: str | None, device: torch.device,
                names: tuple[str, str] = ("engine", "dtype")) -> tuple[str, str]:
        """``(engine, dtype)`` with ``auto``/``None`` resolved: the fast path on CUDA (bf16 where the GPU has it,
        else fp16: :func:`~sdvar_lib.fast.setup.fast_dtype`), eager float32 on the CPU. A message names the two
        arguments as ``names`` says (a command passes its flags)."""
        engine_name, dtype_name = names
        check_choice(engine, engine_name, ENGINES)
        if engine == "auto":
            engine = "fast" if device.type == "cuda" else "eager"
        if dtype is None:
            dtype = str(fast_dtype(device)).removeprefix("torch.") if engine == "fast" else "float32"
        check_choice(dtype, dtype_name, DTYPES)
        if engine == "eager" and dtype != "float32":
            raise ValueError(f"{dtype_name} {dtype} needs the fast engine ({engine_name} fast); the eager path runs "
                             "float32")
        return engine, dtype

    @classmethod
    def build(cls, pair: ModelPair, method: Method, sampling: SamplingConfig, batch_size: int,
              engine: str = "auto", dtype: str | None = None) -> BatchSampler:
        device = pair.target.device
        engine, dtype = cls.resolve(engine, dtype, device)
        S = pair.target.num_stages
        method.check_for(S)
        sampling.check_vocabulary(pair.target.V)
        sd = make_pair_sdvar(pair, fast=engine == "fast", dtype=getattr(torch, dtype))
        if engine == "eager":
            return cls(pair, method, sampling, batch_size, engine, dtype, sd, None, None)
        t0 = time.perf_counter()
        new = precapture(sd, [method], [batch_size])
        log.info("fast path: %d pass shapes captured in %.1f s", new, time.perf_counter() - t0)
        return cls(pair, method, sampling, batch_size, engine, dtype, sd, sd.run_factory, GraphedDecode(pair.vae))

    @torch.no_grad()
    def __call__(self, spec: BatchSpec) -> SDVAROutput:
        device = self.pair.target.device
        labels = torch.tensor(spec.labels, dtype=torch.long, device=device)
        if self.engine == "eager":
            return self.method.run(self.sd, self.batch_size, labels, spec.g_seed, self.sampling)
        with self.decode.installed():  # no autocast: the VQVAE (and so every pixel) stays float32
            return self.method.run(self.sd, self.batch_size, labels, spec.g_seed, self.sampling)


# ---- statistics -----------------------------------------------------------------------------------
@dataclass
class RankSession:
    """What one rank did in this session."""

    rank: int
    host: str
    device: str
    batches: int = 0
    images: int = 0
    setup_s: float = 0.0
    """Building the batch sampler (dtype conversion, graph capture) and the warm-up call."""
    wall_s: float = 0.0
    """From the common start (a barrier after every rank's setup) to this rank's last shard."""

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else 0.0


@dataclass(frozen=True)
class Progress:
    """Where the whole job stands (rank 0 counts the shards in the folder)."""

    done_images: int
    total_images: int
    session_images: int
    elapsed_s: float

    @property
    def images_per_s(self) -> float:
        return self.session_images / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        rate = self.images_per_s
        return (self.total_images - self.done_images) / rate if rate > 0 else None


def decoder_stats(pooled: PooledStats, batch_size: int) -> dict:
    """``stats.json``'s decoder statistics: passes, acceptance per stage and decoder time over every batch."""
    calls = pooled.calls
    return dict(
        batches=calls, target_passes=pooled.target_passes, draft_passes=pooled.draft_passes,
        target_passes_per_batch=pooled.target_passes / calls if calls else None,
        draft_passes_per_batch=pooled.draft_passes / calls if calls else None,
        target_passes_per_image=pooled.target_passes / (calls * batch_size) if calls else None,
        token_acceptance=pooled.token_acceptance, token_acceptance_per_stage=pooled.token_acceptance_per_stage,
        stage_acceptance_per_stage=pooled.stage_acceptance_per_stage,
        proposed_tokens_per_stage=list(pooled.proposed_tokens_per_stage),
        accepted_tokens_per_stage=list(pooled.accepted_tokens_per_stage),
        proposed_stages_per_stage=list(pooled.proposed_stages_per_stage),
        accepted_stages_per_stage=list(pooled.accepted_stages_per_stage), decoder_time_s=pooled.wall_time_s,
    )


def _pooled_from(stats: dict) -> PooledStats:
    return PooledStats(**{k: tuple(v) if isinstance(v, list) else v for k, v in stats.items()})


# ---- the job --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleJob:
    """One set to make: the plan, where, and how (models label, engine, dtype, outputs)."""

    plan: SamplePlan
    out: Path
    models: str
    """What was asked for (e.g. ``"official d16->d30"``); the loaded pair's description is recorded too."""
    engine: str = "auto"
    dtype: str | None = None
    png: bool = False
    keep_shards: bool = False
    command: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        check_choice(self.engine, "engine", ENGINES)
        if self.dtype is not None:
            check_choice(self.dtype, "dtype", DTYPES)
        check_bool(self.png, "png")
        check_bool(self.keep_shards, "keep_shards")


@dataclass
class JobResult:
    """What :func:`run_job` did: the folder state it found, this rank's session and (rank 0) the statistics."""

    state: str
    """``"new"``, ``"resume"`` or ``"complete"`` (nothing was left to do)."""
    session: RankSession | None
    stats: dict | None
    samples_path: Path
    png: str | None = None
    """``"written"``, ``"present"`` (``png/`` already held exactly this set's PNGs) or ``None`` (not asked for)."""


def _assemble(folder: SampleFolder, plan: SamplePlan, num_stages: int,
              set_id: str) -> tuple[PooledStats, tuple[int, ...], list[dict]]:
    """Stream every shard into ``samples.npz`` (checking it is that batch of this set, its images unchanged); the
    shards' statistics summed (each batch once, also over resumed sessions), the image shape and the shards' records
    (size and images' SHA-256) for the manifest."""
    first = folder.read_shard(0, plan.batch(0), set_id)
    image_shape = tuple(first.images_bHW3.shape[1:])
    totals = [PooledStats.empty(num_stages)]
    records: list[dict] = []

    def image_chunks():
        for b in range(plan.num_batches):
            shard = first if b == 0 else folder.read_shard(b, plan.batch(b), set_id)
            if tuple(shard.images_bHW3.shape[1:]) != image_shape or shard.images_bHW3.dtype != np.uint8:
                raise SampleFolderError(f"shard {folder.shard_path(b)} holds images {shard.images_bHW3.shape} "
                                        f"{shard.images_bHW3.dtype}, the set {image_shape} uint8")
            totals[0] = totals[0] + _pooled_from(shard.stats)
            records.append(dict(batch=b, **FileRecord.of(folder.shard_path(b)).to_dict()))
            yield shard.images_bHW3

    write_npz_stream(folder.samples_path, [
        NpzMember("arr_0", (plan.num_images, *image_shape), np.dtype(np.uint8), image_chunks()),
        NpzMember("arr_1", (plan.num_images,), np.dtype(np.int64), [plan.labels]),
    ])
    return totals[0], image_shape, records


def write_pngs(samples_path: str | os.PathLike, out: str | os.PathLike, batch_size: int = 256) -> Path:
    """One PNG per image of a ``samples.npz`` (``000123_class42.png``, RGB as ``arr_0``), written as one folder
    atomically; ``out`` must be new, empty or a folder a workbench run wrote (:func:`~sdvar_lib.util.atomic.atomic_folder`)."""
    from PIL import Image

    with np.load(samples_path) as z:
        labels = z["arr_1"] if "arr_1" in z.files else None
    with atomic_folder(out, "python -m sdvar_lib.sample --png") as tmp, NpzArrayReader(samples_path) as reader:
        i = 0
        for batch in reader.batches(batch_size):
            for img in batch:
                suffix = f"_class{int(labels[i])}" if labels is not None else ""
                Image.fromarray(img).save(tmp / f"{i:06d}{suffix}.png")
                i += 1
    return Path(out)


def _pngs(folder: SampleFolder, plan: SamplePlan, manifest: dict) -> str:
    """Make ``png/`` hold exactly the PNGs of ``samples.npz`` (rank 0): ``"present"`` when it already does, else
    ``"written"`` (a ``png/`` the sampler wrote earlier is replaced as a whole; anything else is refused)."""
    if folder.pngs_present(manifest, plan.labels):
        return "present"
    folder.check_png_folder()
    try:
        write_pngs(folder.samples_path, folder.png_path)
    except ValueError as exc:  # refused by atomic_folder (files appeared there since the check)
        raise SampleFolderError(f"--png: {exc}") from None
    samples = FileRecord.from_dict(manifest.get("samples"))
    manifest = dict(manifest, png=dict(files=plan.num_images, samples_sha256=samples.sha256 if samples else None))
    atomic_write_text(folder.manifest_path, json.dumps(manifest, indent=1) + "\n")
    return "written"


def run_job(
    job: SampleJob,
    pair: ModelPair,
    dist: DistContext,
    on_progress: Callable[[Progress], None] | None = None,
    after_shard: Callable[[int], None] | None = None,
) -> JobResult:
    """Make (or finish) the set of ``job`` with ``pair`` on this rank; every rank of the job calls it.

    Rank 0 prepares the folder and tells every rank which batches are left; rank ``r`` makes the
    ``r``-th, ``r + world``-th, ... of them; rank 0 then assembles ``samples.npz`` and ``stats.json``
    (``stats`` of the result) and, with ``job.png``, ``png/``. ``on_progress`` (rank 0) is called after
    each of its shards; ``after_shard(batch)`` after every shard written on this rank (a hook for tests).
    A folder that cannot hold the set (other arguments, a foreign or changed file, a shard of another
    batch or set, a ``png/`` the sampler did not write) raises :class:`SampleFolderError` before any
    model call.
    """
    plan = job.plan
    method = get_method(plan.method)
    device = pair.target.device
    engine, dtype = BatchSampler.resolve(job.engine, job.dtype, device)
    method.check_for(pair.target.num_stages)
    plan.sampling.check_vocabulary(pair.target.V)
    bad = [c for c in plan.classes if c >= pair.target.num_classes]
    if bad:
        raise ValueError(f"classes {bad} do not exist: the pair has {pair.target.num_classes} classes")
    identity = SampleIdentity.of(plan, job.models, pair.description, engine, dtype, device.type)
    folder = SampleFolder(job.out)

    prepared: tuple[str, list[int]] | str
    if dist.is_main:
        try:
            if job.png:
                folder.check_png_folder()
            prepared = folder.prepare(identity, plan, job.command)
        except SampleFolderError as exc:
            prepared = str(exc)
    else:
        prepared = ("", [])
    prepared = dist.broadcast(prepared)
    if isinstance(prepared, str):
        raise SampleFolderError(prepared)
    state, pending = prepared
    if state == "complete":  # (samples.npz and stats.json verified against the manifest by prepare)
        stats = png = None
        if dist.is_main:
            stats = json.loads(folder.stats_path.read_text())
            png = _pngs(folder, plan, folder.read_manifest()) if job.png else None
        return JobResult(state=state, session=None, stats=stats, samples_path=folder.samples_path, png=png)

    name = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
    session = RankSession(rank=dist.rank, host=dist.host, device=name)
    t_setup = time.perf_counter()
    mine = pending[dist.rank :: dist.world_size]
    if mine:
        sampler = BatchSampler.build(pair, method, plan.sampling, plan.batch_size, engine, dtype)
        if device.type == "cuda":  # warm-up (lazy initialisation, graphed decode capture); not kept
            sampler(plan.batch(mine[0]))
            torch.cuda.synchronize(device)
    session.setup_s = time.perf_counter() - t_setup
    dist.barrier()
    t0 = time.perf_counter()
    done_at_start = plan.num_batches - len(pending)
    for b in mine:
        spec = plan.batch(b)
        out = sampler(spec)
        n = spec.num_real
        shard = Shard(batch=b, images_bHW3=images_to_uint8(out.images_B3HW[:n]),
                      labels_b=np.asarray(spec.labels[:n], dtype=np.int64),
                      indices_b=np.arange(spec.start, spec.stop, dtype=np.int64), stats=asdict(PooledStats.of(out.stats)),
                      set_id=identity.set_id, g_seed=spec.g_seed)
        folder.write_shard(shard)
        session.batches += 1
        session.images += n
        session.wall_s = time.perf_counter() - t0
        if after_shard is not None:
            after_shard(b)
        if dist.is_main and on_progress is not None:
            done = len(folder.done_batches())
            done_images = min(done * plan.batch_size, plan.num_images)
            session_images = min((done - done_at_start) * plan.batch_size, done_images)
            on_progress(Progress(done_images=done_images, total_images=plan.num_images, session_images=session_images,
                                 elapsed_s=session.wall_s))
    sessions = dist.gather(session)
    if not dist.is_main:
        return JobResult(state=state, session=session, stats=None, samples_path=folder.samples_path)

    totals, image_shape, shard_records = _assemble(folder, plan, pair.target.num_stages, identity.set_id)
    samples = FileRecord.of(folder.samples_path)
    wall = max(s.wall_s for s in sessions)
    made = sum(s.images for s in sessions)
    stats = dict(
        format="sdvar-sample-stats/1", method=method.name, description=method.describe(), decoder=method.decoder,
        lossless=method.lossless, models=job.models, pair=pair.description, fallback_reason=pair.fallback_reason,
        num_images=plan.num_images, num_classes=len(plan.classes), per_class=plan.per_class,
        batch_size=plan.batch_size, num_batches=plan.num_batches, seed=plan.seed, label_order=plan.label_order,
        sampling=asdict(plan.sampling), engine=engine, dtype=dtype, image_shape=list(image_shape),
        decoder_stats=decoder_stats(totals, plan.batch_size),
        session=dict(
            world_size=dist.world_size, backend=dist.backend, images=made, batches=sum(s.batches for s in sessions),
            resumed_batches=plan.num_batches - len(pending), wall_time_s=wall,
            images_per_s=made / wall if wall > 0 else None, setup_s=max(s.setup_s for s in sessions),
            per_rank=[dict(asdict(s), images_per_s=s.images_per_s) for s in sessions],
        ),
        command=job.command, set_id=identity.set_id, samples=dict(file=folder.samples_path.name, **samples.to_dict()),
    )
    atomic_write_text(folder.stats_path, json.dumps(stats, indent=1) + "\n")
    records = dict(samples=samples.to_dict(), stats=FileRecord.of(folder.stats_path).to_dict(), shards=shard_records)
    folder.write_manifest(identity, plan, job.command, complete=True, records=records)
    png = _pngs(folder, plan, folder.read_manifest()) if job.png else None
    if not job.keep_shards:
        for b in range(plan.num_batches):
            folder.shard_path(b).unlink(missing_ok=True)
        try:
            folder.shards.rmdir()
        except OSError:
            pass
    log.info("wrote %s (%d images) and %s", folder.samples_path, plan.num_images, folder.stats_path)
    return JobResult(state=state, session=session, stats=stats, samples_path=folder.samples_path, png=png)
