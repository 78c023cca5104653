"""What a FID rests on, whose statistics it shows, and which files python -m sdvar_lib.fid may write.

- every report says how many images its numbers rest on; FID of fewer images than the feature width
  + 1 is refused unless ``allow_few`` / ``--allow-few``; below the protocol's sizes notes say what the
  numbers can be compared with (the minimums are documented in ``sdvar_lib.eval.fid``);
- a sampler's ``stats.json`` is attached to a samples file only when it records that very file (size
  and SHA-256); one of another set is refused, one that records no file is not used (with a note);
- ``--out`` and ``--plot`` never write over an input of the command (not even with ``--replace``) nor
  over any existing file without ``--replace``.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from sdvar_lib.data.digits import load_digits_split, to_unit_range
from sdvar_lib.eval.cli import fid_main as main
from sdvar_lib.eval.fid import (
    IS_SPLIT,
    PR_MIN_IMAGES,
    PROTOCOL_SAMPLES,
    Features,
    Reference,
    fid_minimum,
    load_extractor,
    sample_size_notes,
    sampler_stats,
    score_samples,
)
from sdvar_lib.eval.metrics import gaussian_stats
from sdvar_lib.samples.cli import main as sample_main
from sdvar_lib.samples.npz import NpzMember, write_npz_stream
from sdvar_lib.samples.sampler import images_to_uint8


def save_images(path, images_NHW3):
    return write_npz_stream(path, [NpzMember("arr_0", images_NHW3.shape, np.dtype(np.uint8), [images_NHW3])])


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """A sampler set (65 target images of the bundled pair: the digits' 64-d features + 1), real digits and noise."""
    root = tmp_path_factory.mktemp("fidtrust")
    common = ["--classes", "0-4", "--per-class", "13", "--batch-size", "13", "--threads", "1", "--no-progress"]
    assert sample_main(["--method", "target", "--out", str(root / "target"), *common]) == 0
    save_images(root / "real.npz", images_to_uint8(to_unit_range(load_digits_split().heldout_img_B3HW)))
    rng = np.random.default_rng(0)
    save_images(root / "noise.npz", rng.integers(0, 256, size=(70, 16, 16, 3), dtype=np.uint8))
    save_images(root / "two.npz", rng.integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8))
    return root


def _features(n: int, d: int = 4, c: int = 10, seed: int = 0) -> Features:
    rng = np.random.default_rng(seed)
    return Features(pool_ND=rng.standard_normal((n, d)), logits_NC=rng.standard_normal((n, c)) * 3)


def _reference(n: int = 50, d: int = 4) -> Reference:
    f = _features(n, d, seed=1)
    return Reference(source="ref", features=f, stats=gaussian_stats(f.pool_ND), stats_source="images")


# ---- how many images -----------------------------------------------------------------------------------
def test_fid_below_the_feature_width_plus_one_is_refused_unless_allowed():
    extractor = load_extractor("digits")  # (only describe() is used with features)
    assert fid_minimum(4) == 5
    with pytest.raises(ValueError, match="at least 5 images with 4-d features, got 4"):
        score_samples(_features(4), _reference(), extractor, metrics=["fid"])
    few = score_samples(_features(4), _reference(), extractor, metrics=["fid", "is"], allow_few=True)
    assert few.num_samples == 4 and np.isfinite(few.fid)
    assert any("covariance is singular" in n for n in few.notes) and any("one split" in n for n in few.notes)
    assert few.inception_score_std is None  # one split: no spread
    enough = score_samples(_features(5), _reference(), extractor, metrics=["fid"])
    assert enough.num_samples == 5 and not any("singular" in n for n in enough.notes)
    with pytest.raises(ValueError, match="reference array: FID needs at least 65 images"):  # the reference too
        Reference.load(np.zeros((64, 16, 16, 3), np.uint8), extractor)


def test_notes_follow_the_documented_minimums():
    assert sample_size_notes(PROTOCOL_SAMPLES, PR_MIN_IMAGES) == []
    assert [n.split()[0] for n in sample_size_notes(PROTOCOL_SAMPLES - 1, PR_MIN_IMAGES)] == ["FID"]
    assert [n.split()[0] for n in sample_size_notes(PROTOCOL_SAMPLES, PR_MIN_IMAGES - 1)] == ["precision/recall"]
    assert [n.split()[0] for n in sample_size_notes(IS_SPLIT - 1, None, ["fid", "is"])] == ["FID", "IS"]
    assert [n.split()[0] for n in sample_size_notes(IS_SPLIT, None, ["fid", "is"])] == ["FID"]
    assert "compare it only with FIDs of 1,000 samples" in sample_size_notes(1000, None, ["fid"])[0]


def test_inception_score_spread_needs_two_splits():
    extractor = load_extractor("digits")
    two = score_samples(_features(IS_SPLIT + 10), _reference(), extractor, metrics=["fid", "is"])
    assert two.inception_score_std is not None and two.inception_score_std > 0
    one = score_samples(_features(IS_SPLIT), _reference(), extractor, metrics=["fid", "is"])
    assert one.inception_score_std is None


