"""The sampler (python -m sdvar_lib.sample) on the bundled pair, in this process: plan, set, resume, refusals.

The multi-process runs (torchrun, gloo) are in test_sample_distributed.py.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from sdvar_lib.models.checkpoints import load_bundled
from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.samples.cli import main, parse_classes
from sdvar_lib.samples.distributed import init_distributed
from sdvar_lib.samples.npz import NpzArrayReader, NpzMember, write_npz_stream
from sdvar_lib.samples.sampler import (
    SEED_STRIDE,
    SampleFolder,
    SampleFolderError,
    SampleJob,
    SamplePlan,
    images_to_uint8,
    run_job,
)
from sdvar_lib.sdvar.decoder import SDVAR
from sdvar_lib.sdvar.registry import get_method

# 5 images of classes 0-4 in batches of 2: 3 calls, the last one filled up with class 0
SMALL = ["--per-class", "1", "--classes", "0-4", "--batch-size", "2", "--threads", "1", "--no-progress"]
BUNDLED_SAMPLING = SamplingConfig(cfg=1.5, top_k=256, top_p=0.96)  # VAR's protocol, top-k at the vocabulary of 256


def sample(out, *extra, method="exact_g2"):
    return main(["--method", method, "--out", str(out), *SMALL, *extra])


@pytest.fixture(scope="module")
def pair():
    return load_bundled()


@pytest.fixture(scope="module")
def reference_set(tmp_path_factory):
    """The uninterrupted set (shards kept) and what the command printed."""
    out = tmp_path_factory.mktemp("ref") / "set"
    assert sample(out, "--keep-shards") == 0
    return out


# ---- the plan ---------------------------------------------------------------------------------------
def test_plan_labels_seeds_and_padding():
    plan = SamplePlan("target", classes=(3, 5, 7), per_class=2, batch_size=4, seed=7, sampling=BUNDLED_SAMPLING,
                      label_order="sorted")
    assert plan.num_images == 6 and plan.num_batches == 2
    assert plan.labels.tolist() == [3, 3, 5, 5, 7, 7]
    b0, b1 = plan.batch(0), plan.batch(1)
    assert (b0.start, b0.stop, b0.labels, b0.g_seed) == (0, 4, (3, 3, 5, 5), 7 * SEED_STRIDE)
    assert (b1.start, b1.stop, b1.labels, b1.g_seed) == (4, 6, (7, 7, 3, 3), 7 * SEED_STRIDE + 1)  # filled from image 0
    assert b1.num_real == 2
    shuffled = SamplePlan("target", classes=(3, 5, 7), per_class=2, batch_size=4, seed=7)  # the default order
    gen = torch.Generator().manual_seed(7)
    assert shuffled.labels.tolist() == np.array([3, 3, 5, 5, 7, 7])[torch.randperm(6, generator=gen).numpy()].tolist()
    assert shuffled.batch(1).labels == tuple(shuffled.labels[[4, 5, 0, 1]].tolist())
    others = {tuple(SamplePlan("target", (3, 5, 7), 2, 4, seed=s).labels.tolist()) for s in range(8)}
    assert len(others) > 1
    with pytest.raises(ValueError, match="classes repeat"):
        SamplePlan("target", classes=(1, 1), per_class=1, batch_size=1)
    with pytest.raises(ValueError, match="per_class"):
        SamplePlan("target", classes=(1,), per_class=0, batch_size=1)


def test_parse_classes():
    assert parse_classes("0-2,5,7-8") == (0, 1, 2, 5, 7, 8)
    for bad in ("a", "1-", "3-1", "1,1", "-2", ""):
        with pytest.raises(ValueError):
            parse_classes(bad)


def test_npz_stream_round_trip(tmp_path):
    a = np.arange(7 * 2 * 2 * 3, dtype=np.uint8).reshape(7, 2, 2, 3)
    labels = np.arange(7, dtype=np.int64)
    path = write_npz_stream(tmp_path / "x.npz", [NpzMember("arr_0", a.shape, a.dtype, [a[:3], a[3:]]),
                                                 NpzMember("arr_1", labels.shape, labels.dtype, [labels])])
    with np.load(path) as z:
        assert np.array_equal(z["arr_0"], a) and np.array_equal(z["arr_1"], labels)
    with NpzArrayReader(path) as r:
        assert r.shape == a.shape and [len(b) for b in r.batches(3)] == [3, 3, 1]
    with pytest.raises(ValueError, match="chunks hold"):
        write_npz_stream(tmp_path / "y.npz", [NpzMember("arr_0", a.shape, a.dtype, [a[:3]])])
    assert not (tmp_path / "y.npz").exists()


# ---- the set ----------------------------------------------------------------------------------------
def test_set_is_the_decoder_calls_of_the_plan(reference_set, pair):
    """Every batch is Method.run with the plan's labels and g_seed; the statistics are the sum of those calls."""
    with np.load(reference_set / "samples.npz") as z:
        images, labels = z["arr_0"], z["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (5, 16, 16, 3)
    plan = SamplePlan("exact_g2", tuple(range(5)), 1, 2, seed=0, sampling=BUNDLED_SAMPLING)
    assert labels.tolist() == plan.labels.tolist() and sorted(labels.tolist()) == [0, 1, 2, 3, 4]
    sd, method = SDVAR(pair.draft, pair.target), get_method("exact_g2")
    target_passes = draft_passes = 0
    accepted = [0] * pair.target.num_stages
    for b in range(plan.num_batches):
        spec = plan.batch(b)
        out = method.run(sd, 2, list(spec.labels), spec.g_seed, BUNDLED_SAMPLING)
        assert np.array_equal(images[spec.start : spec.stop], images_to_uint8(out.images_B3HW)[: spec.num_real]), b
        target_passes += out.stats.target_passes
        draft_passes += out.stats.draft_passes
        accepted = [a + s for a, s in zip(accepted, out.stats.accepted_tokens_per_stage)]
    stats = json.loads((reference_set / "stats.json").read_text())
    d = stats["decoder_stats"]
    assert (d["batches"], d["target_passes"], d["draft_passes"]) == (3, target_passes, draft_passes)
    assert d["accepted_tokens_per_stage"] == accepted
    assert stats["sampling"] == {"cfg": 1.5, "top_k": 256, "top_p": 0.96, "more_smooth": False}
    assert stats["fallback_reason"] is None and stats["session"]["world_size"] == 1
    manifest = json.loads((reference_set / "manifest.json").read_text())
    assert manifest["complete"] and manifest["identity"]["top_k"] == 256 and manifest["identity"]["seed"] == 0


def test_images_to_uint8_rounds():
    x = torch.tensor([0.0, 0.5 / 255, 0.49 / 255, 1.0, 1.2, -0.1]).view(1, 1, 2, 3).expand(1, 3, 2, 3)
    assert images_to_uint8(x)[0, :, :, 0].ravel().tolist() == [0, 1, 0, 255, 255, 0]


def test_fast_engine_gives_the_eager_set(reference_set, tmp_path):
    """--engine fast on the CPU (static caches, captured chunk programs run eagerly): the same images."""
    assert sample(tmp_path / "fast", "--engine", "fast") == 0
    with np.load(reference_set / "samples.npz") as a, np.load(tmp_path / "fast" / "samples.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"])
    assert json.loads((tmp_path / "fast" / "stats.json").read_text())["engine"] == "fast"


