"""Training code: a few steps reduce the losses, a --quick run's folder round-trips through load_bundled,
and the CLI checks every argument first, never touches the shipped models unless asked, and writes a
bundle as one set (the old complete bundle survives an interrupted write)."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sdvar_lib.data.digits import load_digits_split
from sdvar_lib.eval.metrics import load_bundled_classifier
from sdvar_lib.models.checkpoints import BUNDLED_DIR, load_bundled
from sdvar_lib.models.init import init_var_weights_
from sdvar_lib.models.var import VAR
from sdvar_lib.models.vqvae import VQVAE
from sdvar_lib.tiny import bundle, cli
from sdvar_lib.tiny.bundle import BUNDLE_FILES, save_bundle
from sdvar_lib.tiny.card import rerender_model_card
from sdvar_lib.tiny.config import OptimConfig, VAEConfig, VARConfig, quick_config
from sdvar_lib.tiny.train import encode_tokens, lr_at, reinit_dead_codes_, train_var, train_vqvae

QUICK_SEED = 3


@pytest.fixture(scope="module")
def small_data():
    data = load_digits_split()
    return replace(data, train_img_B3HW=data.train_img_B3HW[:128], train_label_B=data.train_label_B[:128],
                   train_index=data.train_index[:128])


def _vae(test_mode: bool, **kwargs) -> VQVAE:
    return VQVAE(**VAEConfig(**kwargs).kwargs(test_mode))


def _var(vae: VQVAE, **kwargs) -> VAR:
    var = VAR(vae, **VARConfig(**kwargs).kwargs())
    init_var_weights_(var)
    return var


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _recon_error(vae, img):
    with torch.no_grad():
        return float((vae.img_to_reconstructed_img(img, last_one=True) - img).abs().mean())


def test_vqvae_steps_reduce_reconstruction_error(small_data):
    torch.manual_seed(0)
    vae = _vae(False, vocab_size=32, z_channels=8)
    img = small_data.train_img_B3HW[:64]
    before = _recon_error(vae.eval(), img)
    result = train_vqvae(vae, small_data, OptimConfig(epochs=6, batch_size=32, lr=3e-3, weight_decay=0.0), seed=0,
                         dead_code_epochs=2, progress=False)
    after = _recon_error(vae, img)
    assert after < 0.7 * before
    assert result.loss_history[-1] < result.loss_history[0]
    assert len(result.heldout_usage_per_stage) == 7
    assert all(0 < u <= 100 for u in result.heldout_usage_per_stage)
    with pytest.raises(ValueError):
        train_vqvae(_vae(True, vocab_size=32, z_channels=8), small_data, OptimConfig(epochs=1), 0)


def test_var_steps_reduce_nll(small_data):
    torch.manual_seed(0)
    vae = _vae(True, vocab_size=32, z_channels=8)
    tokens = encode_tokens(vae, small_data.train_img_B3HW, small_data.train_label_B)
    assert tokens.idx_BL.shape == (128, 155) and tokens.x_BLCv.shape == (128, 154, 8)
    var = _var(vae, depth=1, embed_dim=32, num_heads=1)
    result = train_var(var, tokens, OptimConfig(epochs=8, batch_size=32, lr=3e-3), seed=0, heldout_tokens=tokens,
                       eval_every=1, progress=False)
    # uniform guessing over 32 codes is log(32) = 3.47 nats; a few steps must beat the first evaluation
    assert result.heldout_nll_history[-1] < result.heldout_nll_history[0] - 0.3
    assert result.final_heldout_nll < math.log(32)
    assert result.steps == 8 * 4 and not var.training


def test_max_steps_stops_inside_an_epoch_and_the_run_is_seeded(small_data):
    torch.manual_seed(0)
    vae = _vae(True, vocab_size=32, z_channels=8)
    tokens = encode_tokens(vae, small_data.train_img_B3HW, small_data.train_label_B)
    optim = OptimConfig(epochs=3, batch_size=32, max_steps=5)
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        var = _var(vae, depth=1, embed_dim=32, num_heads=1)
        runs.append(train_var(var, tokens, optim, seed=0, heldout_tokens=tokens, progress=False))
    a, b = runs
    # 4 steps per epoch: the budget of 5 ends one step into the second epoch (one mean loss per epoch that
    # took a step), and the held-out NLL is measured at that last epoch
    assert a.steps == 5 and len(a.loss_history) == 2 and len(a.heldout_nll_history) == 1
    assert a.loss_history == b.loss_history and a.final_heldout_nll == b.final_heldout_nll
    with pytest.raises(ValueError, match="max_steps"):
        OptimConfig(epochs=1, max_steps=0)
    with pytest.raises(ValueError, match="epochs"):
        OptimConfig(epochs=0)


def test_var_epoch_tokens_hook_is_used_and_checked(small_data):
    torch.manual_seed(0)
    vae = _vae(True, vocab_size=32, z_channels=8)
    tokens = encode_tokens(vae, small_data.train_img_B3HW[:64], small_data.train_label_B[:64])
    seen = []

    def epoch_tokens(epoch):
        seen.append(epoch)
        return tokens

    var = _var(vae, depth=1, embed_dim=32, num_heads=1)
    train_var(var, tokens, OptimConfig(epochs=3, batch_size=32), seed=0, progress=False, epoch_tokens=epoch_tokens)
    assert seen == [0, 1, 2]
    with pytest.raises(ValueError, match="rows"):
        train_var(var, tokens, OptimConfig(epochs=1, batch_size=32), seed=0, progress=False,
                  epoch_tokens=lambda epoch: encode_tokens(vae, small_data.train_img_B3HW[:8], small_data.train_label_B[:8]))


def test_init_var_weights_follow_the_reference_scheme():
    vae = _vae(True, vocab_size=32, z_channels=8)
    var = _var(vae, depth=2, embed_dim=64, num_heads=2)
    C = var.C
    ada = var.blocks[0].ada_lin[-1].weight.detach()
    assert float(ada[: 2 * C].abs().max()) < 1e-4  # gamma rows start near 0: blocks start near the identity
    assert float(ada[2 * C :].abs().max()) > 1e-2
    assert float(var.head.weight.detach().std()) < 0.02 * math.sqrt(1 / C / 3) * 1.5
    init_var_weights_(var)
    assert torch.all(var.head.bias == 0)


def test_lr_schedule_warmup_and_cosine():
    optim = OptimConfig(epochs=1, lr=1.0, warmup_frac=0.1, min_lr_ratio=0.1)
    lrs = [lr_at(s, 100, optim) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_dead_codes_are_reinitialised(small_data):
    torch.manual_seed(0)
    vae = _vae(False, vocab_size=16, z_channels=8).eval()
    with torch.no_grad():
        vae.quantize.embedding.weight[8:] = 1e4  # far from every residual: never chosen
    n = reinit_dead_codes_(vae, small_data.train_img_B3HW[:32], torch.Generator().manual_seed(0))
    assert n >= 8
    weight = vae.quantize.embedding.weight.detach()
    assert torch.isfinite(weight).all() and float(weight[8:].abs().max()) < 1e3


# ---- the CLI and the bundle -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One real ``--quick`` run of the CLI (the only training of this module); its models and report are kept."""
    out = tmp_path_factory.mktemp("quick") / "bundle"
    shipped_before = _hashes(BUNDLED_DIR)
    trained = {}
    real_train_all = cli.train_all

    def keeping_train_all(*args, **kwargs):
        trained["models"], trained["report"] = real_train_all(*args, **kwargs)
        return trained["models"], trained["report"]

    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        mp.setattr(cli, "train_all", keeping_train_all)
        rc = cli.main(["--quick", "--out", str(out), "--no-progress", "--seed", str(QUICK_SEED)])
    return SimpleNamespace(rc=rc, out=out, stdout=stdout.getvalue(), shipped_before=shipped_before, **trained)


