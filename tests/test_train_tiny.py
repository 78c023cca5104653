"""Training code: a few steps reduce the losses, and a --quick run's folder round-trips through load_bundled."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from sdvar_lib.data.digits import load_digits_split
from sdvar_lib.eval.metrics import load_bundled_classifier
from sdvar_lib.models.checkpoints import load_bundled
from sdvar_lib.tiny.train import (
    OptimConfig,
    VAEConfig,
    VARConfig,
    build_vae,
    build_var,
    encode_tokens,
    init_var_weights_,
    lr_at,
    main,
    quick_config,
    reinit_dead_codes_,
    train_var,
    train_vqvae,
)


@pytest.fixture(scope="module")
def small_data():
    data = load_digits_split()
    return replace(data, train_img_B3HW=data.train_img_B3HW[:128], train_label_B=data.train_label_B[:128],
                   train_index=data.train_index[:128])


def _recon_error(vae, img):
    with torch.no_grad():
        return float((vae.img_to_reconstructed_img(img, last_one=True) - img).abs().mean())


def test_vqvae_steps_reduce_reconstruction_error(small_data):
    torch.manual_seed(0)
    vae = build_vae(VAEConfig(vocab_size=32, z_channels=8), test_mode=False)
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
        train_vqvae(build_vae(VAEConfig(vocab_size=32, z_channels=8), test_mode=True), small_data, OptimConfig(epochs=1), 0)


def test_var_steps_reduce_nll(small_data):
    torch.manual_seed(0)
    vae = build_vae(VAEConfig(vocab_size=32, z_channels=8), test_mode=True)
    tokens = encode_tokens(vae, small_data.train_img_B3HW, small_data.train_label_B)
    assert tokens.idx_BL.shape == (128, 155) and tokens.x_BLCv.shape == (128, 154, 8)
    var = build_var(vae, VARConfig(depth=1, embed_dim=32, num_heads=1))
    result = train_var(var, tokens, OptimConfig(epochs=8, batch_size=32, lr=3e-3), seed=0, heldout_tokens=tokens,
                       eval_every=1, progress=False)
    # uniform guessing over 32 codes is log(32) = 3.47 nats; a few steps must beat the first evaluation
    assert result.heldout_nll_history[-1] < result.heldout_nll_history[0] - 0.3
    assert result.final_heldout_nll < math.log(32)
    assert result.steps == 8 * 4 and not var.training


def test_var_epoch_tokens_hook_is_used_and_checked(small_data):
    torch.manual_seed(0)
    vae = build_vae(VAEConfig(vocab_size=32, z_channels=8), test_mode=True)
    tokens = encode_tokens(vae, small_data.train_img_B3HW[:64], small_data.train_label_B[:64])
    seen = []

    def epoch_tokens(epoch):
        seen.append(epoch)
        return tokens

    var = build_var(vae, VARConfig(depth=1, embed_dim=32, num_heads=1))
    train_var(var, tokens, OptimConfig(epochs=3, batch_size=32), seed=0, progress=False, epoch_tokens=epoch_tokens)
    assert seen == [0, 1, 2]
    with pytest.raises(ValueError, match="rows"):
        train_var(var, tokens, OptimConfig(epochs=1, batch_size=32), seed=0, progress=False,
                  epoch_tokens=lambda epoch: encode_tokens(vae, small_data.train_img_B3HW[:8], small_data.train_label_B[:8]))


def test_init_var_weights_follow_the_reference_scheme():
    vae = build_vae(VAEConfig(vocab_size=32, z_channels=8), test_mode=True)
    var = build_var(vae, VARConfig(depth=2, embed_dim=64, num_heads=2))
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
    vae = build_vae(VAEConfig(vocab_size=16, z_channels=8), test_mode=False).eval()
    with torch.no_grad():
        vae.quantize.embedding.weight[8:] = 1e4  # far from every residual: never chosen
    n = reinit_dead_codes_(vae, small_data.train_img_B3HW[:32], torch.Generator().manual_seed(0))
    assert n >= 8
    weight = vae.quantize.embedding.weight.detach()
    assert torch.isfinite(weight).all() and float(weight[8:].abs().max()) < 1e3


def test_quick_cli_run_round_trips_through_load_bundled(tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["--quick", "--out", str(out), "--no-progress", "--seed", "3"]) == 0
    assert "wrote" in capsys.readouterr().out
    for name in ("config.json", "vae.pth", "draft.pth", "target.pth", "classifier.pth", "metrics.json", "MODEL_CARD.md",
                 "samples_target.png", "samples_draft.png"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert "smoke run" in config["description"]
    quick = quick_config(3)
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
    card = (out / "MODEL_CARD.md").read_text()
    assert "python -m sdvar_lib.train_tiny --quick" in card and "Fréchet" in card
