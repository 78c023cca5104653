"""Model presets, checkpoint loading and the bundled default models.

- :func:`build_vae` / :func:`build_var`: the official presets (``vae_ch160v4096z32``,
  ``var_d16/20/24/30``), optionally on the meta device.
- :func:`load_official`: local files when present, else the hub repository ``FoundationVision/var``
  (Colab), always ``torch.load(..., weights_only=True)``.
- :func:`load_state_dict_checked`: strict loading whose errors name the first differing key/shape.
- :func:`build_tiny`: the tiny random preset (the reference fixture's sizes) for tests and demos.
- :func:`load_bundled`: the trained tiny draft/target pair shipped inside the package.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sdvar_lib.models.var import VAR
from sdvar_lib.models.vqvae import VQVAE

log = logging.getLogger(__name__)

__all__ = [
    "HUB_REPO_ID",
    "OFFICIAL_PATCH_NUMS",
    "OFFICIAL_DEPTHS",
    "VAE_FILENAME",
    "CheckpointError",
    "ModelPair",
    "official_vae_kwargs",
    "official_var_kwargs",
    "build_vae",
    "build_var",
    "build_official_pair",
    "var_filename",
    "load_state_dict_checked",
    "load_checkpoint_file",
    "resolve_official_files",
    "load_official",
    "TINY_CONFIG",
    "build_tiny",
    "BUNDLED_DIR",
    "load_bundled",
    "MODEL_CHOICES",
    "pick_device",
    "load_pair",
]

HUB_REPO_ID = "FoundationVision/var"
OFFICIAL_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
OFFICIAL_DEPTHS = (16, 20, 24, 30)
VAE_FILENAME = "vae_ch160v4096z32.pth"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_digits"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not fit the model it is loaded into."""


@dataclass
class ModelPair:
    """A draft and a target VAR sharing one VQVAE."""

    vae: VQVAE
    draft: VAR
    target: VAR
    description: str


def var_filename(depth: int) -> str:
    return f"var_d{depth}.pth"


def official_vae_kwargs() -> dict:
    return dict(
        vocab_size=4096, z_channels=32, ch=160, test_mode=True, share_quant_resi=4,
        v_patch_nums=OFFICIAL_PATCH_NUMS,
    )


def official_var_kwargs(depth: int) -> dict:
    if depth not in OFFICIAL_DEPTHS:
        raise ValueError(f"official VAR depth must be one of {OFFICIAL_DEPTHS}, got {depth}")
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
    """The official ``var_d{depth}`` architecture (random weights) on top of ``vae``."""
    kwargs = official_var_kwargs(depth)
    with torch.device(device or "cpu"):
        return VAR(vae, **kwargs).eval()


def build_official_pair(draft_depth: int = 16, target_depth: int = 30, device=None) -> ModelPair:
    """Official-size draft/target with random weights (for shape checks and benchmarks)."""
    vae = build_vae(device)
    return ModelPair(
        vae=vae, draft=build_var(vae, draft_depth, device), target=build_var(vae, target_depth, device),
        description=f"official-size random weights d{draft_depth} -> d{target_depth}",
    )


# ---- loading ----------------------------------------------------------------------------------
def _first_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str | None:
    for key, tensor in expected.items():
        if key not in given:
            return f"missing key {key!r} (expected shape {tuple(tensor.shape)})"
        if tuple(given[key].shape) != tuple(tensor.shape):
            return f"key {key!r} has shape {tuple(given[key].shape)}, the model expects {tuple(tensor.shape)}"
    for key in given:
        if key not in expected:
            return f"unexpected key {key!r} (shape {tuple(given[key].shape)})"
    return None


def _describe(model: nn.Module) -> str:
    if isinstance(model, VAR):
        return f"VAR depth {model.depth} width {model.C} vocab {model.V} classes {model.num_classes}"
    if isinstance(model, VQVAE):
        return f"VQVAE vocab {model.vocab_size} Cvae {model.Cvae} patch_nums {model.patch_nums}"
    return type(model).__name__


