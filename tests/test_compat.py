"""The SDVAR fork's research script runs on the workbench with only its import lines changed (sdvar_lib.compat).

The calling sequence below is the fork's Colab test script (``sdvar_colab_test.py`` at the fork's
HEAD: cells 2 and 4-10; cell 1 clones the fork, 3 downloads the checkpoints, 11 prints a summary, 12
asks for input), on small models built by the same factory; only the sizes differ (``V``, ``Cvae``,
``ch``, depths, ``patch_nums``) and the checkpoints are stand-ins. ``top_k=900`` stays as in the
script, so the codebook here has 1024 entries.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

import sdvar_lib
from sdvar_lib import SamplingConfig
from sdvar_lib.sdvar import generate_test3
from tests.conftest import MANIFEST_PATH, require_fixture

SMALL = dict(V=1024, Cvae=8, ch=32, share_quant_resi=4, patch_nums=(1, 2, 3, 4), num_classes=1000)


def _build(device="cpu", **kw):
    from sdvar_lib.compat import build_vae_var_speculative_decoding

    args = dict(SMALL, device=device, depth_draft=1, depth_target=2, shared_aln=False)
    args.update(kw)
    return build_vae_var_speculative_decoding(**args)


@pytest.fixture(scope="module")
def checkpoint_files(tmp_path_factory):
    """Stand-ins for the released files: state dicts of another factory build, saved with torch.save."""
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(123)
    vae, draft, target, _ = _build()
    with torch.no_grad():  # sharper logits than the reference init (head x 0.02), so tokens differ by policy
        for var in (draft, target):
            var.head.weight.mul_(200.0)
    paths = {}
    for name, module in (("vae", vae), ("draft", draft), ("target", target)):
        paths[name] = folder / f"{name}.pth"
        torch.save(module.state_dict(), paths[name])
    return paths


def test_the_fork_colab_script_runs_with_only_its_import_lines_changed(checkpoint_files, monkeypatch, caplog):
    """Cells 2 and 4-10 of the fork's ``sdvar_colab_test.py`` in its calling order, as ``docs/MIGRATING.md`` edits them.

    The two import lines name ``sdvar_lib.compat`` instead of the fork's ``models``; everything else
    is the script's, including ``importlib.reload(models)`` and the ``reset_parameters`` patches.
    Where the script catches an exception and prints it, this replay lets it fail the test.
    """
    import os.path as osp  # noqa: F401  (cell 2's imports)
    import random
    import sys

    import numpy as np
    import PIL.Image as PImage
    import torchvision

    caplog.set_level(logging.WARNING, logger="sdvar_lib.compat")
    precision = torch.get_float32_matmul_precision()  # cell 4 sets process-wide flags: restored below
    cudnn = torch.backends.cudnn
    flags = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        # ---- CELL 2 ----
        sys.path.append("/content/SDVAR")
        import importlib

        import sdvar_lib.compat as models  # the fork: `import models`

        importlib.reload(models)
        monkeypatch.setattr(torch.nn.Linear, "reset_parameters", lambda self: None)  # the script's setattr lines
        monkeypatch.setattr(torch.nn.LayerNorm, "reset_parameters", lambda self: None)
        from sdvar_lib.compat import VQVAE, build_vae_var, build_vae_var_speculative_decoding  # noqa: F401  (fork: models)

        # ---- CELL 4 ----
        seed, cfg, more_smooth, top_k, top_p = 0, 3.0, False, 900, 0.95  # noqa: F841  (more_smooth: a fallback branch's)
        gamma_values = [1, 2, 3]
        test_classes = (980, 437, 22, 562)
        torch.manual_seed(seed)
        torch.cuda.manual_seed_all(seed)
        random.seed(seed)
        np.random.seed(seed)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        tf32 = True
        torch.backends.cudnn.allow_tf32 = bool(tf32)
        torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        # ---- CELL 5 (small sizes instead of V=4096, Cvae=32, ch=160, depths 16/30 and the official patch_nums) ----
        patch_nums = (1, 2, 3, 4)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        vae, draft_var, target_var, sd_var = build_vae_var_speculative_decoding(
            V=1024, Cvae=8, ch=32, share_quant_resi=4,
            device=device, patch_nums=patch_nums,
            num_classes=1000,
            depth_draft=1,
            depth_target=2,
            shared_aln=False,
        )
        vae.load_state_dict(torch.load(checkpoint_files["vae"], map_location="cpu"), strict=True)
        target_var.load_state_dict(torch.load(checkpoint_files["target"], map_location="cpu"), strict=True)
        draft_var.load_state_dict(torch.load(checkpoint_files["draft"], map_location="cpu"), strict=True)
        vae.eval(), draft_var.eval(), target_var.eval()
        for p in vae.parameters():
            p.requires_grad_(False)
        for p in draft_var.parameters():
            p.requires_grad_(False)
        for p in target_var.parameters():
            p.requires_grad_(False)
        assert isinstance(sd_var, models.SDVAR)  # the reloaded module's class
        # ---- CELL 6: the core call ----
        B_test = 2
        label_B_test = torch.tensor([980, 437], device=device)
        result_images = sd_var.sdvar_autoregressive_infer_cfg_parallel_v1(
            B=B_test, label_B=label_B_test, g_seed=seed, cfg=cfg, gamma=2, top_k=top_k, top_p=top_p,
            similarity_threshold=0.7, max_retries=3, verbose=True,
        )
        chw = torchvision.utils.make_grid(result_images, nrow=B_test, padding=2, pad_value=1.0)
        chw = PImage.fromarray(chw.permute(1, 2, 0).mul_(255).cpu().numpy().astype(np.uint8))
        assert chw.size == (2 * 64 + 3 * 2, 64 + 2 * 2)
        assert tuple(result_images.shape) == (2, 3, 64, 64)
        first_stats = sd_var.last_output.stats
        # ---- CELL 7: gamma 1, 2, 3 at threshold 0.7 ----
        assert hasattr(sd_var, "sdvar_autoregressive_infer_cfg_parallel_v1")
        B = len(test_classes)
        label_B = torch.tensor(test_classes, device=device)
        for gamma in gamma_values:
            recon_B3HW = sd_var.sdvar_autoregressive_infer_cfg_parallel_v1(
                B=B, label_B=label_B, cfg=cfg, top_k=top_k, top_p=top_p, g_seed=seed, gamma=gamma,
                similarity_threshold=0.7, max_retries=3, verbose=True,
            )
            assert tuple(recon_B3HW.shape) == (4, 3, 64, 64)
            assert max(sd_var.last_output.stats.gamma_per_round) <= gamma
        # ---- CELL 8: gamma 1 then 2, without max_retries ----
        recon_seq = sd_var.sdvar_autoregressive_infer_cfg_parallel_v1(
            B=B, label_B=label_B, cfg=cfg, top_k=top_k, top_p=top_p, g_seed=seed, gamma=1, similarity_threshold=0.7,
            verbose=False,
        )
        recon_par = sd_var.sdvar_autoregressive_infer_cfg_parallel_v1(
            B=B, label_B=label_B, cfg=cfg, top_k=top_k, top_p=top_p, g_seed=seed, gamma=2, similarity_threshold=0.7,
            verbose=False,
        )
        assert recon_seq.shape == recon_par.shape
        # ---- CELL 9: the VAR baseline against SDVAR ----
        baseline_images = target_var.autoregressive_infer_cfg(B=B, label_B=label_B, cfg=cfg, top_k=top_k, top_p=top_p,
                                                              g_seed=seed)
        sdvar_images = sd_var.sdvar_autoregressive_infer_cfg_parallel_v1(
            B=B, label_B=label_B, cfg=cfg, top_k=top_k, top_p=top_p, g_seed=seed, gamma=2, similarity_threshold=0.7,
            verbose=False,
        )
        mse = torch.nn.functional.mse_loss(baseline_images, sdvar_images).item()
        assert mse >= 0.0 and torch.equal(sdvar_images, recon_par)
        # ---- CELL 10: several gamma / threshold pairs ----
        for config in ({"gamma": 1, "threshold": 0.5}, {"gamma": 2, "threshold": 0.5}, {"gamma": 2, "threshold": 0.7},
                       {"gamma": 2, "threshold": 0.9}, {"gamma": 3, "threshold": 0.7}):
            _ = sd_var.sdvar_autoregressive_infer_cfg_parallel_v1(
                B=B, label_B=label_B, cfg=cfg, top_k=top_k, top_p=top_p, g_seed=seed, gamma=config["gamma"],
                similarity_threshold=config["threshold"], verbose=False,
            )
            assert tuple(_.shape) == (4, 3, 64, 64)
    finally:
        torch.set_float32_matmul_precision(precision)
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags

    # what the fork's arguments mean: top1_match at 0.7, the same draws as the workbench's own call
    plain = sdvar_lib.SDVAR(draft_var, target_var)
    same = plain.generate_parallel(2, label_B_test, seed, SamplingConfig(cfg=cfg, top_k=top_k, top_p=top_p), 2,
                                   "top1_match", threshold=0.7)
    assert torch.equal(same.images_B3HW, result_images)
    assert same.stats.target_passes == first_stats.target_passes
    # said once each, through logging
    lossy = [r for r in caplog.records if "LOSSY" in r.getMessage()]
    ignored = [r for r in caplog.records if "max_retries" in r.getMessage()]
    assert len(lossy) == 1 and "policy='exact'" in lossy[0].getMessage() and "0.7" in lossy[0].getMessage()
    assert len(ignored) == 1 and "ignored" in ignored[0].getMessage()


def test_the_migration_guide_names_the_lines_the_replay_changes():
    """``docs/MIGRATING.md`` shows exactly the two import lines the replay above changes, and nothing else."""
    guide = (Path(__file__).resolve().parents[1] / "docs" / "MIGRATING.md").read_text()
    diff = guide[guide.index("```diff"):]
    diff = diff[: diff.index("```", 3)].splitlines()[1:]
    assert [line for line in diff if line.startswith("-")] == [
        "-import models", "-from models import VQVAE, build_vae_var_speculative_decoding, build_vae_var"]
    assert [line for line in diff if line.startswith("+")] == [
        "+import sdvar_lib.compat as models",
        "+from sdvar_lib.compat import VQVAE, build_vae_var_speculative_decoding, build_vae_var",
    ]
    assert " importlib.reload(models)" in diff  # an unchanged context line


def test_the_fork_test3_entry_point(tiny_pair):
    from sdvar_lib.compat import SDVAR

    _, draft, target = tiny_pair
    sd = SDVAR(draft, target)
    images = sd.sdvar_autoregressive_infer_cfg_sd_test3(B=2, label_B=torch.tensor([1, 2]), g_seed=0, cfg=3.0, top_k=5,
                                                        top_p=0.95, more_smooth=False, entry_num=2, sd_mask=1)
    assert tuple(images.shape) == (2, 3, 64, 64)
    assert sd.last_output.stats.draft_passes == 2 and torch.equal(sd.last_output.images_B3HW, images)
    want = generate_test3(sdvar_lib.SDVAR(draft, target), 2, [1, 2], 0, SamplingConfig(cfg=3.0, top_k=5, top_p=0.95),
                          entry_num=2, sd_mask=1)
    assert torch.equal(want.images_B3HW, images)


def test_threshold_selects_top1_match_and_no_threshold_is_exact(tiny_pair):
    from sdvar_lib.compat import SDVAR

    _, draft, target = tiny_pair
    plain = sdvar_lib.SDVAR(draft, target)
    kw = dict(B=2, label_B=[1, 2], g_seed=5, cfg=1.5, gamma=2)  # the fork's keywords
    own = dict(B=2, label_B=[1, 2], g_seed=5, sampling=SamplingConfig(cfg=1.5), gamma=2)  # the workbench's
    exact = plain.generate_parallel(**own).images_B3HW
    top1 = plain.generate_parallel(**own, policy="top1_match", threshold=0.5).images_B3HW
    assert not torch.equal(exact, top1)  # the two rules differ on this pair and seed
    compat = SDVAR(draft, target)
    assert torch.equal(compat.sdvar_autoregressive_infer_cfg_parallel_v1(**kw), exact)
    assert torch.equal(compat.sdvar_autoregressive_infer_cfg_parallel_v1(**kw, similarity_threshold=0.5), top1)
    # the constructor's threshold is the research entry points' default; an explicit policy wins
    with_default = SDVAR(draft, target, 0.5)
    assert torch.equal(with_default.sdvar_autoregressive_infer_cfg_parallel_v1(**kw), top1)
    assert torch.equal(with_default.sdvar_autoregressive_infer_cfg_parallel_v1(**kw, policy="exact"), exact)
    state = with_default._initialize_inference_state(2, [1, 2], 5, 1.5, 2)
    assert state.policy.describe() == "top1_match(threshold=0.5)"
    # every behaviour of sdvar_lib.SDVAR is kept (its own methods default to exact)
    assert isinstance(with_default, sdvar_lib.SDVAR)
    assert torch.equal(with_default.generate_parallel(**own).images_B3HW, exact)


def test_bad_and_conflicting_arguments_are_refused(tiny_pair):
    from sdvar_lib.compat import SDVAR, build_vae_var_speculative_decoding

    _, draft, target = tiny_pair
    sd = SDVAR(draft, target)
    with pytest.raises(ValueError, match="either similarity_threshold .* or policy"):
        sd.sdvar_autoregressive_infer_cfg_parallel_v1(2, [1, 2], 0, similarity_threshold=0.7, policy="exact")
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="similarity_threshold"):
            sd.sdvar_autoregressive_infer_cfg_parallel_v1(2, [1, 2], 0, similarity_threshold=bad)
    with pytest.raises(TypeError, match="similarity_thresh"):
        SDVAR(draft, target, "0.7")
    with pytest.raises(ValueError, match="takes no options"):  # unknown keywords are not swallowed
        sd.sdvar_autoregressive_infer_cfg_parallel_v1(2, [1, 2], 0, retries=3)
    with pytest.raises(ValueError, match="init_std"):
        build_vae_var_speculative_decoding("cpu", init_std=0.02, **{**SMALL, "V": 64})
    with pytest.raises(ValueError, match="depth_draft .* must equal depth_target"):
        _build(same_weights_debug=True)


def test_same_weights_debug_copies_the_draft_into_the_target():
    _, draft, target, sd = _build(depth_target=1, same_weights_debug=True)
    assert all(torch.equal(a, b) for a, b in zip(draft.state_dict().values(), target.state_dict().values()))
    assert sd.draft_model is draft and sd.target_model is target and sd.similarity_thresh is None


@pytest.mark.parametrize("depths", [(16, 30)])
def test_the_factory_builds_the_released_architecture(depths):
    from sdvar_lib.compat import build_vae_var_speculative_decoding

    manifest = json.loads(require_fixture(MANIFEST_PATH).read_text())
    vae, draft, target, _ = build_vae_var_speculative_decoding(device="meta", depth_draft=depths[0], depth_target=depths[1])
    for name, module in (("vae_ch160v4096z32", vae), (f"var_d{depths[0]}", draft), (f"var_d{depths[1]}", target)):
        assert {k: list(v.shape) for k, v in module.state_dict().items()} == manifest[name], name
