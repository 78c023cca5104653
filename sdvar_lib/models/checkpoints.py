"""Checkpoint loading: weights-only files, the hub, the bundled default pair and :func:`load_pair`.

- :func:`load_official`: local files when present, else the hub repository ``FoundationVision/var``
  (Colab), always ``torch.load(..., weights_only=True)``.
- :func:`load_state_dict_checked`: strict loading whose errors name the first differing key/shape
  or the first tensor holding NaN/inf.
- :func:`load_bundled`: the trained tiny draft/target pair shipped inside the package (read-only).
- :func:`load_pair`: one entry point for notebooks and CLIs; it falls back to the bundled pair only
  when official files are missing, and says so in ``ModelPair.fallback_reason``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from sdvar_lib.models.footprint import check_official_pair_fits
from sdvar_lib.models.presets import (
    ModelPair,
    build_official_pair,
    build_tiny,
    build_vae,
    check_official_depth,
    official_var_kwargs,
)
from sdvar_lib.models.var import VAR
from sdvar_lib.models.vqvae import VQVAE
from sdvar_lib.util.checks import check_bool, check_choice, check_path

log = logging.getLogger(__name__)

__all__ = [
    "HUB_REPO_ID",
    "VAE_FILENAME",
    "BUNDLED_DIR",
    "MODEL_CHOICES",
    "RENAMED_MODEL_CHOICES",
    "CheckpointError",
    "var_filename",
    "load_state_dict_checked",
    "load_checkpoint_file",
    "resolve_official_files",
    "load_official",
    "load_bundled",
    "pick_device",
    "load_pair",
]

HUB_REPO_ID = "FoundationVision/var"
VAE_FILENAME = "vae_ch160v4096z32.pth"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_digits"
MODEL_CHOICES = ("bundled", "official", "random-official", "tiny-random")
"""The pairs :func:`load_pair` (and every command's ``--models``) offers: the bundled trained digits pair, the
official checkpoints, the official sizes with random weights (seed 0: timing, memory, shapes) and the
tiny random pair of the tests (seeds 0/1)."""
RENAMED_MODEL_CHOICES = {"official-random": "random-official"}
"""Other spellings seen for a choice -> its name; refused with a message that gives the name."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not fit the model it is loaded into."""


def var_filename(depth: int) -> str:
    return f"var_d{depth}.pth"


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
    parameters = dict(model.named_parameters())  # buffers may hold -inf by design (attention masks)
    for key, tensor in state_dict.items():
        if key in parameters and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{source}: key {key!r} holds {bad} non-finite value(s) (NaN or inf); the file is corrupt or was "
                "saved from a diverged run, and a model with such weights would generate NaN images"
            )
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
    check_official_depth(draft_depth, "draft_depth")
    check_official_depth(target_depth, "target_depth")
    check_path(ckpt_dir, "ckpt_dir")
    check_bool(download, "download")
    names = [VAE_FILENAME, var_filename(draft_depth), var_filename(target_depth)]
    paths = resolve_official_files(names, ckpt_dir=ckpt_dir, download=download)
    check_official_pair_fits(draft_depth, target_depth, device, reading_files=True)  # on a CPU: the cost, or a refusal
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


# ---- bundled default --------------------------------------------------------------------------
def _read_bundle_config(folder: Path) -> dict:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"bundled models not found: {config_path} is missing. Reinstall the package, or retrain them "
            "with `python -m sdvar_lib.train_tiny --out FOLDER` and pass that folder."
        )
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path} is not valid JSON ({exc}); reinstall the package or retrain the pair") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} must hold a JSON object, got {type(config).__name__}")
    missing = [k for k in ("vae", "draft", "target") if not isinstance(config.get(k), dict)]
    if missing:
        raise CheckpointError(
            f"{config_path} has no {', '.join(repr(k) for k in missing)} entry (an object of constructor keyword "
            "arguments); expected keys 'vae', 'draft' and 'target'"
        )
    return config


def _construct(cls, kwargs: dict, source: str, *args):
    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: cannot build a {cls.__name__} from its arguments: {exc}") from None