def _depth_of(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    idx = {int(k.split(".")[1]) for k in state_dict if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    return max(idx) + 1 if idx else None


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Strict ``load_state_dict`` that names the first mismatch instead of a bare traceback."""
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{source} is not a state dict of tensors (got {type(state_dict).__name__})")
    mismatch = _first_mismatch(model.state_dict(), state_dict)
    if mismatch is not None:
        hint = ""
        if isinstance(model, VAR):
            depth = _depth_of(state_dict)
            if depth is not None and depth != model.depth:
                hint = f"; the file holds a depth-{depth} VAR, the model has depth {model.depth}"
        raise CheckpointError(f"{source} does not fit {_describe(model)}: {mismatch}{hint}")
    model.load_state_dict(dict(state_dict), strict=True)


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict with ``weights_only=True`` (never full unpickling)."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # unreadable, truncated, or a pickle that weights_only refuses
        raise CheckpointError(f"cannot read {path} as a weights-only state dict: {exc}") from exc
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def _download(filename: str, cache_dir: Path | None) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise FileNotFoundError("huggingface_hub is not installed") from exc
    return Path(hf_hub_download(repo_id=HUB_REPO_ID, filename=filename, cache_dir=cache_dir))


def resolve_official_files(
    filenames: list[str], ckpt_dir: str | os.PathLike | None = None, download: bool = True
) -> dict[str, Path]:
    """Local paths of official files: ``ckpt_dir`` first, then the hub (if ``download``).

    Raises :class:`FileNotFoundError` naming every missing file, the hub repository and the
    bundled offline alternative.
    """
    folder = Path(ckpt_dir) if ckpt_dir is not None else Path(os.environ.get("SDVAR_CKPT_DIR", "checkpoints"))
    found: dict[str, Path] = {}
    missing: list[str] = []
    errors: list[str] = []
    hub_reachable = download
    for name in filenames:
        local = folder / name
        if local.is_file():
            found[name] = local
            continue
        if hub_reachable:
            try:
                found[name] = _download(name, None)
                continue
            except Exception as exc:  # offline, no huggingface_hub, hub error: do not retry per file
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
                hub_reachable = False
        missing.append(name)
    if missing:
        detail = ("\n  download errors:\n    " + "\n    ".join(errors)) if errors else ""
        raise FileNotFoundError(
            f"official checkpoint file(s) {', '.join(missing)} not found in {folder.resolve()} "
            f"and {'could not be downloaded' if download else 'downloading is disabled'} from the hub repository "
            f"{HUB_REPO_ID!r} (https://huggingface.co/{HUB_REPO_ID}). Put the files in that folder (or set "
            "SDVAR_CKPT_DIR), run where the hub is reachable (e.g. Colab), or use the bundled offline models: "
            f"sdvar_lib.models.checkpoints.load_bundled().{detail}"
        )
    return found


def load_official(
    draft_depth: int = 16,
    target_depth: int = 30,
    ckpt_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    download: bool = True,
) -> ModelPair:
    """The official VQVAE with a draft and a target VAR, loaded strictly from the released files."""
    names = [VAE_FILENAME, var_filename(draft_depth), var_filename(target_depth)]
    paths = resolve_official_files(names, ckpt_dir=ckpt_dir, download=download)
    vae = build_vae("meta")
    vae = vae.to_empty(device="cpu")
    load_state_dict_checked(vae, load_checkpoint_file(paths[VAE_FILENAME]), str(paths[VAE_FILENAME]))
    vae = vae.to(device)
    models = []
    for depth in (draft_depth, target_depth):
        name = var_filename(depth)
        with torch.device("meta"):
            var = VAR(vae, **official_var_kwargs(depth))
        var = var.to_empty(device="cpu")
        load_state_dict_checked(var, load_checkpoint_file(paths[name]), str(paths[name]))
        models.append(var.to(device).eval())
    log.info("loaded official VAR d%d (draft) and d%d (target) on %s", draft_depth, target_depth, device)
    return ModelPair(vae=vae, draft=models[0], target=models[1], description=f"official d{draft_depth} -> d{target_depth}")


# ---- tiny random preset -----------------------------------------------------------------------
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


def _sharpen_(var: VAR, seed: int, logit_scale: float) -> None:
    """Draw random weights that give far-from-uniform logits (as the reference fixture does)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in var.named_parameters():
            if name.endswith("scale_mul_1H11"):
                continue
            p.copy_(torch.randn(p.shape, generator=gen) * (0.02 if p.ndim > 1 else 0.01))
        for t in (var.class_emb.weight, var.pos_start, var.pos_1LC, var.lvl_embed.weight):
            t.copy_(torch.randn(t.shape, generator=gen) * 0.5)
        var.head.weight.mul_(logit_scale / 0.02 / var.C**0.5)
        for block in var.blocks:
            block.ada_lin[1].weight.mul_(5.0)


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
    _sharpen_(var, seed, logit_scale)
    if device is not None:
        vae, var = vae.to(device), var.to(device)
    return vae, var


# ---- bundled default --------------------------------------------------------------------------
def load_bundled(device: torch.device | str = "cpu", folder: str | os.PathLike | None = None) -> ModelPair:
    """The trained tiny draft/target pair (handwritten digits) shipped in ``sdvar_lib/assets``.

    The folder holds ``config.json`` (``{"vae": {...}, "draft": {...}, "target": {...}}``, constructor
    keyword arguments) and ``vae.pth``, ``draft.pth``, ``target.pth`` (weights-only state dicts).
    """
    folder = Path(folder) if folder is not None else BUNDLED_DIR
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"bundled models not found: {config_path} is missing. Reinstall the package, or retrain them "
            "with `python -m sdvar_lib.train_tiny`."
        )
    config = json.loads(config_path.read_text())
    vae = VQVAE(**config["vae"])
    load_state_dict_checked(vae, load_checkpoint_file(folder / "vae.pth"), str(folder / "vae.pth"))
    models = {}
    for role in ("draft", "target"):
        var = VAR(vae, **config[role])
        load_state_dict_checked(var, load_checkpoint_file(folder / f"{role}.pth"), str(folder / f"{role}.pth"))
        models[role] = var.eval()
    vae = vae.to(device).eval()
    return ModelPair(
        vae=vae, draft=models["draft"].to(device), target=models["target"].to(device),
        description=config.get("description", "bundled tiny digits pair"),
    )


# ---- one entry point for notebooks and CLIs -----------------------------------------------------
MODEL_CHOICES = ("bundled", "official", "tiny-random")


def pick_device(prefer: str | None = None) -> torch.device:
    """``cuda`` when available (or ``prefer`` if given), else ``cpu``."""
    if prefer is not None:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pair(
    choice: str = "bundled",
    draft_depth: int = 16,
    target_depth: int = 30,
    device: torch.device | str | None = None,
    ckpt_dir: str | os.PathLike | None = None,
    download: bool = True,
    fallback: bool = True,
) -> ModelPair:
    """Load a draft/target pair by name: ``"bundled"`` (offline default), ``"official"`` or ``"tiny-random"``.

    With ``choice="official"`` and ``fallback=True``, missing official files (no network, no local
    copies) fall back to the bundled pair with a logged warning that says why; with
    ``fallback=False`` the :class:`FileNotFoundError` is raised.
    """
    if choice not in MODEL_CHOICES:
        raise ValueError(f"model choice must be one of {MODEL_CHOICES}, got {choice!r}")
    device = pick_device(None if device is None else str(device))
    if choice == "official":
        try:
            return load_official(draft_depth, target_depth, ckpt_dir=ckpt_dir, device=device, download=download)
        except FileNotFoundError as exc:
            if not fallback:
                raise
            log.warning("official checkpoints unavailable, using the bundled tiny pair instead: %s", exc)
            pair = load_bundled(device)
            pair.description += (
                f" (fallback: official d{draft_depth}/d{target_depth} checkpoints unavailable offline; "
                f"see {HUB_REPO_ID} on the hub)"
            )
            return pair
    if choice == "bundled":
        return load_bundled(device)
    vae, target = build_tiny(seed=0, device=device)
    _, draft = build_tiny(seed=1, depth=1, vae=vae, device=device)
    return ModelPair(vae=vae, draft=draft, target=target, description="tiny random pair (seeds 0/1)")