def test_default_top_k_is_said_and_png(tmp_path, capsys):
    assert sample(tmp_path / "s", "--png", method="code_e3") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("models: ")
    assert any("top-k 256 instead of VAR's default 900" in line for line in out)
    pngs = sorted(p.name for p in (tmp_path / "s" / "png").iterdir() if p.suffix == ".png")
    with np.load(tmp_path / "s" / "samples.npz") as z:
        assert pngs == [f"{i:06d}_class{c}.png" for i, c in enumerate(z["arr_1"].tolist())]
    assert not (tmp_path / "s" / "shards").exists()  # removed once samples.npz is assembled


# ---- resume and refusals ------------------------------------------------------------------------------
class Interrupt(KeyboardInterrupt):
    pass


def test_resume_after_an_interrupt_gives_the_same_set(reference_set, pair, tmp_path):
    out = tmp_path / "set"
    plan = SamplePlan("exact_g2", tuple(range(5)), 1, 2, seed=0, sampling=BUNDLED_SAMPLING)
    job = SampleJob(plan=plan, out=out, models="bundled", keep_shards=True)

    def stop_after_first(batch):
        raise Interrupt

    with pytest.raises(Interrupt):
        run_job(job, pair, init_distributed("cpu"), after_shard=stop_after_first)
    folder = SampleFolder(out)
    assert folder.done_batches() == {0} and not folder.samples_path.exists()
    first = folder.shard_path(0).stat()
    (folder.shards / ".batch_000001.npz.tmp-dead").write_bytes(b"a write killed half-way")
    assert sample(out, "--keep-shards") == 0  # the CLI with the same arguments resumes
    assert folder.shard_path(0).stat().st_mtime_ns == first.st_mtime_ns  # not made again
    assert not list(folder.shards.glob(".*.tmp-*"))
    assert (out / "samples.npz").read_bytes() == (reference_set / "samples.npz").read_bytes()
    session = json.loads((out / "stats.json").read_text())["session"]
    assert (session["resumed_batches"], session["batches"], session["images"]) == (1, 2, 3)
    resumed, whole = (json.loads((d / "stats.json").read_text())["decoder_stats"] for d in (out, reference_set))
    resumed.pop("decoder_time_s"), whole.pop("decoder_time_s")
    assert resumed == whole  # every batch counted once