def test_cli_refuses_two_images_and_says_what_it_computes_with_allow_few(sets, capsys):
    argv = ["--samples", str(sets / "two.npz"), "--reference", str(sets / "real.npz"), "--extractor", "digits",
            "--metrics", "fid,is"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "FID needs at least 65 images with 64-d features, got 2" in _error(capsys)
    assert main([*argv, "--allow-few"]) == 0
    out = capsys.readouterr().out
    assert "(2 samples vs 269 references)" in out
    assert "note: FID of 2 samples is biased upward" in out and "covariance is singular" in out
    assert "note: IS over one split of 2 images" in out


# ---- whose statistics ----------------------------------------------------------------------------------
def test_the_sets_own_stats_are_attached(sets, tmp_path, capsys):
    stats, note = sampler_stats(sets / "target" / "samples.npz")
    assert note is None and stats["method"] == "target" and stats["num_images"] == 65
    assert main(["--samples", str(sets / "target" / "samples.npz"), "--reference", str(sets / "real.npz"),
                 "--extractor", "digits", "--out", str(tmp_path / "r.json")]) == 0
    (row,) = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert row["sampler"]["method"] == "target" and row["num_samples"] == 65 and row["num_reference"] == 269
    assert row["notes"] and "FID of 65 samples" in row["notes"][0]
    assert "| target | 65 |" in capsys.readouterr().out


def test_stats_of_another_set_are_refused(sets, tmp_path, capsys):
    """The issue's case: samples.npz of one set beside the stats.json of another."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(sets / "target" / "stats.json", mixed / "stats.json")
    shutil.copy(sets / "noise.npz", mixed / "samples.npz")
    with pytest.raises(ValueError, match="describes another set"):
        sampler_stats(mixed / "samples.npz")
    with pytest.raises(SystemExit) as exc:
        main(["--samples", str(mixed / "samples.npz"), "--reference", str(sets / "real.npz"), "--extractor", "digits"])
    assert exc.value.code == 2 and "describes another set" in _error(capsys)
    # the same size but other bytes: the hash tells
    data = bytearray((sets / "target" / "samples.npz").read_bytes())
    data[len(data) // 2] ^= 0x01
    (mixed / "samples.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="another SHA-256"):
        sampler_stats(mixed / "samples.npz")


@pytest.mark.parametrize("content,why", [
    ("not json", "unreadable"),
    (json.dumps({"method": "target"}), "not the sampler's"),
    (json.dumps({"format": "sdvar-sample-stats/1", "method": "target"}), "records no size and hash"),
])
def test_stats_that_record_no_samples_file_are_not_used(sets, tmp_path, capsys, content, why):
    folder = tmp_path / "s"
    folder.mkdir()
    shutil.copy(sets / "noise.npz", folder / "samples.npz")
    (folder / "stats.json").write_text(content)
    stats, note = sampler_stats(folder / "samples.npz")
    assert stats is None and why in note
    assert main(["--samples", str(folder / "samples.npz"), "--reference", str(sets / "real.npz"), "--extractor",
                 "digits", "--metrics", "fid", "--out", str(tmp_path / "r.json")]) == 0
    assert why in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["rows"][0]["sampler"] is None


# ---- which files it writes -----------------------------------------------------------------------------
def _argv(sets, *extra):
    return ["--samples", str(sets / "noise.npz"), "--reference", str(sets / "real.npz"), "--extractor", "digits",
            "--metrics", "fid", *extra]


def test_out_and_plot_never_replace_an_input(sets, tmp_path, capsys):
    samples = tmp_path / "samples.npz"
    shutil.copy(sets / "noise.npz", samples)
    os.link(samples, tmp_path / "alias.npz")
    before = samples.read_bytes(), (sets / "real.npz").read_bytes()
    argv = ["--samples", str(samples), "--reference", str(sets / "real.npz"), "--extractor", "digits", "--metrics", "fid"]
    for flag, target in [("--out", samples), ("--out", sets / "real.npz"), ("--plot", samples),
                         ("--plot", sets / "real.npz"), ("--out", tmp_path / "alias.npz"),
                         ("--out", tmp_path / ".." / tmp_path.name / "samples.npz")]:
        for replace in ([], ["--replace"]):
            with pytest.raises(SystemExit) as exc:
                main([*argv, flag, str(target), *replace])
            assert exc.value.code == 2
            line = _error(capsys)
            assert f"{flag} " in line and "is an input of this command" in line, line
    assert (samples.read_bytes(), (sets / "real.npz").read_bytes()) == before


def test_out_and_plot_never_replace_an_existing_file_unless_asked(sets, tmp_path, capsys):
    out, plot = tmp_path / "r.json", tmp_path / "q.png"
    out.write_text("the user's notes")
    plot.write_bytes(b"the user's picture")
    for flag, target in [("--out", out), ("--plot", plot)]:
        with pytest.raises(SystemExit) as exc:
            main(_argv(sets, flag, str(target)))
        assert exc.value.code == 2
        line = _error(capsys)
        assert "already exists" in line and "--replace" in line, line
    assert out.read_text() == "the user's notes" and plot.read_bytes() == b"the user's picture"
    with pytest.raises(SystemExit):
        main(_argv(sets, "--out", str(tmp_path / "same"), "--plot", str(tmp_path / "same")))
    assert "name the same file" in _error(capsys)
    with pytest.raises(SystemExit):
        main(_argv(sets, "--out", str(tmp_path)))
    assert "is a folder" in _error(capsys)
    assert main(_argv(sets, "--out", str(out), "--replace")) == 0  # asked for
    assert json.loads(out.read_text())["rows"][0]["num_samples"] == 70
    assert main(_argv(sets, "--out", str(tmp_path / "new.json"))) == 0  # a new file needs no flag