def test_quick_cli_run_round_trips_through_load_bundled(quick_run):
    out = quick_run.out
    assert quick_run.rc == 0 and "wrote" in quick_run.stdout
    for name in BUNDLE_FILES:
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert "smoke run" in config["description"]
    quick = quick_config(QUICK_SEED)
    assert config["target"]["depth"] == quick.target.depth and config["draft"]["depth"] == quick.draft.depth
    assert config["vae"]["v_patch_nums"] == [1, 2, 3, 4, 5, 6, 8]
    pair = load_bundled(folder=out)
    assert pair.vae.patch_nums == (1, 2, 3, 4, 5, 6, 8) and pair.vae.image_size == 16
    assert pair.target.depth == quick.target.depth and pair.draft.depth == quick.draft.depth
    saved = torch.load(out / "target.pth", weights_only=True)
    for key, value in pair.target.state_dict().items():
        assert torch.equal(value, saved[key]), key
    out_gen = pair.draft.generate(2, [1, 7], g_seed=0)
    assert out_gen.images_B3HW.shape == (2, 3, 16, 16)
    clf = load_bundled_classifier(folder=out)
    assert clf(torch.rand(2, 3, 16, 16)).shape == (2, 10)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_train"] == quick.train_subset
    assert metrics["target_quality"]["class_consistency"]["num_seeds"] == len(quick.eval_seeds)
    assert metrics["machine"]["device"] == "cpu" and metrics["machine"]["torch_threads"] >= 1
    card = (out / "MODEL_CARD.md").read_text()
    assert "python -m sdvar_lib.train_tiny --quick" in card and "Fréchet" in card
    assert f"({metrics['machine']['cpu']})" in card
    # the run wrote its own folder, and the package's shipped files are byte-for-byte what they were
    assert _hashes(BUNDLED_DIR) == quick_run.shipped_before


