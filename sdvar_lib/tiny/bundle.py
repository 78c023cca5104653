"""Writing a bundle: the four weight files, ``config.json``, ``metrics.json``, ``MODEL_CARD.md`` and sample PNGs.

A bundle is written as one set: into a temporary sibling folder first, which then replaces the output
folder (an interrupt leaves the old complete folder or the new complete one, never a mix).

The shipped models (:data:`BUNDLED_DIR`, inside the package's assets folder) are read-only by default:
:func:`check_bundle_out` refuses any folder inside the assets folder unless ``replace_bundled`` is given,
and then only the bundled folder itself. Replacing it keeps the files the training does not write
(``evaluation.json``, written by ``python -m sdvar_lib.evaluate``) and its permissions, and it gets no
:data:`~sdvar_lib.util.atomic.OUTPUT_MANIFEST`, so no command's output ever replaces it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from sdvar_lib.eval.evaluation import BUNDLED_REPORT_NAME
from sdvar_lib.models.checkpoints import BUNDLED_DIR
from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.models.var import VAR
from sdvar_lib.tiny.card import CARD_NAME, render_model_card
from sdvar_lib.tiny.config import TinyTrainConfig
from sdvar_lib.tiny.report import TrainedModels, TrainReport
from sdvar_lib.util.atomic import atomic_folder, check_output_folder, check_writable_dir

log = logging.getLogger(__name__)

__all__ = [
    "BUNDLED_DIR",
    "OWNER",
    "WEIGHT_FILES",
    "BUNDLE_FILES",
    "bundle_config",
    "check_shipped",
    "check_bundle_out",
    "save_sample_grid",
    "save_bundle",
]

OWNER = "python -m sdvar_lib.train_tiny"
WEIGHT_FILES = ("vae.pth", "draft.pth", "target.pth", "classifier.pth")
BUNDLE_FILES = ("config.json", *WEIGHT_FILES, "metrics.json", CARD_NAME, "samples_target.png", "samples_draft.png")
"""Every file a bundle written with a report holds (without a report: no ``metrics.json``, no card)."""
KEPT_FILES = (BUNDLED_REPORT_NAME,)
"""Files of the bundled folder that replacing it carries over unchanged (the training does not write them)."""


def bundle_config(config: TinyTrainConfig, description: str) -> dict:
    """The content of ``config.json``: constructor arguments of the shipped models (``test_mode=True``)."""
    return {
        "vae": config.vae.kwargs(test_mode=True),
        "draft": config.draft.kwargs(),
        "target": config.target.kwargs(),
        "classifier": asdict(config.classifier),
        "description": description,
    }


def check_shipped(path: str | os.PathLike, replace_bundled: bool, name: str = "folder",
                  flag: str = "replace_bundled") -> bool:
    """Whether ``path`` is the bundled folder, to be replaced; ``ValueError`` if it may not be written.

    A path inside the package's assets folder (or holding it) is refused unless ``replace_bundled``,
    and ``replace_bundled`` is refused for any path but :data:`BUNDLED_DIR`. ``name``/``flag`` are
    the argument names the messages use (the CLI passes ``--out``/``--replace-bundled``).
    """
    resolved, bundled = Path(path).resolve(), BUNDLED_DIR.resolve()
    assets = bundled.parent
    if replace_bundled:
        if resolved != bundled:
            raise ValueError(f"{flag} replaces only the bundled folder {str(bundled)!r}, but {name} is {str(path)!r}")
        return True
    if resolved.is_relative_to(assets) or assets.is_relative_to(resolved):
        raise ValueError(
            f"{name} {str(path)!r} is inside the package's assets folder {str(assets)!r}: the shipped models are "
            f"read-only; write elsewhere, or pass {flag} to replace the bundled set"
        )
    return False


def check_bundle_out(path: str | os.PathLike, replace_bundled: bool = False, name: str = "folder",
                     flag: str = "replace_bundled") -> Path:
    """``path`` if a bundle may be written there (nothing is created), else ``ValueError``.

    Besides :func:`check_shipped`: it must be writable and, unless it is the bundled folder being
    replaced, new, empty or an earlier output of this command holding nothing else
    (:func:`sdvar_lib.util.atomic.check_output_folder`).
    """
    if check_shipped(path, replace_bundled, name, flag):
        return check_writable_dir(path, name)
    return check_output_folder(path, name, owner=OWNER)


def _cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    raise TypeError(f"cannot serialise {type(obj).__name__}")


@torch.no_grad()
def save_sample_grid(var: VAR, path: str | Path, g_seed: int = 0, cfg: float = 1.5, per_class: int = 10) -> Path:
    """A PNG grid of generated digits: one row per class (``per_class`` samples each), ``g_seed`` fixed."""
    from torchvision.utils import save_image

    labels = torch.arange(var.num_classes).repeat_interleave(per_class)
    img = var.generate(int(labels.numel()), labels.to(var.device), g_seed, SamplingConfig(cfg=cfg)).images_B3HW.cpu()
    path = Path(path)
    save_image(img, path, nrow=per_class, padding=1)
    return path


def _write_files(folder: Path, models: TrainedModels, config: TinyTrainConfig, description: str,
                 report: TrainReport | None) -> None:
    meta = bundle_config(config, description)
    (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    for name in WEIGHT_FILES:
        torch.save(_cpu_state_dict(getattr(models, name.removesuffix(".pth"))), folder / name)
    if report is not None:
        (folder / "metrics.json").write_text(json.dumps(report.to_dict(), indent=2, default=_json_default) + "\n")
        (folder / CARD_NAME).write_text(render_model_card(report.to_dict(), meta, folder))
    for role in ("target", "draft"):
        save_sample_grid(getattr(models, role), folder / f"samples_{role}.png", g_seed=0, cfg=config.eval_cfg)


def save_bundle(
    folder: str | Path,
    models: TrainedModels,
    config: TinyTrainConfig,
    description: str,
    report: TrainReport | None = None,
    replace_bundled: bool = False,
) -> list[Path]:
    """Write a bundle into ``folder`` as one set; returns the paths of its files.

    ``config.json``, the weights-only state dicts, ``metrics.json`` and ``MODEL_CARD.md`` (when a
    report is given) and the sample grids (``g_seed=0``, ``config.eval_cfg``). ``folder`` must pass
    :func:`check_bundle_out`; replacing the bundled folder needs ``replace_bundled=True`` and a report
    (the bundled set always has its metrics and card).
    """
    folder = check_bundle_out(folder, replace_bundled)
    if replace_bundled and report is None:
        raise ValueError("replace_bundled needs a report: the bundled set includes metrics.json and MODEL_CARD.md")
    writing = (atomic_folder(folder, OWNER, marker=False, keep=KEPT_FILES, replace_unmarked=True) if replace_bundled
               else atomic_folder(folder, OWNER))
    with writing as tmp:
        _write_files(tmp, models, config, description, report)
        names = sorted(p.name for p in tmp.iterdir() if p.name in BUNDLE_FILES)
    written = [folder / name for name in names]
    log.info("wrote %s", ", ".join(str(p) for p in written))
    return written
