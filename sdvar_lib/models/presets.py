"""Model presets: the official VQVAE and VAR sizes, the tiny random pair, and :class:`ModelPair`.

- :func:`build_vae` / :func:`build_var`: the official architectures (``vae_ch160v4096z32``,
  ``var_d16/20/24/30``) with random weights, optionally on the meta device (no memory);
- :func:`build_official_pair`: an official-size draft/target pair (shape checks, benchmarks);
- :func:`build_tiny`: the tiny random preset (the reference fixture's sizes) for tests and demos.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdvar_lib.models.init import sharpen_random_weights_
from sdvar_lib.models.var import VAR
from sdvar_lib.models.vqvae import VQVAE
from sdvar_lib.util.checks import check_choice, check_int

__all__ = [
    "OFFICIAL_PATCH_NUMS",
    "OFFICIAL_DEPTHS",
    "ModelPair",
    "official_vae_kwargs",
    "official_var_kwargs",
    "build_vae",
    "build_var",
    "build_official_pair",
    "TINY_CONFIG",
    "build_tiny",
]

OFFICIAL_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
OFFICIAL_DEPTHS = (16, 20, 24, 30)


@dataclass
class ModelPair:
    """A draft and a target VAR sharing one VQVAE, and where they came from."""

    vae: VQVAE
    draft: VAR
    target: VAR
    description: str
    fallback_reason: str | None = None
    """Set when the bundled pair stands in for official checkpoints that are missing (why)."""


def official_vae_kwargs() -> dict:
    return dict(
        vocab_size=4096, z_channels=32, ch=160, test_mode=True, share_quant_resi=4,
        v_patch_nums=OFFICIAL_PATCH_NUMS,
    )


def check_official_depth(depth, name: str = "depth") -> int:
    """``depth`` if it is one of the released VAR depths (16, 20, 24, 30)."""
    check_int(depth, name)
    return check_choice(depth, f"{name} (a released VAR depth)", OFFICIAL_DEPTHS)


def official_var_kwargs(depth: int) -> dict:
    check_official_depth(depth, "official VAR depth")
    return dict(
        num_classes=1000, depth=depth, embed_dim=depth * 64, num_heads=depth, mlp_ratio=4.0,
        drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1 * depth / 24, norm_eps=1e-6,
        shared_aln=False, cond_drop_rate=0.1, attn_l2_norm=True, patch_nums=OFFICIAL_PATCH_NUMS,
    )


def build_vae(device: torch.device | str | None = None) -> VQVAE:
    """The official ``vae_ch160v4096z32`` architecture (random weights); ``device='meta'`` allocates nothing."""
    with torch.device(device or "cpu"):
        return VQVAE(**official_vae_kwargs())


def build_var(vae: VQVAE, depth: int, device: torch.device | str | None = None) -> VAR:
    """The official ``var_d{depth}`` architecture (random weights) on top of ``vae``, in eval mode."""
    kwargs = official_var_kwargs(depth)
    with torch.device(device or "cpu"):
        return VAR(vae, **kwargs).eval()


def build_official_pair(draft_depth: int = 16, target_depth: int = 30, device=None) -> ModelPair:
    """Official-size draft/target with random weights (for shape checks and benchmarks)."""
    check_official_depth(draft_depth, "draft_depth")
    check_official_depth(target_depth, "target_depth")
    vae = build_vae(device)
    return ModelPair(
        vae=vae, draft=build_var(vae, draft_depth, device), target=build_var(vae, target_depth, device),
        description=f"official-size random weights d{draft_depth} -> d{target_depth}",
    )


TINY_CONFIG: dict = {
    "vae": dict(
        vocab_size=64, z_channels=8, ch=32, share_quant_resi=4, v_patch_nums=(1, 2, 3, 4), quant_resi=0.5,
        beta=0.25, using_znorm=False, test_mode=True,
    ),
    "var": dict(
        num_classes=10, depth=2, embed_dim=64, num_heads=2, mlp_ratio=4.0, norm_eps=1e-6, shared_aln=False,
        attn_l2_norm=True, patch_nums=(1, 2, 3, 4), cond_drop_rate=0.0,
    ),
}


def build_tiny(
    seed: int = 0, depth: int | None = None, vae: VQVAE | None = None, logit_scale: float = 3.0, device=None
) -> tuple[VQVAE, VAR]:
    """A tiny seeded random VQVAE + VAR (the fixture's sizes): 64x64 images, patch numbers (1, 2, 3, 4).

    Pass ``vae`` to build a second VAR (e.g. a draft of another ``depth``/``seed``) sharing it.
    """
    kwargs = dict(TINY_CONFIG["var"])
    if depth is not None:
        kwargs["depth"] = depth
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if vae is None:
            vae = VQVAE(**TINY_CONFIG["vae"])
        var = VAR(vae, **kwargs).eval()
    sharpen_random_weights_(var, seed, logit_scale)
    if device is not None:
        vae, var = vae.to(device), var.to(device)
    return vae, var
