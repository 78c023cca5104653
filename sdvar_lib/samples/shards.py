"""The on-disk sample folder: manifest, one shard per batch, resume, and refusal of foreign folders.

Every file is renamed into place when complete; a restart with the same arguments skips the
batches whose shard exists; a folder made with other arguments (or by something else) is refused.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from sdvar_lib.samples.plan import SEED_STRIDE, BatchSpec, SamplePlan
from sdvar_lib.util.atomic import atomic_write_text, atomic_write_with, check_writable_dir

log = logging.getLogger(__name__)

__all__ = ["FORMAT", "MANIFEST", "SAMPLES", "STATS", "SHARDS", "PNG", "SampleFolderError", "SampleIdentity", "Shard",
           "SampleFolder"]

FORMAT = "sdvar-samples/1"
MANIFEST = "manifest.json"
SAMPLES = "samples.npz"
STATS = "stats.json"
SHARDS = "shards"
PNG = "png"


class SampleFolderError(ValueError):
    """The output folder cannot hold this set (other arguments, foreign files, a damaged shard)."""


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
    """One finished batch: its real images ``(b, H, W, 3)`` uint8, labels, global indices and decoder statistics."""

    batch: int
    images_bHW3: np.ndarray
    labels_b: np.ndarray
    indices_b: np.ndarray
    stats: dict


class SampleFolder:
    """The output folder of one set: manifest, shards, ``samples.npz``, ``stats.json``."""

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

    def check(self, identity: SampleIdentity) -> str:
        """``"new"``, ``"resume"`` or ``"complete"``; :class:`SampleFolderError` if the folder cannot hold this set.

        Only fields of ``identity`` that are known (not ``None``) are compared, so the CLI can check
        before it loads the models and again, fully, after.
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
        return "complete" if manifest.get("complete") and self.samples_path.is_file() else "resume"

    def prepare(self, identity: SampleIdentity, plan: SamplePlan, command: str) -> list[int]:
        """Create or resume the folder (rank 0 only); returns the batches still to make, in order."""
        state = self.check(identity)
        if state == "new":
            self.write_manifest(identity, plan, command, complete=False)
        elif state == "complete":
            return []
        self.shards.mkdir(parents=True, exist_ok=True)
        for stale in self.shards.glob(".*.tmp-*"):  # temporaries of batches that were in flight
            stale.unlink(missing_ok=True)
        done = self.done_batches()
        return [b for b in range(plan.num_batches) if b not in done]

    def write_manifest(self, identity: SampleIdentity, plan: SamplePlan, command: str, complete: bool) -> None:
        manifest = dict(format=FORMAT, identity=identity.to_dict(), num_images=plan.num_images,
                        num_batches=plan.num_batches, seed_rule=f"g_seed = seed * {SEED_STRIDE} + batch index",
                        label_rule=("class of image i = classes[i // per_class]" if plan.label_order == "sorted" else
                                    "classes repeated per_class times, permuted by torch.randperm(N) seeded with seed"),
                        command=command, complete=complete)
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=1) + "\n")

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
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, images=shard.images_bHW3, labels=shard.labels_b, indices=shard.indices_b,
                         stats=np.array(json.dumps(shard.stats)))

        return atomic_write_with(self.shard_path(shard.batch), write)

    def read_shard(self, batch: int, spec: BatchSpec | None = None) -> Shard:
        path = self.shard_path(batch)
        try:
            with np.load(path, allow_pickle=False) as z:
                shard = Shard(batch=batch, images_bHW3=z["images"], labels_b=z["labels"], indices_b=z["indices"],
                              stats=json.loads(str(z["stats"])))
        except FileNotFoundError:
            raise SampleFolderError(f"shard {path} is missing; rerun the same command to make it") from None
        except Exception as exc:  # a damaged file: say which and how to recover
            raise SampleFolderError(f"shard {path} is damaged ({type(exc).__name__}: {exc}); delete it and rerun the "
                                    "same command to make it again") from None
        if spec is not None:
            expected = np.arange(spec.start, spec.stop)
            if not np.array_equal(shard.indices_b, expected) or list(shard.labels_b) != list(spec.labels[: spec.num_real]):
                raise SampleFolderError(f"shard {path} does not hold images {spec.start}..{spec.stop - 1} of this set; "
                                        "delete it and rerun the same command")
        return shard


