"""The sampler verifies what it calls complete and what it resumes; --png is written or refused, never skipped.

- a complete set's manifest records the size and SHA-256 of ``samples.npz``, ``stats.json`` and every
  shard, ``stats.json`` records its ``samples.npz``; a rerun refuses a truncated or changed file instead
  of calling the set complete, and makes a deleted ``samples.npz`` again;
- a resumed shard must be its batch of this set (batch, indices, labels, g_seed, set id), checked before
  any model call, and its images must match their recorded hash when ``samples.npz`` is assembled;
- the channels stay in RGB order from the decoder's images to ``samples.npz`` and to the PNGs;
- ``--png`` on a complete set writes ``png/`` unless it already holds exactly this set's PNGs, rewrites
  an incomplete one the sampler wrote, and refuses (one line, before any model call) a ``png/`` it did not write.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sdvar_lib.models.checkpoints import load_bundled
from sdvar_lib.samples import sampler as sampler_module
from sdvar_lib.samples.distributed import init_distributed
from sdvar_lib.samples.npz import NpzMember, write_npz_stream
from sdvar_lib.samples.sampler import (
    SampleFolder,
    SampleFolderError,
    SampleJob,
    SamplePlan,
    images_to_uint8,
    run_job,
    write_pngs,
)
from sdvar_lib.samples.shards import FileRecord, Shard, png_names
from sdvar_lib.util.atomic import OUTPUT_MARKER
from tests.test_sample import BUNDLED_SAMPLING, sample  # the small set of tests/test_sample.py: 5 images, 3 calls

PLAN = SamplePlan("exact_g2", tuple(range(5)), 1, 2, seed=0, sampling=BUNDLED_SAMPLING)


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def _refused(capsys, out, *extra) -> str:
    """The command's one-line error (exit status 2: argparse's before the models load, or run_job's after)."""
    try:
        code = sample(out, *extra)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    line = _error(capsys)
    assert line.startswith("python -m sdvar_lib.sample: error:"), line
    return line


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pair():
    return load_bundled()


@pytest.fixture(scope="module")
def complete_set(tmp_path_factory):
    """A complete set with its shards kept (never modified: tests work on copies)."""
    out = tmp_path_factory.mktemp("complete") / "set"
    assert sample(out, "--keep-shards") == 0
    return out


@pytest.fixture(scope="module")
def interrupted_set(tmp_path_factory, pair):
    """A set interrupted after its first batch (shard 0 written, batches 1 and 2 to make)."""
    out = tmp_path_factory.mktemp("interrupted") / "set"

    class Interrupt(KeyboardInterrupt):
        pass

    def stop(batch):
        raise Interrupt

    with pytest.raises(Interrupt):
        run_job(SampleJob(plan=PLAN, out=out, models="bundled", keep_shards=True), pair, init_distributed("cpu"),
                after_shard=stop)
    assert SampleFolder(out).done_batches() == {0}
    return out


def _copy(src, tmp_path):
    dst = tmp_path / "set"
    shutil.copytree(src, dst)
    return dst


# ---- the records of a complete set --------------------------------------------------------------------
def test_manifest_records_sizes_and_hashes(complete_set):
    folder = SampleFolder(complete_set)
    manifest = folder.read_manifest()
    stats = json.loads(folder.stats_path.read_text())
    samples = FileRecord.of(folder.samples_path)
    assert manifest["complete"] and manifest["samples"] == samples.to_dict()
    assert manifest["stats"] == FileRecord.of(folder.stats_path).to_dict()
    assert stats["samples"] == dict(file="samples.npz", **samples.to_dict())
    assert [r["batch"] for r in manifest["shards"]] == [0, 1, 2]
    for r in manifest["shards"]:
        assert FileRecord.of(folder.shard_path(r["batch"])).to_dict() == {k: r[k] for k in ("bytes", "sha256")}
    assert len(manifest["set_id"]) == 16 and stats["set_id"] == manifest["set_id"]
    shard = folder.read_shard(1, PLAN.batch(1), manifest["set_id"])
    assert (shard.set_id, shard.g_seed) == (manifest["set_id"], PLAN.batch(1).g_seed)


