"""The on-disk sample folder: manifest, one shard per batch, resume, and refusal of foreign folders.

Every file is renamed into place when complete; a restart with the same arguments skips the
batches whose shard exists; a folder made with other arguments (or by something else) is refused.

What the folder holds is verified, not assumed:

- every shard records which set (:attr:`SampleIdentity.set_id`), batch and ``g_seed`` it belongs to
  and the SHA-256 of its images; a resumed shard is checked against the plan (its batch, indices,
  labels, set) before any model call, and its images against their hash when ``samples.npz`` is
  assembled;
- a complete set's manifest records the size and SHA-256 of ``samples.npz`` and ``stats.json``
  (and of every shard that went into it); the folder is called complete only while both files
  match the record (:meth:`SampleFolder.verify_complete`), and ``stats.json`` records the hash of
  the ``samples.npz`` it describes, so that a reader (``python -m sdvar_lib.fid``) can tell
  whether the statistics beside a samples file are that file's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from sdvar_lib.samples.npz import NpzArrayReader
from sdvar_lib.samples.plan import SEED_STRIDE, BatchSpec, SamplePlan
from sdvar_lib.util.atomic import (
    OUTPUT_MARKER,
    atomic_write_text,
    atomic_write_with,
    check_writable_dir,
    file_size_and_sha256,
)

log = logging.getLogger(__name__)

__all__ = ["FORMAT", "SHARD_FORMAT", "MANIFEST", "SAMPLES", "STATS", "SHARDS", "PNG", "SampleFolderError",
           "SampleIdentity", "Shard", "SampleFolder", "FileRecord", "png_names"]

FORMAT = "sdvar-samples/1"
SHARD_FORMAT = "sdvar-shard/1"
MANIFEST = "manifest.json"
SAMPLES = "samples.npz"
STATS = "stats.json"
SHARDS = "shards"
PNG = "png"


class SampleFolderError(ValueError):
    """The output folder cannot hold this set (other arguments, foreign files, a damaged shard)."""


@dataclass(frozen=True)
class FileRecord:
    """A file's size and SHA-256, as a manifest records them."""

    bytes: int
    sha256: str

    @classmethod
    def of(cls, path: str | os.PathLike, chunk: int = 1 << 24) -> FileRecord:
        """Read ``path`` once (in chunks of 16 MiB: ``samples.npz`` may be larger than memory)."""
        size, sha256 = file_size_and_sha256(path, chunk)
        return cls(bytes=size, sha256=sha256)

    @classmethod
    def from_dict(cls, d: object) -> FileRecord | None:
        """The record stored in a manifest, or ``None`` when there is none (or it is not one)."""
        if not isinstance(d, dict) or not isinstance(d.get("bytes"), int) or not isinstance(d.get("sha256"), str):
            return None
        return cls(bytes=d["bytes"], sha256=d["sha256"])

    def to_dict(self) -> dict:
        return dict(bytes=self.bytes, sha256=self.sha256)


def _images_sha256(images_bHW3: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images_bHW3).tobytes()).hexdigest()


def png_names(labels: Sequence[int]) -> list[str]:
    """The file names of ``png/`` in order: ``000123_class42.png``."""
    return [f"{i:06d}_class{int(c)}.png" for i, c in enumerate(labels)]


