"""FID, Inception Score and precision/recall (sdvar_lib.eval.fid, python -m sdvar_lib.fid).

The metric code path runs with the bundled digit classifier as feature extractor (bundled, or from a
locally saved state dict); the torch-fidelity adapter test needs torch-fidelity (in requirements.txt) and
builds its InceptionV3 with random weights from a local file. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import scipy.linalg
import torch

from sdvar_lib.data.digits import load_digits_split, to_unit_range
from sdvar_lib.eval.cli import fid_main as main
from sdvar_lib.eval.fid import (
    ClassifierExtractor,
    Features,
    Reference,
    extract_features,
    fid_from_stats,
    inception_score,
    load_extractor,
    precision_recall,
    score_samples,
)
from sdvar_lib.eval.metrics import feature_frechet_distance, gaussian_stats, load_bundled_classifier
from sdvar_lib.samples.cli import main as sample_main
from sdvar_lib.samples.npz import NpzMember, write_npz_stream
from sdvar_lib.samples.sampler import images_to_uint8

HAS_TORCH_FIDELITY = importlib.util.find_spec("torch_fidelity") is not None


def save_images(path, images_NHW3, labels=None):
    members = [NpzMember("arr_0", images_NHW3.shape, np.dtype(np.uint8), [images_NHW3])]
    if labels is not None:
        members.append(NpzMember("arr_1", labels.shape, labels.dtype, [labels]))
    return write_npz_stream(path, members)


# ---- the Fréchet distance on Gaussians with a known answer --------------------------------------
def _scipy_fd(mu1, s1, mu2, s2) -> float:
    """The TTUR / evaluator formula with scipy's sqrtm, computed independently of the workbench."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fid_of_commuting_gaussians_has_the_closed_form():
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    rng = np.random.default_rng(0)
    x1 = mu1 + rng.standard_normal((400_000, 3)) * np.sqrt(a)
    x2 = mu2 + rng.standard_normal((400_000, 3)) * np.sqrt(b)
    exact = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())  # = 5 + (1 + 1 + 6.25)
    assert exact == pytest.approx(13.25)
    assert fid_from_stats(gaussian_stats(x1), gaussian_stats(x2)) == pytest.approx(exact, rel=0.01)


def test_fid_of_general_gaussians_matches_scipy():
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    s1, s2 = A @ A.T + 0.1 * np.eye(6), B @ B.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    truth = _scipy_fd(mu1, s1, mu2, s2)
    x1 = rng.multivariate_normal(mu1, s1, size=300_000)
    x2 = rng.multivariate_normal(mu2, s2, size=300_000)
    g1, g2 = gaussian_stats(x1), gaussian_stats(x2)
    ours = fid_from_stats(g1, g2)
    assert ours == pytest.approx(_scipy_fd(g1.mean_D, g1.cov_DD, g2.mean_D, g2.cov_DD), rel=1e-8)  # same statistics
    assert ours == pytest.approx(truth, rel=0.02)  # the population answer, up to sampling error
    assert fid_from_stats(g1, g1) == pytest.approx(0.0, abs=1e-8)


# ---- Inception Score and precision/recall ------------------------------------------------------
def test_inception_score_known_answers():
    C = 8
    confident = np.full((4 * C, C), -50.0)
    confident[np.arange(4 * C), np.arange(4 * C) % C] = 50.0  # certain predictions, every class equally often
    assert inception_score(confident)[0] == pytest.approx(C, rel=1e-6)
    same = np.zeros((10, C))
    same[:, 3] = 50.0
    assert inception_score(same)[0] == pytest.approx(1.0, abs=1e-6)
    assert inception_score(np.zeros((10, C)))[0] == pytest.approx(1.0)
    # consecutive splits of split_size samples: two classes in the first split, all eight in the second
    split_logits = np.concatenate([confident[np.arange(8) % 2], confident[:8]])
    mean, std = inception_score(split_logits, split_size=8)
    assert (mean, std) == pytest.approx((5.0, 3.0), rel=1e-6)


def _brute_pr(ref, smp, k):
    d_rr = np.linalg.norm(ref[:, None] - ref[None], axis=-1)
    d_ss = np.linalg.norm(smp[:, None] - smp[None], axis=-1)
    r_ref, r_smp = np.sort(d_rr, axis=1)[:, k], np.sort(d_ss, axis=1)[:, k]
    d_sr = np.linalg.norm(smp[:, None] - ref[None], axis=-1)
    return float((d_sr <= r_ref[None]).any(1).mean()), float((d_sr.T <= r_smp[None]).any(1).mean())