@pytest.mark.parametrize("damage", ["truncated", "one byte changed", "stats changed", "stats missing"])
def test_a_changed_set_is_not_called_complete(complete_set, tmp_path, capsys, damage):
    out = _copy(complete_set, tmp_path)
    folder = SampleFolder(out)
    data = folder.samples_path.read_bytes()
    if damage == "truncated":
        folder.samples_path.write_bytes(data[: len(data) // 2])
        message = "truncated or changed"
    elif damage == "one byte changed":
        i = len(data) // 2  # inside arr_0's pixels: the archive still opens, its images differ
        folder.samples_path.write_bytes(data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1 :])
        message = "SHA-256 differs"
    elif damage == "stats changed":
        folder.stats_path.write_text(folder.stats_path.read_text().replace('"batches": 3', '"batches": 4', 1))  # same size
        message = "SHA-256 differs"
    else:
        folder.stats_path.unlink()
        message = "stats.json is missing"
    before = _files(out)
    line = _refused(capsys, out, "--keep-shards")
    assert message in line, line
    assert _files(out) == before  # refused, nothing written or replaced
    with pytest.raises(SampleFolderError, match=message):  # the library refuses too
        run_job(SampleJob(plan=PLAN, out=out, models="bundled"), load_bundled(), init_distributed("cpu"))


def test_a_deleted_samples_npz_is_made_again(complete_set, tmp_path, monkeypatch):
    out = _copy(complete_set, tmp_path)
    (out / "samples.npz").unlink()
    monkeypatch.setattr(sampler_module.BatchSampler, "build", _no_model_call)  # every shard is there: no decoder call
    assert sample(out, "--keep-shards") == 0
    assert (out / "samples.npz").read_bytes() == (complete_set / "samples.npz").read_bytes()
    assert SampleFolder(out).read_manifest()["complete"]


def test_a_manifest_without_records_cannot_be_verified(complete_set, tmp_path, capsys):
    out = _copy(complete_set, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["samples"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert "records no size and hash of samples.npz" in _refused(capsys, out)


# ---- resumed shards ------------------------------------------------------------------------------------
def _no_model_call(*args, **kwargs):
    raise AssertionError("a decoder was built although the folder should have been refused (or had nothing to make)")


def _set_id(out) -> str:
    return SampleFolder(out).read_manifest()["set_id"]


def _copy_of_batch_0(folder: SampleFolder, set_id: str) -> None:
    shutil.copy(folder.shard_path(0), folder.shard_path(1))


def _batch_0_indices_and_labels(folder: SampleFolder, set_id: str) -> None:
    """The survivor of issue 20: a shard named batch 1 that holds batch 0's images, indices and labels."""
    s0 = folder.read_shard(0)
    folder.write_shard(Shard(batch=1, images_bHW3=s0.images_bHW3, labels_b=s0.labels_b, indices_b=s0.indices_b,
                             stats=s0.stats, set_id=set_id, g_seed=PLAN.batch(1).g_seed))


def _other_g_seed(folder: SampleFolder, set_id: str) -> None:
    s0, b1 = folder.read_shard(0), PLAN.batch(1)
    folder.write_shard(Shard(batch=1, images_bHW3=s0.images_bHW3, labels_b=np.asarray(b1.labels[:2]),
                             indices_b=np.arange(b1.start, b1.stop), stats=s0.stats, set_id=set_id, g_seed=b1.g_seed + 7))


def _other_set(folder: SampleFolder, set_id: str) -> None:
    s0, b1 = folder.read_shard(0), PLAN.batch(1)
    folder.write_shard(Shard(batch=1, images_bHW3=s0.images_bHW3, labels_b=np.asarray(b1.labels[:2]),
                             indices_b=np.arange(b1.start, b1.stop), stats=s0.stats, set_id="0123456789abcdef",
                             g_seed=b1.g_seed))


def _too_few_images(folder: SampleFolder, set_id: str) -> None:
    s0, b1 = folder.read_shard(0), PLAN.batch(1)
    folder.write_shard(Shard(batch=1, images_bHW3=s0.images_bHW3[:1], labels_b=np.asarray(b1.labels[:2]),
                             indices_b=np.arange(b1.start, b1.stop), stats=s0.stats, set_id=set_id, g_seed=b1.g_seed))


def _no_metadata(folder: SampleFolder, set_id: str) -> None:
    """A shard of an older sampler (no record of its set and batch)."""
    with np.load(folder.shard_path(0)) as z:
        members = {k: z[k] for k in z.files if k != "meta"}
    with open(folder.shard_path(0), "wb") as f:
        np.savez(f, **members)


@pytest.mark.parametrize(("forge", "message"), [
    (_copy_of_batch_0, "is batch 0 of its set, not batch 1"),
    (_batch_0_indices_and_labels, "does not hold images 2..3 of this set"),
    (_other_g_seed, "was drawn with g_seed"),
    (_other_set, "belongs to another set"),
    (_too_few_images, "holds images (1, 16, 16, 3)"),
    (_no_metadata, "records no sdvar-shard/1 metadata"),
], ids=["copy of batch 0", "batch 0's indices and labels", "other g_seed", "other set", "too few images", "no metadata"])
def test_a_resumed_shard_must_be_its_batch_of_this_set(interrupted_set, tmp_path, pair, capsys, monkeypatch, forge,
                                                       message):
    out = _copy(interrupted_set, tmp_path)
    forge(SampleFolder(out), _set_id(out))
    before = _files(out)
    monkeypatch.setattr(sampler_module.BatchSampler, "build", _no_model_call)
    with pytest.raises(SampleFolderError, match="delete it and rerun") as exc:
        run_job(SampleJob(plan=PLAN, out=out, models="bundled", keep_shards=True), pair, init_distributed("cpu"))
    assert message in str(exc.value)
    assert message in _refused(capsys, out, "--keep-shards")  # the command: one line, exit 2
    assert _files(out) == before


def test_a_shard_with_changed_images_is_refused_when_assembled(interrupted_set, complete_set, tmp_path, capsys):
    out = _copy(interrupted_set, tmp_path)
    folder = SampleFolder(out)
    with np.load(folder.shard_path(0)) as z:
        members = {k: z[k] for k in z.files}
    members["images"] = members["images"].copy()
    members["images"][0, 0, 0, 0] ^= 1  # one pixel, its metadata unchanged
    with open(folder.shard_path(0), "wb") as f:
        np.savez(f, **members)
    assert "holds images whose SHA-256 is not the one recorded" in _refused(capsys, out, "--keep-shards")
    assert not folder.samples_path.exists()


def test_resume_keeps_the_set_byte_for_byte(interrupted_set, complete_set, tmp_path):
    out = _copy(interrupted_set, tmp_path)
    assert sample(out, "--keep-shards") == 0
    assert (out / "samples.npz").read_bytes() == (complete_set / "samples.npz").read_bytes()


# ---- channel order ---------------------------------------------------------------------------------------
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "orange": (255, 128, 0)}


def test_images_to_uint8_keeps_rgb_order():
    rgb = torch.tensor([1.0, 128 / 255, 0.0]).view(1, 3, 1, 1).expand(2, 3, 4, 5)  # orange: R, G, B planes
    u8 = images_to_uint8(rgb)
    assert u8.shape == (2, 4, 5, 3) and u8.dtype == np.uint8
    assert u8[1, 3, 4].tolist() == [255, 128, 0]


def test_pngs_are_rgb_as_samples_npz(tmp_path):
    images = np.stack([np.broadcast_to(np.array(c, np.uint8), (6, 7, 3)) for c in COLOURS.values()])
    labels = np.arange(len(COLOURS), dtype=np.int64)
    write_npz_stream(tmp_path / "s.npz", [NpzMember("arr_0", images.shape, np.dtype(np.uint8), [images]),
                                          NpzMember("arr_1", labels.shape, labels.dtype, [labels])])
    write_pngs(tmp_path / "s.npz", tmp_path / "png", batch_size=3)
    for i, (name, colour) in enumerate(COLOURS.items()):
        with Image.open(tmp_path / "png" / png_names(labels)[i]) as im:
            assert im.mode == "RGB", name
            assert np.asarray(im)[2, 3].tolist() == list(colour), name


def test_samples_npz_holds_the_decoders_rgb_images(complete_set, pair):
    """arr_0 against the decoder's own float images, channel by channel (no shared conversion)."""
    from sdvar_lib.sdvar.decoder import SDVAR
    from sdvar_lib.sdvar.registry import get_method

    spec = PLAN.batch(0)
    out = get_method("exact_g2").run(SDVAR(pair.draft, pair.target), 2, list(spec.labels), spec.g_seed, BUNDLED_SAMPLING)
    want = out.images_B3HW.float().permute(0, 2, 3, 1).numpy() * 255  # (B, H, W, RGB)
    with np.load(complete_set / "samples.npz") as z:
        got = z["arr_0"][: spec.num_real].astype(np.float64)
    assert np.abs(got - want).max() <= 0.5 + 1e-3  # rounding only; BGR would differ by up to 255
    assert np.abs(got[..., 0] - want[..., 2]).max() > 1.0  # the test can tell the channels apart on these images


# ---- --png -----------------------------------------------------------------------------------------------
def _png_names(out) -> list[str]:
    return sorted(p.name for p in (out / "png").iterdir() if p.suffix == ".png")


def _check_pngs(out):
    with np.load(out / "samples.npz") as z:
        images, labels = z["arr_0"], z["arr_1"]
    names = png_names(labels.tolist())
    assert _png_names(out) == names
    for i, name in enumerate(names):
        with Image.open(out / "png" / name) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), images[i]), name


