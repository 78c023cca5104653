"""What a training run produced and measured: per-phase results, the trained models, :class:`TrainReport`.

:func:`build_report` measures the trained VQVAE and classifier on the held-out split;
:func:`evaluate_report_` adds the generation quality of both VARs (class-consistency and Fréchet
distance over seeds). ``TrainReport.to_dict()`` is the content of ``metrics.json``; :func:`machine_of`
reads the machine from such a dict, also from the older files that stored it as loose fields.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from sdvar_lib.data.digits import DigitsSplit, to_unit_range
from sdvar_lib.eval.metrics import (
    DigitClassifier,
    GenerationQuality,
    classifier_accuracy,
    compare_images,
    evaluate_generator,
    feature_frechet_distance,
)
from sdvar_lib.models.var import VAR
from sdvar_lib.models.vqvae import VQVAE
from sdvar_lib.tiny.config import TinyTrainConfig
from sdvar_lib.util.machine import MachineInfo

__all__ = [
    "count_parameters",
    "VAETrainResult",
    "VARTrainResult",
    "ClassifierTrainResult",
    "TrainedModels",
    "TrainReport",
    "build_report",
    "evaluate_report_",
    "machine_of",
]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class VAETrainResult:
    loss_history: list[float]
    """Mean training loss per epoch."""
    heldout_l1: float
    """Mean absolute reconstruction error on held-out images (in ``[-1, 1]`` units)."""
    heldout_mse: float
    heldout_usage_per_stage: list[float]
    """Percentage of codebook entries used per stage when encoding the held-out set."""
    train_usage_per_stage: list[float]
    total_usage: float
    """Percentage of codebook entries used by any stage on the train set."""
    dead_codes_reinitialised: int
    seconds: float


@dataclass
class VARTrainResult:
    loss_history: list[float]
    """Mean training cross-entropy (with label dropping) per epoch."""
    heldout_nll_history: list[float]
    """Held-out NLL (nats/token) after each evaluated epoch."""
    final_heldout_nll: float
    num_parameters: int
    steps: int
    seconds: float


@dataclass
class ClassifierTrainResult:
    loss_history: list[float]
    heldout_accuracy: float
    num_parameters: int
    seconds: float


@dataclass
class TrainedModels:
    """The four models of a bundle, in eval mode."""

    vae: VQVAE
    draft: VAR
    target: VAR
    classifier: DigitClassifier


@dataclass
class TrainReport:
    """Everything :func:`sdvar_lib.tiny.train.train_all` measured (also written to ``metrics.json``)."""

    config: dict
    machine: MachineInfo
    """Where the models were trained (device, CPU or GPU name, torch threads and version, platform)."""
    num_train: int
    num_heldout: int
    vae: VAETrainResult
    classifier: ClassifierTrainResult
    target: VARTrainResult
    draft: VARTrainResult
    vae_num_parameters: int
    heldout_recon_class_consistency: float
    """Classifier accuracy on VQVAE reconstructions of the held-out images (upper bound for generation)."""
    heldout_recon_pearson: float
    train_seconds: float
    """Wall time of the four training phases (no evaluation)."""
    eval_seconds: float = 0.0
    target_quality: GenerationQuality | None = None
    draft_quality: GenerationQuality | None = None
    real_heldout_class_consistency: float = float("nan")
    extra_quality: list[tuple[str, GenerationQuality]] = field(default_factory=list)
    """``(role, quality)`` at the extra sampling settings of the config."""
    fd_reference: dict = field(default_factory=dict)
    """Fréchet distances of real train digits (and their reconstructions) to the held-out set, for scale."""
    command: str = ""
    """The command line that produced the report."""

    def to_dict(self) -> dict:
        return asdict(self)


def machine_of(report: dict) -> MachineInfo:
    """The machine of a ``metrics.json`` dict; files written before :class:`MachineInfo` stored loose
    ``device``/``num_threads``/``torch_version``/``platform`` fields (no CPU name, no Python version)."""
    if "machine" in report:
        return MachineInfo(**report["machine"])
    return MachineInfo(device=report["device"], cpu="", torch_threads=report["num_threads"],
                       torch_version=report["torch_version"], python_version="", platform=report["platform"])


def build_report(
    config: TinyTrainConfig,
    data: DigitsSplit,
    models: TrainedModels,
    vae: VAETrainResult,
    classifier: ClassifierTrainResult,
    target: VARTrainResult,
    draft: VARTrainResult,
    train_seconds: float,
    device: torch.device,
) -> TrainReport:
    """The report of the training phases, with the VQVAE's reconstructions of the held-out images measured."""
    with torch.no_grad():
        heldout = data.heldout_img_B3HW.to(device)
        rec = models.vae.img_to_reconstructed_img(heldout, last_one=True)
    recon_cc = classifier_accuracy(models.classifier, to_unit_range(rec), data.heldout_label_B)
    return TrainReport(
        config=config.to_dict(), machine=MachineInfo.current(device), num_train=int(data.train_img_B3HW.shape[0]),
        num_heldout=int(heldout.shape[0]), vae=vae, classifier=classifier, target=target, draft=draft,
        vae_num_parameters=count_parameters(models.vae), heldout_recon_class_consistency=recon_cc,
        heldout_recon_pearson=compare_images(rec.cpu(), data.heldout_img_B3HW).pearson, train_seconds=train_seconds,
    )


def evaluate_report_(report: TrainReport, models: TrainedModels, data: DigitsSplit, config: TinyTrainConfig) -> None:
    """Fill the generation-quality fields of ``report`` (class-consistency and Fréchet distance over seeds)."""
    t0 = time.perf_counter()
    real = to_unit_range(data.heldout_img_B3HW)
    clf = models.classifier
    report.real_heldout_class_consistency = classifier_accuracy(clf, real, data.heldout_label_B)
    n_ref = min(config.eval_num_samples, data.train_img_B3HW.shape[0])
    ref_idx = torch.randperm(data.train_img_B3HW.shape[0], generator=torch.Generator().manual_seed(config.seed))[:n_ref]
    ref_img = data.train_img_B3HW[ref_idx]
    with torch.no_grad():
        ref_rec = models.vae.img_to_reconstructed_img(ref_img.to(models.vae.quant_conv.weight.device), last_one=True).cpu()
    report.fd_reference = {
        "num_samples": n_ref,
        "real_train": feature_frechet_distance(clf, to_unit_range(ref_img), real),
        "reconstructed_train": feature_frechet_distance(clf, to_unit_range(ref_rec), real),
    }
    for role in ("target", "draft"):
        var = getattr(models, role)
        quality = evaluate_generator(
            var, clf, real, seeds=config.eval_seeds, num_samples=config.eval_num_samples, cfg=config.eval_cfg,
        )
        setattr(report, f"{role}_quality", quality)
        for cfg, top_k, top_p in config.extra_eval_settings:
            report.extra_quality.append((role, evaluate_generator(
                var, clf, real, seeds=config.eval_seeds, num_samples=config.eval_num_samples, cfg=cfg, top_k=top_k,
                top_p=top_p,
            )))
    report.eval_seconds = time.perf_counter() - t0