class _NoTraining(Exception):
    pass


@pytest.fixture
def no_training(monkeypatch):
    """The CLI must refuse before any work: training or re-rendering a card raises, and every call is recorded
    (so that a CLI that failed to refuse still writes nothing, in the package's assets least of all)."""
    calls = []

    def refuse(name):
        def work(*args, **kwargs):
            calls.append((name, args))
            raise _NoTraining(f"the CLI started {name}")
        return work

    monkeypatch.setattr(cli, "train_all", refuse("train_all"))
    monkeypatch.setattr(cli, "rerender_model_card", refuse("rerender_model_card"))
    return calls


def _refused(argv, capsys) -> str:
    """Run the CLI; it must exit with code 2 and print one argparse error line (returned), no traceback."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize("argv", [
    ["--quick"],  # the old default --out was the bundled folder
    ["--quick", "--out", str(BUNDLED_DIR)],
    ["--quick", "--out", str(BUNDLED_DIR / "nested")],
    ["--quick", "--out", str(BUNDLED_DIR.parent / "other")],
    ["--quick", "--out", str(BUNDLED_DIR.parent.parent)],
    ["--render-card", "--out", str(BUNDLED_DIR)],
], ids=["no-out", "bundled", "nested", "assets", "package", "render-card"])
def test_the_cli_never_touches_the_shipped_models_by_default(argv, no_training, capsys):
    before = _hashes(BUNDLED_DIR)
    line = _refused(argv + ["--no-progress"], capsys)
    assert "--out" in line
    if "--out" not in argv:
        assert "required" in line
    assert no_training == []
    assert _hashes(BUNDLED_DIR) == before


def _file_under(tmp: Path) -> str:
    (tmp / "a_file").write_text("x")
    return str(tmp / "a_file" / "bundle")


def _foreign(tmp: Path) -> str:
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("a user's file")
    return str(tmp / "mine")


BAD_ARGUMENTS = [
    (["--max-steps", "0"], "--max-steps"),
    (["--max-steps", "-1"], "--max-steps"),
    (["--vae-epochs", "0"], "--vae-epochs"),
    (["--target-epochs", "-2"], "--target-epochs"),
    (["--draft-epochs", "0"], "--draft-epochs"),
    (["--classifier-epochs", "0"], "--classifier-epochs"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**63)], "--seed"),
    (["--threads", "0"], "--threads"),
    (["--device", "bogus"], "--device"),
    (["--replace-bundled"], "--replace-bundled"),
    (["--seed", "x"], "--seed"),
]


@pytest.mark.parametrize("extra, flag", BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_exit_2_with_one_line_naming_the_flag(extra, flag, tmp_path, no_training, capsys):
    line = _refused(["--quick", "--out", str(tmp_path / "out")] + extra, capsys)
    assert flag in line
    assert no_training == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("make_out", [_file_under, _foreign], ids=["unwritable", "foreign-files"])
def test_bad_out_folders_are_refused_before_training(make_out, tmp_path, no_training, capsys):
    out = make_out(tmp_path)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    line = _refused(["--quick", "--out", out], capsys)
    assert "--out" in line
    assert no_training == []
    assert {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.fixture
def bundled_copy(tmp_path, monkeypatch):
    """A copy of the shipped bundle, standing in for it (tests never write the package's assets)."""
    copy_dir = tmp_path / "assets" / "tiny_digits"
    shutil.copytree(BUNDLED_DIR, copy_dir)
    monkeypatch.setattr(bundle, "BUNDLED_DIR", copy_dir)
    return copy_dir


def test_the_bundled_copy_is_refused_without_the_flag_and_needs_the_evaluation(bundled_copy, no_training, capsys):
    before = _hashes(bundled_copy)
    assert "--replace-bundled" in _refused(["--quick", "--out", str(bundled_copy)], capsys)
    assert "--no-eval" in _refused(["--quick", "--out", str(bundled_copy), "--replace-bundled", "--no-eval"], capsys)
    assert no_training == [] and _hashes(bundled_copy) == before


def test_replace_bundled_replaces_everything_as_one_set(quick_run, bundled_copy, monkeypatch, capsys):
    before = _hashes(bundled_copy)
    mode = bundled_copy.stat().st_mode

    def train_all(config, *args, **kwargs):  # the quick run's training, already done
        assert config == quick_config(QUICK_SEED)
        return quick_run.models, copy.deepcopy(quick_run.report)

    monkeypatch.setattr(cli, "train_all", train_all)
    argv = ["--quick", "--out", str(bundled_copy), "--replace-bundled", "--no-progress", "--seed", str(QUICK_SEED)]
    assert cli.main(argv) == 0
    after = _hashes(bundled_copy)
    # the whole set is new, from this one run; evaluation.json (not written by training) is kept; no marker,
    # so that no other command's output may ever replace the bundled folder; no leftovers beside it
    assert set(after) == set(BUNDLE_FILES) | {"evaluation.json"}
    assert all(after[name] != before[name] for name in BUNDLE_FILES)
    assert after["evaluation.json"] == before["evaluation.json"]
    fresh = _hashes(quick_run.out)
    for name in ("config.json", "vae.pth", "draft.pth", "target.pth", "classifier.pth", "samples_target.png",
                 "samples_draft.png"):
        assert after[name] == fresh[name], name
    metrics = json.loads((bundled_copy / "metrics.json").read_text())
    assert "--replace-bundled" in metrics["command"]
    card = (bundled_copy / "MODEL_CARD.md").read_text()
    assert json.loads((bundled_copy / "config.json").read_text())["description"] in card
    assert f"target **{metrics['target']['final_heldout_nll']:.4f}**" in card
    assert bundled_copy.stat().st_mode == mode
    assert [p.name for p in bundled_copy.parent.iterdir()] == ["tiny_digits"]
    assert load_bundled(folder=bundled_copy).target.depth == quick_config(QUICK_SEED).target.depth


def _interrupt_second_sample_grid(monkeypatch):
    real = bundle.save_sample_grid
    calls = []

    def save_sample_grid(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt("interrupted mid-write")
        return real(*args, **kwargs)

    monkeypatch.setattr(bundle, "save_sample_grid", save_sample_grid)
    return calls


def test_an_interrupted_write_leaves_the_old_complete_bundle(quick_run, bundled_copy, tmp_path, monkeypatch):
    previous = tmp_path / "previous"
    shutil.copytree(quick_run.out, previous)  # an earlier run's output, which a new run may replace
    calls = _interrupt_second_sample_grid(monkeypatch)
    for folder, replace_bundled in ((bundled_copy, True), (previous, False)):
        before = _hashes(folder)
        siblings = sorted(p.name for p in folder.parent.iterdir())
        with pytest.raises(KeyboardInterrupt):
            save_bundle(folder, quick_run.models, quick_config(QUICK_SEED), "interrupted", quick_run.report,
                        replace_bundled=replace_bundled)
        assert _hashes(folder) == before
        assert sorted(p.name for p in folder.parent.iterdir()) == siblings
        calls.clear()


def test_a_failed_swap_puts_the_old_bundle_back(quick_run, bundled_copy, monkeypatch):
    before = _hashes(bundled_copy)
    real_replace = bundle.os.replace
    renames = []

    def replace_(src, dst):
        renames.append((Path(src).name, Path(dst).name))
        if len(renames) == 2:  # the old folder is aside, the new one about to move in
            raise OSError("disk gone")
        return real_replace(src, dst)

    monkeypatch.setattr(bundle.os, "replace", replace_)
    with pytest.raises(OSError, match="disk gone"):
        save_bundle(bundled_copy, quick_run.models, quick_config(QUICK_SEED), "failed swap", quick_run.report,
                    replace_bundled=True)
    assert renames[0][0] == "tiny_digits" and renames[1][1] == "tiny_digits"
    assert _hashes(bundled_copy) == before
    assert [p.name for p in bundled_copy.parent.iterdir()] == ["tiny_digits"]


def test_rerender_reproduces_the_shipped_card_from_its_stored_metrics(tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(BUNDLED_DIR, folder)
    (folder / "MODEL_CARD.md").unlink()
    assert rerender_model_card(folder) == folder / "MODEL_CARD.md"
    # metrics.json was written before the report held a MachineInfo; its card must come out unchanged
    assert (folder / "MODEL_CARD.md").read_bytes() == (BUNDLED_DIR / "MODEL_CARD.md").read_bytes()
