"""tiny: the bundled digits pair — training configs, trainers, the model card and the retraining CLI.

May import: ``sdvar_lib.viz`` and everything below it (not ``sdvar_lib.bench`` or ``sdvar_lib.demo``).

Modules, lowest first: :mod:`~sdvar_lib.tiny.config` (what a run trains), :mod:`~sdvar_lib.tiny.report`
(per-phase results, :class:`TrainReport`, evaluation of the trained models), :mod:`~sdvar_lib.tiny.train`
(the trainers and :func:`train_all`), :mod:`~sdvar_lib.tiny.card` (``MODEL_CARD.md``),
:mod:`~sdvar_lib.tiny.bundle` (writing a bundle as one set; the shipped one is read-only by default),
:mod:`~sdvar_lib.tiny.cli` (``python -m sdvar_lib.train_tiny``).
"""

from sdvar_lib.tiny.bundle import BUNDLE_FILES, bundle_config, check_bundle_out, save_bundle, save_sample_grid
from sdvar_lib.tiny.card import render_model_card, rerender_model_card
from sdvar_lib.tiny.cli import main
from sdvar_lib.tiny.config import (
    PATCH_NUMS,
    OptimConfig,
    TinyTrainConfig,
    VAEConfig,
    VARConfig,
    default_config,
    quick_config,
)
from sdvar_lib.tiny.report import (
    ClassifierTrainResult,
    TrainedModels,
    TrainReport,
    VAETrainResult,
    VARTrainResult,
    count_parameters,
    evaluate_report_,
)
from sdvar_lib.tiny.train import (
    StepLoop,
    TokenData,
    encode_tokens,
    lr_at,
    random_shift,
    reinit_dead_codes_,
    train_all,
    train_classifier,
    train_var,
    train_vqvae,
)

__all__ = [
    "PATCH_NUMS", "VAEConfig", "VARConfig", "OptimConfig", "TinyTrainConfig", "default_config", "quick_config",
    "count_parameters", "VAETrainResult", "VARTrainResult", "ClassifierTrainResult", "TrainedModels", "TrainReport",
    "evaluate_report_",
    "lr_at", "StepLoop", "train_vqvae", "reinit_dead_codes_", "TokenData", "encode_tokens", "train_var",
    "random_shift", "train_classifier", "train_all",
    "render_model_card", "rerender_model_card",
    "BUNDLE_FILES", "bundle_config", "check_bundle_out", "save_bundle", "save_sample_grid",
    "main",
]