def load_bundled(device: torch.device | str = "cpu", folder: str | os.PathLike | None = None) -> ModelPair:
    """The trained tiny draft/target pair (handwritten digits) shipped in ``sdvar_lib/assets``.

    The folder holds ``config.json`` (``{"vae": {...}, "draft": {...}, "target": {...}}``, constructor
    keyword arguments) and ``vae.pth``, ``draft.pth``, ``target.pth`` (weights-only state dicts).
    """
    folder = check_path(folder, "folder") or BUNDLED_DIR
    config = _read_bundle_config(folder)
    source = str(folder / "config.json")
    vae = _construct(VQVAE, config["vae"], f"{source} 'vae'")
    load_state_dict_checked(vae, load_checkpoint_file(folder / "vae.pth"), str(folder / "vae.pth"))
    models = {}
    for role in ("draft", "target"):
        var = _construct(VAR, config[role], f"{source} {role!r}", vae)
        load_state_dict_checked(var, load_checkpoint_file(folder / f"{role}.pth"), str(folder / f"{role}.pth"))
        models[role] = var.eval()
    vae = vae.to(device).eval()
    return ModelPair(
        vae=vae, draft=models["draft"].to(device), target=models["target"].to(device),
        description=config.get("description", "bundled tiny digits pair"),
    )


# ---- one entry point for notebooks and CLIs -----------------------------------------------------
def pick_device(prefer: str | torch.device | None = None) -> torch.device:
    """``prefer`` if given (it must exist here), else ``cuda`` when available, else ``cpu``."""
    if prefer is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(prefer, (str, torch.device)):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda:0', a torch.device or None, got {prefer!r}")
    try:
        device = torch.device(prefer)
    except RuntimeError:
        raise ValueError(f"device {prefer!r} is not a device name; use 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {prefer!r} was asked for but CUDA is not available here; use device='cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {prefer!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type not in ("cpu", "meta"):
        raise ValueError(f"device {prefer!r} is not supported; use 'cpu' or 'cuda[:N]'")
    return device


def load_pair(
    choice: str = "bundled",
    draft_depth: int = 16,
    target_depth: int = 30,
    device: torch.device | str | None = None,
    ckpt_dir: str | os.PathLike | None = None,
    download: bool = True,
    fallback: bool = True,
) -> ModelPair:
    """Load a draft/target pair by name, one of :data:`MODEL_CHOICES`: ``"bundled"`` (offline default),
    ``"official"``, ``"random-official"`` (official sizes, random weights from seed 0, the same on every
    process) or ``"tiny-random"``.

    Every argument is checked first (an official depth must be one of 16, 20, 24, 30). An official-size pair
    on the CPU logs what it will cost (memory, rough time per image) at WARNING before it is built, and raises
    :class:`~sdvar_lib.util.memory.InsufficientMemoryError` (a ``ValueError``) when it cannot fit in the
    memory free now (:func:`~sdvar_lib.models.footprint.check_official_pair_fits`). With
    ``choice="official"`` and ``fallback=True``, missing official files (no network, no local
    copies) fall back to the bundled pair: the pair's ``fallback_reason`` and description say why,
    and a warning is logged. With ``fallback=False`` the :class:`FileNotFoundError` is raised.
    """
    if isinstance(choice, str) and choice in RENAMED_MODEL_CHOICES:
        raise ValueError(f"model choice {choice!r} is called {RENAMED_MODEL_CHOICES[choice]!r}")
    check_choice(choice, "model choice", MODEL_CHOICES)
    check_bool(download, "download")
    check_bool(fallback, "fallback")
    check_path(ckpt_dir, "ckpt_dir")
    if choice in ("official", "random-official"):
        check_official_depth(draft_depth, "draft_depth")
        check_official_depth(target_depth, "target_depth")
    device = pick_device(device)
    if choice == "random-official":
        check_official_pair_fits(draft_depth, target_depth, device)  # on a CPU: the cost logged, or a refusal up front
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)  # the same random weights in every process (the sampler's ranks)
            return build_official_pair(draft_depth, target_depth, device=device)
    if choice == "official":
        try:
            return load_official(draft_depth, target_depth, ckpt_dir=ckpt_dir, device=device, download=download)
        except FileNotFoundError as exc:
            if not fallback:
                raise
            reason = f"official d{draft_depth}/d{target_depth} checkpoints unavailable: {str(exc).splitlines()[0]}"
            log.warning("using the bundled tiny pair instead of the official models (%s)", reason)
            pair = load_bundled(device)
            pair.fallback_reason = reason
            pair.description += f" (FALLBACK: official d{draft_depth}/d{target_depth} checkpoints unavailable offline)"
            return pair
    if choice == "bundled":
        return load_bundled(device)
    vae, target = build_tiny(seed=0, device=device)
    _, draft = build_tiny(seed=1, depth=1, vae=vae, device=device)
    return ModelPair(vae=vae, draft=draft, target=target, description="tiny random pair (seeds 0/1)")