def test_run_job_refuses_a_set_of_another_pair(reference_set, pair):
    """What only the loaded models tell (e.g. a fallback to the bundled pair) is checked before any model call."""
    plan = SamplePlan("exact_g2", tuple(range(5)), 1, 2, seed=0, sampling=BUNDLED_SAMPLING)
    job = SampleJob(plan=plan, out=reference_set, models="bundled")
    with pytest.raises(SampleFolderError, match="other arguments .*pair"):
        run_job(job, dataclasses.replace(pair, description="another pair"), init_distributed("cpu"))


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_refuses_a_folder_of_other_arguments(reference_set, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        sample(reference_set, "--seed", "1")
    assert exc.value.code == 2
    assert "other arguments (seed 0 -> 1)" in _error(capsys)
    with pytest.raises(SystemExit):
        sample(reference_set, method="target")
    assert "method 'exact_g2' -> 'target'" in _error(capsys)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        sample(foreign)
    assert "not made by the sampler" in _error(capsys)
    assert sample(reference_set) == 0  # the same arguments: complete, nothing to do
    assert "nothing to do" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--per-class", "0"], "--per-class must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--classes", "x"], "--classes takes"),
    (["--classes", "2,2"], "names a class twice"),
    (["--classes", "0-10"], "10 do not exist"),
    (["--top-k", "900"], "--top-k must be in [0, 256]"),
    (["--method", "code_e8"], "entry_num 8 exceeds the 7 stages"),
    (["--engine", "eager", "--dtype", "bfloat16"], "needs the fast engine"),
    (["--seed", "-1"], "seed"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, args, message):
    argv = ["--method", "target", "--out", str(tmp_path / "o"), "--per-class", "1", *args]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    line = _error(capsys)
    assert line.startswith("python -m sdvar_lib.sample: error:") and message in line
    assert not (tmp_path / "o").exists()


def test_unwritable_out_is_refused(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit):
        sample(blocker / "sub")
    assert "cannot be written" in _error(capsys)


def test_official_fallback_is_the_first_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SDVAR_CKPT_DIR", str(tmp_path / "no-checkpoints"))
    assert main(["--models", "official", "--no-download", "--method", "draft", "--out", str(tmp_path / "s"), *SMALL]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("FALLBACK: official d16/d30 checkpoints unavailable")
    stats = json.loads((tmp_path / "s" / "stats.json").read_text())
    assert stats["fallback_reason"].startswith("official d16/d30 checkpoints unavailable")
    assert "FALLBACK" in stats["pair"] and stats["models"] == "official d16->d30"


def test_world_size_comes_from_torchrun_variables(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main) == (0, 1, None, True)
    assert ctx.broadcast("x") == "x" and ctx.gather(3) == [3] and ctx.all_ok(True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="inconsistent torchrun variables"):
        init_distributed("cpu")
    assert os.environ["RANK"] == "2"


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["target", "exact_adaptive", "test3_e3"])
def test_gpu_fast_path_sets_are_reproducible(cuda_device, tmp_path, method):
    """On CUDA the default is the fast path (bf16 VARs, CUDA graphs, graphed float32 decode); a rerun is byte-equal."""
    for name in ("a", "b"):
        assert main(["--method", method, "--out", str(tmp_path / name), "--device", "cuda", "--per-class", "2",
                     "--batch-size", "4", "--no-progress"]) == 0
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert (stats["engine"], stats["dtype"], stats["num_images"]) == ("fast", "bfloat16", 20)
    assert (tmp_path / "a" / "samples.npz").read_bytes() == (tmp_path / "b" / "samples.npz").read_bytes()