@dataclass(frozen=True)
class SampleIdentity:
    """Everything that decides the pixels of a set (the manifest's ``identity``; ``None`` = not known yet).

    The world size is not part of it: a set may be resumed with any number of processes.
    """

    method: str | None = None
    models: str | None = None
    pair: str | None = None
    classes: tuple[int, ...] | None = None
    per_class: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    label_order: str | None = None
    cfg: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    more_smooth: bool | None = None
    engine: str | None = None
    dtype: str | None = None
    device_type: str | None = None

    @classmethod
    def of(cls, plan: SamplePlan, models: str, pair: str, engine: str, dtype: str, device_type: str) -> SampleIdentity:
        s = plan.sampling
        return cls(method=plan.method, models=models, pair=pair, classes=tuple(plan.classes), per_class=plan.per_class,
                   batch_size=plan.batch_size, seed=plan.seed, label_order=plan.label_order, cfg=s.cfg, top_k=s.top_k,
                   top_p=s.top_p, more_smooth=s.more_smooth, engine=engine, dtype=dtype, device_type=device_type)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = None if self.classes is None else list(self.classes)
        return d

    @property
    def set_id(self) -> str:
        """A short hash of the whole identity: every shard and ``stats.json`` of the set carry it."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def differences(self, stored: dict) -> list[str]:
        """``key: stored -> this`` for every known field that differs from a stored identity."""
        out = []
        for f in fields(self):
            mine = getattr(self, f.name)
            if mine is None:
                continue
            theirs = stored.get(f.name)
            if f.name == "classes" and theirs is not None:
                theirs = tuple(theirs)
            if theirs != mine:
                show = (lambda v: f"{len(v)} classes {_ranges(v)}") if f.name == "classes" else repr
                out.append(f"{f.name} {show(theirs) if theirs is not None else 'unset'} -> {show(mine)}")
        return out


def _transient(name: str) -> bool:
    """A temporary of another process of the job (a write probe, a file being written): not content."""
    return name.startswith(".sdvar-probe-") or (name.startswith(".") and ".tmp-" in name)


def _ranges(values: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2,5``."""
    parts, run = [], []
    for v in values:
        if run and v == run[-1] + 1:
            run.append(v)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [v]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


# ---- the folder -----------------------------------------------------------------------------------
@dataclass
class Shard:
    """One finished batch: its real images ``(b, H, W, 3)`` uint8, labels, global indices and decoder statistics,
    and which set and random stream made it (``set_id``, ``g_seed``; a shard file also stores its images' SHA-256)."""

    batch: int
    images_bHW3: np.ndarray
    labels_b: np.ndarray
    indices_b: np.ndarray
    stats: dict
    set_id: str = ""
    g_seed: int = -1


