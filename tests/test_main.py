"""The main job (`python -m sdvar_lib`): one row per decoder, both pass counts, stored quality, checked arguments."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import sdvar_lib.demo.cli as job
from sdvar_lib import SDVAR, SamplingConfig, get_method, load_pair
from sdvar_lib.demo.cli import main
from sdvar_lib.demo.job import DEFAULT_METHODS, resolve_methods
from sdvar_lib.eval import load_bundled_report


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("job") / "demo"
    assert main(["--out", str(out), "--labels", "1", "7", "--seed", "3"]) == 0
    return out, json.loads((out / "stats.json").read_text())


def test_one_row_per_method_with_passes_at_batch_1_and_at_the_batch(demo):
    _, stats = demo
    rows = {r["name"]: r for r in stats["rows"]}
    assert list(rows) == list(DEFAULT_METHODS)
    assert stats["labels"] == [1, 7] and stats["batch_size"] == 2 and stats["pair"]["fallback_reason"] is None
    # the documented seeds: image i alone uses seed + i, the call of all labels uses seed
    sd = SDVAR(*(lambda p: (p.draft, p.target))(load_pair("bundled")))
    sampling = SamplingConfig(cfg=1.5)
    for name in ("target", "exact_adaptive", "test3_e3", "code_e3"):
        m = get_method(name)
        singles = [m.run(sd, 1, [label], 3 + i, sampling).stats for i, label in enumerate([1, 7])]
        call = m.run(sd, 2, [1, 7], 3, sampling).stats
        r = rows[name]
        assert r["target_passes_per_image_at_batch_1"] == sum(s.target_passes for s in singles) / 2
        assert r["draft_passes_per_image_at_batch_1"] == sum(s.draft_passes for s in singles) / 2
        assert r["target_passes_per_call"] == call.target_passes and r["draft_passes_per_call"] == call.draft_passes
        if name == "exact_adaptive":  # acceptance depends on the draws, so on the seeds
            proposed = [sum(x) for x in zip(*(s.proposed_tokens_per_stage for s in singles))]
            accepted = [sum(x) for x in zip(*(s.accepted_tokens_per_stage for s in singles))]
            expected = [None if p == 0 else round(a / p, 4) for a, p in zip(accepted, proposed)]
            assert r["token_acceptance_per_stage_at_batch_1"] == expected
    assert rows["target"]["target_passes_per_image_at_batch_1"] == 7 and rows["target"]["draft_passes_per_call"] == 0
    assert rows["test3_e3"]["target_passes_per_call"] == 4 and rows["code_e3"]["target_passes_per_call"] == 3
    assert rows["exact_adaptive"]["lossless"] and not rows["relaxed_0.3_g2"]["lossless"]
    acc = rows["exact_adaptive"]["stage_acceptance_per_stage_at_batch_1"]
    assert len(acc) == 7 and all(a is None or 0 <= a <= 1 for a in acc)


def test_quality_comes_from_the_stored_evaluation(demo):
    out, stats = demo
    report = load_bundled_report()
    for r in stats["rows"]:
        stored = report.result(r["name"], 1)
        q = r["quality"]
        assert q["class_consistency"]["mean"] == stored.class_consistency.mean
        assert q["frechet_distance"]["ci_high"] == stored.frechet_distance.ci_high
        assert "stored evaluation of the bundled pair" in q["source"]
    md = (out / "stats.md").read_text()
    assert "stored evaluation of the bundled pair" in md and "`relaxed_0.1_g2`" in md


def test_the_three_files_carry_one_run_id(demo):
    out, stats = demo
    run_id = stats["run_id"]
    assert stats["figure"] == "comparison.png"
    assert run_id in (out / "stats.md").read_text().splitlines()[0]
    assert run_id in Image.open(out / "comparison.png").text["Description"]


def test_gamma_replaces_the_gamma_of_every_sdvar_method():
    methods = resolve_methods(["target", "exact_adaptive", "relaxed_0.1_g2", "test3_e3"], 3)
    assert [m.name for m in methods] == ["target", "exact_g3", "relaxed_0.1_g3", "test3_e3"]
    assert methods[1] == get_method("exact_g3") and methods[2].gamma.describe() == "3"
    assert resolve_methods(["exact_g2"], "adaptive")[0].name == "exact_adaptive"


def _fails(capsys, argv, *expected):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith("python -m sdvar_lib: error:"), err
    for word in expected:
        assert word in message, message
    return message


BAD_ARGUMENTS = {
    "gamma-abc": (["--gamma", "abc"], ["--gamma", "'adaptive'"]),
    "gamma-0": (["--gamma", "0"], ["--gamma", ">= 1"]),
    "official-depth-17": (["--models", "official", "--draft-depth", "17"], ["--draft-depth", "16, 20, 24, 30"]),
    "depth-without-official": (["--target-depth", "24"], ["--models official"]),
    "unknown-method": (["--methods", "exact_g2", "nope"], ["unknown method 'nope'"]),
    "repeated-method": (["--methods", "exact_g2", "exact_g2"], ["repeat"]),
    "entry-beyond-stages": (["--methods", "test3_e9"], ["entry_num 9", "7 stages"]),
    "label-out-of-range": (["--labels", "3", "12"], ["--labels", "[12]"]),
    "top-k-above-vocabulary": (["--top-k", "300"], ["top_k", "256"]),
    "negative-cfg": (["--cfg", "-1"], ["cfg"]),
    "top-p-above-1": (["--top-p", "1.5"], ["top_p"]),
    "negative-seed": (["--seed", "-1"], ["--seed"]),
    "unknown-device": (["--device", "tpu"], ["tpu"]),
    "zero-threads": (["--threads", "0"], ["--threads"]),
}


@pytest.mark.parametrize("argv, expected", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_bad_arguments_are_one_argparse_line_before_any_generation(tmp_path, capsys, monkeypatch, argv, expected):
    def no_generation(*args, **kwargs):
        raise AssertionError("generation started before every argument was checked")

    monkeypatch.setattr(job, "run_methods", no_generation)
    out = tmp_path / "demo"
    _fails(capsys, ["--out", str(out), *argv], *expected)
    assert not out.exists()


def test_a_bad_out_folder_is_refused(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    _fails(capsys, ["--out", str(a_file)], "--out", "not a folder")
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("keep")
    _fails(capsys, ["--out", str(users)], "--out", "no workbench run wrote")
    assert (users / "notes.txt").read_text() == "keep"


def test_fallback_is_the_first_line_and_in_stats(tmp_path, capsys, monkeypatch):
    def offline(filename, cache_dir):
        raise OSError("no network here")

    monkeypatch.setenv("SDVAR_CKPT_DIR", str(tmp_path / "no-checkpoints"))
    monkeypatch.setattr("sdvar_lib.models.checkpoints._download", offline)
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--models", "official", "--labels", "2", "--methods", "target", "exact_g2"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("FALLBACK:") and "vae_ch160v4096z32.pth" in first
    stats = json.loads((out / "stats.json").read_text())
    assert "vae_ch160v4096z32.pth" in stats["pair"]["fallback_reason"]
    assert "stored evaluation of the bundled pair" in stats["rows"][0]["quality"]["source"]  # it is the bundled pair


def test_other_models_say_quality_is_not_measured_here(tmp_path):
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--models", "tiny-random", "--labels", "1", "--methods", "target", "exact_g2"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert all(r["quality"]["source"].startswith("not measured here") for r in stats["rows"])
    assert all(r["quality"]["class_consistency"] is None for r in stats["rows"])
    assert "not measured here" in (out / "stats.md").read_text()


def test_the_set_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--labels", "4", "--methods", "target"]
    assert main(argv) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken_figure(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(job, "demo_figure", broken_figure)
    with pytest.raises(RuntimeError, match="figure failed"):
        main(argv)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.gpu
def test_on_cuda_the_main_job_runs_the_fast_path_unless_eager(tmp_path, cuda_device):
    for extra, fast in (([], True), (["--eager"], False)):
        out = tmp_path / f"demo-{fast}"
        assert main(["--out", str(out), "--models", "tiny-random", "--labels", "1", "2", "--device", "cuda", *extra]) == 0
        stats = json.loads((out / "stats.json").read_text())
        assert stats["pair"]["fast_path"] is fast and stats["pair"]["device"].startswith("cuda")
        assert stats["pair"]["var_dtype"] in (("bfloat16", "float16") if fast else ("float32",))
        rows = {r["name"]: r for r in stats["rows"]}
        assert rows["target"]["target_passes_per_call"] == 4 and rows["code_e3"]["target_passes_per_call"] == 3