@pytest.mark.parametrize("block", [1, 7, 4096])
def test_precision_recall_equals_brute_force(block):
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((60, 5))
    smp = rng.standard_normal((45, 5)) * 1.5 + 0.7
    got = precision_recall(ref, smp, k=3, block=block)
    assert got == pytest.approx(_brute_pr(ref, smp, 3), abs=1e-12)
    assert 0 < got[0] < 1 and 0 < got[1] < 1


def test_precision_recall_extremes():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((30, 4))
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)
    with pytest.raises(ValueError, match="more than 3 images"):
        precision_recall(x[:3], x)


# ---- the code path with the digits classifier on the bundled pair ------------------------------------
@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Target samples of the bundled pair (sampler CLI), the held-out real digits and noise, as .npz files."""
    root = tmp_path_factory.mktemp("fid")
    common = ["--classes", "0-9", "--per-class", "7", "--batch-size", "10", "--threads", "1", "--no-progress"]
    assert sample_main(["--method", "target", "--out", str(root / "target"), *common]) == 0
    real = images_to_uint8(to_unit_range(load_digits_split().heldout_img_B3HW))
    save_images(root / "real.npz", real)
    noise = np.random.default_rng(0).integers(0, 256, size=(70, 16, 16, 3), dtype=np.uint8)
    save_images(root / "noise.npz", noise)
    return root


def test_digits_fid_equals_the_workbench_frechet_distance(sets):
    """FID through the extractor path = feature_frechet_distance of the classifier on the same images."""
    extractor = load_extractor("digits")
    reference = Reference.load(sets / "real.npz", extractor, batch_size=7)
    report = score_samples(sets / "target" / "samples.npz", reference, extractor, batch_size=13)
    with np.load(sets / "target" / "samples.npz") as z, np.load(sets / "real.npz") as r:
        fake = torch.from_numpy(z["arr_0"]).permute(0, 3, 1, 2).float() / 255
        real = torch.from_numpy(r["arr_0"]).permute(0, 3, 1, 2).float() / 255
    direct = feature_frechet_distance(load_bundled_classifier(), fake, real)
    assert report.fid == pytest.approx(direct, rel=1e-6)
    assert report.reference_stats == "images" and report.num_samples == 70
    assert 1.0 < report.inception_score <= 10.0
    assert 0.0 < report.precision <= 1.0 and 0.0 < report.recall <= 1.0
    noise = score_samples(sets / "noise.npz", reference, extractor)
    assert noise.fid > 3 * report.fid  # the metric sees quality


def test_cli_with_a_locally_saved_state_dict(sets, tmp_path, capsys):
    weights = tmp_path / "classifier_state.pth"
    torch.save(load_bundled_classifier().state_dict(), weights)
    argv = ["--samples", str(sets / "target" / "samples.npz"), str(sets / "noise.npz"), "--reference",
            str(sets / "real.npz"), "--extractor", "digits", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "bundled.json"), "--plot", str(tmp_path / "q.png")]) == 0
    assert (tmp_path / "q.png").read_bytes()[:4] == b"\x89PNG"
    assert main([*argv, "--extractor-weights", str(weights), "--out", str(tmp_path / "local.json")]) == 0
    out = capsys.readouterr().out
    assert "| samples | method |" in out and "| target |" in out  # the sampler's stats.json feeds the table
    bundled, local = (json.loads((tmp_path / f"{n}.json").read_text())["rows"] for n in ("bundled", "local"))
    for a, b in zip(bundled, local):
        assert (a["fid"], a["inception_score"], a["precision"], a["recall"]) == \
            (b["fid"], b["inception_score"], b["precision"], b["recall"])
    assert bundled[0]["sampler"]["decoder_stats"]["target_passes_per_image"] == pytest.approx(0.7)  # 7 stages / 10


def test_sample_set_against_sample_set_and_itself(sets):
    extractor = load_extractor("digits")
    reference = Reference.load(sets / "target" / "samples.npz", extractor)
    same = score_samples(sets / "target" / "samples.npz", reference, extractor)
    assert same.fid == pytest.approx(0.0, abs=1e-6) and (same.precision, same.recall) == (1.0, 1.0)


def test_stored_reference_statistics_are_used_like_the_evaluator(sets, tmp_path):
    """A reference .npz with mu/sigma: FID uses them (extractor 'inception' only), 'images' recomputes."""
    classifier = load_bundled_classifier()

    class FakeInception(ClassifierExtractor):  # the digits network under the inception name
        def __init__(self):
            super().__init__(classifier, "test")
            self.name = "inception"

    extractor = FakeInception()
    real = extract_features(extractor, sets / "real.npz")
    noise = extract_features(extractor, sets / "noise.npz")
    g = gaussian_stats(noise.pool_ND)  # stored statistics that are not those of arr_0
    with np.load(sets / "real.npz") as z:
        np.savez(tmp_path / "ref.npz", arr_0=z["arr_0"], mu=g.mean_D, sigma=g.cov_DD)
    auto = Reference.load(tmp_path / "ref.npz", extractor, need_features=False)
    assert auto.stats_source == "stored mu/sigma" and auto.features is None
    images = Reference.load(tmp_path / "ref.npz", extractor, reference_stats="images")
    smp = Features(real.pool_ND, real.logits_NC)
    assert score_samples(smp, auto, extractor, metrics=["fid"]).fid == pytest.approx(
        fid_from_stats(gaussian_stats(real.pool_ND), g))
    assert score_samples(smp, images, extractor, metrics=["fid"]).fid == pytest.approx(0.0, abs=1e-6)
    digits = load_extractor("digits")  # not 'inception': stored statistics of another network are never used
    assert Reference.load(tmp_path / "ref.npz", digits, need_features=False).stats_source == "images"


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_cli_errors_are_one_line(sets, tmp_path, capsys):
    good = ["--samples", str(sets / "noise.npz"), "--reference", str(sets / "real.npz"), "--extractor", "digits"]
    cases = [
        (["--samples", str(tmp_path / "missing.npz"), "--reference", str(sets / "real.npz")], "does not exist"),
        ([*good, "--metrics", "is"], "must include fid"),
        ([*good, "--extractor-weights", str(tmp_path / "none.pth")], "does not exist"),
    ]
    wrong = tmp_path / "wrong.pth"
    torch.save({"w": torch.zeros(2)}, wrong)
    cases.append(([*good, "--extractor-weights", str(wrong)], "does not fit"))
    np.savez(tmp_path / "no_arr0.npz", images=np.zeros((2, 16, 16, 3), np.uint8))
    cases.append((["--samples", str(tmp_path / "no_arr0.npz"), "--reference", str(sets / "real.npz")], "holds no arr_0"))
    big = np.zeros((3, 32, 32, 3), np.uint8)
    save_images(tmp_path / "big.npz", big)
    cases.append((["--samples", str(tmp_path / "big.npz"), "--reference", str(sets / "real.npz"), "--extractor", "digits"],
                  "takes 16x16 images"))
    if not HAS_TORCH_FIDELITY:
        cases.append((good[:4], "needs torch-fidelity"))
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert message in _error(capsys), argv


def test_torch_fidelity_inception_from_a_local_file(tmp_path, monkeypatch):
    """The adapter reads torch-fidelity's InceptionV3 from a local state dict (random weights here: no download)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    from sdvar_lib.eval.fid import TorchFidelityInception

    with monkeypatch.context() as m:  # build the architecture once without weights, save a random state dict
        m.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), tmp_path / "inception.pth")
    extractor = TorchFidelityInception(tmp_path / "inception.pth")
    images = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    feats = extract_features(extractor, images, batch_size=3)
    assert feats.pool_ND.shape == (4, 2048) and feats.logits_NC.shape == (4, 1008)
    assert np.isfinite(feats.pool_ND).all()
    save_images(tmp_path / "a.npz", images)
    save_images(tmp_path / "b.npz", images[::-1].copy())
    argv = ["--samples", str(tmp_path / "a.npz"), "--reference", str(tmp_path / "b.npz"), "--extractor-weights",
            str(tmp_path / "inception.pth"), "--device", "cpu", "--out", str(tmp_path / "r.json"), "--allow-few"]
    assert main(argv) == 0  # the CLI's default extractor, from the local file
    (row,) = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert row["fid"] == pytest.approx(0.0, abs=1e-3) and (row["precision"], row["recall"]) == (1.0, 1.0)