def test_png_on_a_complete_set_is_written_then_kept_or_rewritten(complete_set, tmp_path, capsys, monkeypatch):
    out = _copy(complete_set, tmp_path)
    monkeypatch.setattr(sampler_module.BatchSampler, "build", _no_model_call)
    (out / "png").mkdir()  # an empty folder (was taken for written PNGs and skipped without a word)
    assert sample(out, "--png") == 0
    assert "wrote " + str(out) + "/png (5 PNGs)" in capsys.readouterr().out
    _check_pngs(out)
    assert sample(out, "--png") == 0
    assert "already holds the 5 PNGs of this set" in capsys.readouterr().out
    (out / "png" / _png_names(out)[0]).unlink()  # one PNG lost
    assert sample(out, "--png") == 0
    assert "wrote " in capsys.readouterr().out
    _check_pngs(out)


def test_png_of_a_new_set(tmp_path, capsys):
    assert sample(tmp_path / "s", "--png") == 0
    assert "wrote " + str(tmp_path / "s") + "/png (5 PNGs)" in capsys.readouterr().out
    _check_pngs(tmp_path / "s")
    assert (tmp_path / "s" / "png" / OUTPUT_MARKER).is_file()


@pytest.mark.parametrize("what", ["user folder", "file"])
def test_png_refuses_what_the_sampler_did_not_write(complete_set, tmp_path, capsys, monkeypatch, what):
    out = _copy(complete_set, tmp_path)
    if what == "file":
        (out / "png").write_text("mine")
    else:
        (out / "png").mkdir()
        (out / "png" / "notes.txt").write_text("mine")
    before = _files(out)
    monkeypatch.setattr(sampler_module.BatchSampler, "build", _no_model_call)
    line = _refused(capsys, out, "--png")
    assert "png" in line and "move" in line, line
    assert _files(out) == before
    new = tmp_path / "new"  # a new set: refused before the first batch, nothing made
    new.mkdir()
    shutil.copytree(out / "png", new / "png") if what != "file" else (new / "png").write_text("mine")
    (new / "manifest.json").write_text((out / "manifest.json").read_text())  # a folder of the sampler...
    manifest = json.loads((new / "manifest.json").read_text())
    manifest.update(complete=False)
    (new / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SampleFolderError, match="png"):
        run_job(SampleJob(plan=PLAN, out=new, models="bundled", png=True), load_bundled(), init_distributed("cpu"))
    assert not (new / "shards").exists() or not any((new / "shards").iterdir())