class SampleFolder:
    """The output folder of one set: manifest, shards, ``samples.npz``, ``stats.json``, optional ``png/``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.shards = self.path / SHARDS

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def samples_path(self) -> Path:
        return self.path / SAMPLES

    @property
    def stats_path(self) -> Path:
        return self.path / STATS

    @property
    def png_path(self) -> Path:
        return self.path / PNG

    def shard_path(self, batch: int) -> Path:
        return self.shards / f"batch_{batch:06d}.npz"

    def read_manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SampleFolderError(f"{self.manifest_path} is unreadable ({exc}); choose a new --out folder") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise SampleFolderError(f"{self.manifest_path} is not a manifest of {FORMAT}; choose a new --out folder")
        return manifest

    # ---- what state the folder is in ----------------------------------------------------------------
    def check(self, identity: SampleIdentity, verify: bool = True) -> str:
        """``"new"``, ``"resume"`` or ``"complete"``; :class:`SampleFolderError` if the folder cannot hold this set.

        Only fields of ``identity`` that are known (not ``None``) are compared, so the CLI can check
        before it loads the models and again, fully, after. A folder whose manifest says complete is
        ``"complete"`` only when ``samples.npz`` and ``stats.json`` are the files the sampler recorded
        (:meth:`verify_complete`; ``verify=False`` compares their sizes only, without reading them);
        with ``samples.npz`` gone it is ``"resume"`` (the set is made again from the shards left).
        """
        try:
            check_writable_dir(self.path)
        except ValueError as exc:
            raise SampleFolderError(str(exc)) from None
        probe = self.path
        while not probe.exists():
            probe = probe.parent
        try:  # permissions alone do not tell (root, read-only mounts, /proc): try a file
            fd, name = tempfile.mkstemp(prefix=".sdvar-probe-", dir=probe)
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            raise SampleFolderError(f"--out {str(self.path)!r} cannot be written: {str(probe)!r} refuses new files "
                                    f"({exc.strerror})") from None
        if not self.path.exists() or not any(not _transient(p.name) for p in self.path.iterdir()):
            return "new"
        manifest = self.read_manifest()
        if manifest is None:
            raise SampleFolderError(
                f"--out {str(self.path)!r} already holds files but no {MANIFEST}: it was not made by the sampler; "
                "choose a new or empty folder"
            )
        diffs = identity.differences(manifest.get("identity", {}))
        if diffs:
            raise SampleFolderError(
                f"--out {str(self.path)!r} holds a set made with other arguments ({'; '.join(diffs)}); rerun with "
                "the same arguments to resume it, or choose a new folder"
            )
        if not manifest.get("complete") or not self.samples_path.is_file():
            return "resume"
        self.verify_complete(manifest, hashes=verify)
        return "complete"

    def verify_complete(self, manifest: dict, hashes: bool = True) -> None:
        """:class:`SampleFolderError` unless ``samples.npz`` and ``stats.json`` have the sizes (and, with ``hashes``,
        the SHA-256) the manifest of the complete set recorded."""
        for key, path in (("samples", self.samples_path), ("stats", self.stats_path)):
            record = FileRecord.from_dict(manifest.get(key))
            if record is None:
                raise SampleFolderError(
                    f"{self.manifest_path} calls the set complete but records no size and hash of {path.name} (an "
                    f"older sampler, or an edited manifest), so {path} cannot be verified; choose a new --out folder"
                )
            fix = ("move it away (or delete it) and rerun the same command to make the set again" if key == "samples"
                   else f"delete {path.name} and {SAMPLES} and rerun the same command to make the set again")
            if not path.is_file():
                raise SampleFolderError(f"{path} is missing from the complete set in {self.path}; {fix}")
            size = path.stat().st_size
            if size != record.bytes:
                raise SampleFolderError(f"{path} holds {size} bytes, the sampler wrote {record.bytes}: it was truncated "
                                        f"or changed since; {fix}")
            if hashes and FileRecord.of(path).sha256 != record.sha256:
                raise SampleFolderError(f"{path} is not the file the sampler wrote (its SHA-256 differs from the "
                                        f"manifest's record): it was changed since; {fix}")

    def prepare(self, identity: SampleIdentity, plan: SamplePlan, command: str) -> tuple[str, list[int]]:
        """Create or resume the folder (rank 0 only): the state (:meth:`check`) and the batches still to make, in order.

        Every shard already there is checked against the plan and the set (:meth:`read_shard` without its
        images) before anything is made, so a shard of another batch or set is refused now, not after hours.
        """
        state = self.check(identity)
        if state == "complete":
            return state, []
        if state == "new" or self.read_manifest().get("complete"):  # (a complete set whose samples.npz is gone)
            self.write_manifest(identity, plan, command, complete=False)
        self.shards.mkdir(parents=True, exist_ok=True)
        for stale in self.shards.glob(".*.tmp-*"):  # temporaries of batches that were in flight
            stale.unlink(missing_ok=True)
        done = self.done_batches()
        for b in sorted(done):
            if b >= plan.num_batches:
                raise SampleFolderError(f"shard {self.shard_path(b)} is batch {b}, this set has {plan.num_batches} "
                                        "batches; delete it and rerun the same command")
            self.read_shard(b, plan.batch(b), identity.set_id, images=False)
        return state, [b for b in range(plan.num_batches) if b not in done]

    def write_manifest(self, identity: SampleIdentity, plan: SamplePlan, command: str, complete: bool,
                       records: dict | None = None) -> None:
        """The manifest: what defines the set, and (``records``, once complete) the size and hash of its files."""
        manifest = dict(format=FORMAT, identity=identity.to_dict(), set_id=identity.set_id, num_images=plan.num_images,
                        num_batches=plan.num_batches, seed_rule=f"g_seed = seed * {SEED_STRIDE} + batch index",
                        label_rule=("class of image i = classes[i // per_class]" if plan.label_order == "sorted" else
                                    "classes repeated per_class times, permuted by torch.randperm(N) seeded with seed"),
                        command=command, complete=complete, **(records or {}))
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=1) + "\n")

    # ---- shards --------------------------------------------------------------------------------------
    def done_batches(self) -> set[int]:
        if not self.shards.is_dir():
            return set()
        done = set()
        for p in self.shards.iterdir():
            name = p.name
            if name.startswith("batch_") and name.endswith(".npz") and name[6:-4].isdigit():
                done.add(int(name[6:-4]))
        return done

    def write_shard(self, shard: Shard) -> Path:
        meta = dict(format=SHARD_FORMAT, set_id=shard.set_id, batch=shard.batch, g_seed=shard.g_seed,
                    images_sha256=_images_sha256(shard.images_bHW3))

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, images=shard.images_bHW3, labels=shard.labels_b, indices=shard.indices_b,
                         stats=np.array(json.dumps(shard.stats)), meta=np.array(json.dumps(meta)))

        return atomic_write_with(self.shard_path(shard.batch), write)

    def read_shard(self, batch: int, spec: BatchSpec | None = None, set_id: str | None = None,
                   images: bool = True) -> Shard:
        """Shard ``batch``; with ``spec`` (and ``set_id``) it must be that batch of that set, else
        :class:`SampleFolderError`. ``images=False`` reads everything but the images (their shape is checked
        from the file's header): a cheap check of a resumed shard. Read images are checked against their hash."""
        path = self.shard_path(batch)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"])) if "meta" in z.files else None
                shard = Shard(batch=batch, images_bHW3=z["images"] if images else np.empty((0, 0, 0, 3), np.uint8),
                              labels_b=z["labels"], indices_b=z["indices"], stats=json.loads(str(z["stats"])))
            if not images:
                with NpzArrayReader(path, "images") as r:
                    image_shape, image_dtype = r.shape, r.dtype
            else:
                image_shape, image_dtype = shard.images_bHW3.shape, shard.images_bHW3.dtype
        except FileNotFoundError:
            raise SampleFolderError(f"shard {path} is missing; rerun the same command to make it") from None
        except Exception as exc:  # a damaged file: say which and how to recover
            raise SampleFolderError(f"shard {path} is damaged ({type(exc).__name__}: {exc}); delete it and rerun the "
                                    "same command to make it again") from None

        def refuse(what: str) -> SampleFolderError:
            return SampleFolderError(f"shard {path} {what}; delete it and rerun the same command to make it again")

        if not isinstance(meta, dict) or meta.get("format") != SHARD_FORMAT:
            raise refuse(f"records no {SHARD_FORMAT} metadata (which set and batch it belongs to)")
        shard.set_id, shard.g_seed = str(meta.get("set_id")), meta.get("g_seed")
        if meta.get("batch") != batch:
            raise refuse(f"is batch {meta.get('batch')} of its set, not batch {batch}")
        if spec is not None:
            expected = np.arange(spec.start, spec.stop)
            if not np.array_equal(shard.indices_b, expected) or list(shard.labels_b) != list(spec.labels[: spec.num_real]):
                raise refuse(f"does not hold images {spec.start}..{spec.stop - 1} of this set (their indices and labels)")
            if shard.g_seed != spec.g_seed:
                raise refuse(f"was drawn with g_seed {shard.g_seed}, batch {batch} of this set uses {spec.g_seed}")
            if len(image_shape) != 4 or image_shape[0] != spec.num_real or image_shape[-1] != 3 or image_dtype != np.uint8:
                raise refuse(f"holds images {tuple(image_shape)} {image_dtype}, batch {batch} has {spec.num_real} "
                             "uint8 (H, W, 3) images")
        if set_id is not None and shard.set_id != set_id:
            raise refuse(f"belongs to another set (set id {shard.set_id}, this set is {set_id})")
        if images and _images_sha256(shard.images_bHW3) != meta.get("images_sha256"):
            raise refuse("holds images whose SHA-256 is not the one recorded when it was written: they were changed")
        return shard

    # ---- png/ ----------------------------------------------------------------------------------------
    def check_png_folder(self) -> None:
        """:class:`SampleFolderError` unless ``png/`` is absent, empty or written by the sampler (it may be replaced)."""
        png = self.png_path
        if not png.exists():
            return
        if not png.is_dir():
            raise SampleFolderError(f"{png} exists and is not a folder; --png writes one PNG per image there: move "
                                    "it away or run without --png")
        if any(png.iterdir()) and not (png / OUTPUT_MARKER).is_file():
            raise SampleFolderError(f"{png} holds files the sampler did not write; --png writes one PNG per image "
                                    "there: move them away or run without --png")

    def pngs_present(self, manifest: dict, labels: Sequence[int]) -> bool:
        """``png/`` holds exactly the PNGs of this ``samples.npz`` (the manifest's record of the last ``--png``)."""
        record, samples = manifest.get("png"), FileRecord.from_dict(manifest.get("samples"))
        if not isinstance(record, dict) or samples is None or record.get("samples_sha256") != samples.sha256:
            return False
        if not self.png_path.is_dir() or not (self.png_path / OUTPUT_MARKER).is_file():
            return False
        names = [p.name for p in self.png_path.iterdir() if p.name != OUTPUT_MARKER]
        expected = png_names(labels)
        return len(names) == len(expected) and set(names) == set(expected)
