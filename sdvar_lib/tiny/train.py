"""Train the bundled tiny digits models: one multi-scale VQVAE, a draft and a target VAR, a classifier.

``python -m sdvar_lib.train_tiny --out sdvar_lib/assets/tiny_digits`` retrains everything from a
seed and rewrites the bundled folder (``config.json``, ``vae.pth``, ``draft.pth``, ``target.pth``,
``classifier.pth``, ``metrics.json``, ``MODEL_CARD.md``). Phases:

1. VQVAE (``ch_mult=(1, 1)``: 16x16 images, 8x8 latent, patch numbers ``(1, 2, 3, 4, 5, 6, 8)``):
   L1 + MSE reconstruction plus the quantizer's vq loss (straight-through); unused codebook entries
   are re-initialised from encoder residuals after every epoch of the first part of training.
2. Classifier (:class:`sdvar_lib.eval.metrics.DigitClassifier`) on the same train split, with ±1 pixel
   random shifts.
3. VAR teacher forcing for the target and the draft on the frozen VQVAE's tokens: cross-entropy over
   all ``L`` tokens, labels dropped with probability ``cond_drop_rate`` (CFG).
4. Evaluation (held-out NLL, class-consistency, Fréchet distance over seeds) and the model card.

Every phase is seeded (``torch.manual_seed(seed + phase offset)`` and its own shuffling generator)
so the data order is deterministic. Library functions log through :mod:`logging`; only
:func:`main` prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sdvar_lib.data.digits import DigitsSplit, iterate_minibatches, load_digits_split, to_unit_range
from sdvar_lib.eval.metrics import (
    ClassifierConfig,
    DigitClassifier,
    GenerationQuality,
    classifier_accuracy,
    compare_images,
    evaluate_generator,
    feature_frechet_distance,
)
from sdvar_lib.models.var import VAR
from sdvar_lib.models.vqvae import VQVAE

log = logging.getLogger(__name__)

__all__ = [
    "PATCH_NUMS",
    "VAEConfig",
    "VARConfig",
    "OptimConfig",
    "TinyTrainConfig",
    "default_config",
    "quick_config",
    "build_vae",
    "build_var",
    "init_var_weights_",
    "count_parameters",
    "lr_at",
    "VAETrainResult",
    "train_vqvae",
    "reinit_dead_codes_",
    "encode_tokens",
    "TokenData",
    "VARTrainResult",
    "train_var",
    "ClassifierTrainResult",
    "train_classifier",
    "save_bundle",
    "save_sample_grid",
    "render_model_card",
    "rerender_model_card",
    "TrainReport",
    "train_all",
    "main",
]

PATCH_NUMS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8)


# ---- configs ----------------------------------------------------------------------------------------
@dataclass
class VAEConfig:
    """VQVAE constructor arguments (``test_mode`` is set by the caller: False to train, True to ship)."""

    vocab_size: int = 256
    z_channels: int = 16
    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 1)
    num_res_blocks: int = 1
    v_patch_nums: tuple[int, ...] = PATCH_NUMS
    share_quant_resi: int = 4
    quant_resi: float = 0.5
    beta: float = 0.25
    using_znorm: bool = False

    def kwargs(self, test_mode: bool) -> dict:
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["v_patch_nums"] = list(self.v_patch_nums)
        d["test_mode"] = test_mode
        return d


@dataclass
class VARConfig:
    """VAR constructor arguments (the VQVAE is passed separately)."""

    depth: int
    embed_dim: int
    num_heads: int
    num_classes: int = 10
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6
    shared_aln: bool = False
    cond_drop_rate: float = 0.1
    attn_l2_norm: bool = True
    patch_nums: tuple[int, ...] = PATCH_NUMS

    def kwargs(self) -> dict:
        d = asdict(self)
        d["patch_nums"] = list(self.patch_nums)
        return d


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr`` (per optimizer step)."""

    epochs: int
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_frac: float = 0.05
    min_lr_ratio: float = 0.05
    grad_clip: float = 2.0
    max_steps: int | None = None
    """Stop after this many steps (the schedule still spans ``epochs``); for smoke runs."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy (VAR and classifier training)."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"epochs and batch_size must be >= 1 and lr > 0, got {self}")


@dataclass
class TinyTrainConfig:
    """Everything :func:`train_all` needs; :func:`default_config` is what the bundled files use."""

    seed: int = 0
    vae: VAEConfig = field(default_factory=VAEConfig)
    target: VARConfig = field(default_factory=lambda: VARConfig(depth=4, embed_dim=128, num_heads=4, drop_rate=0.1))
    draft: VARConfig = field(default_factory=lambda: VARConfig(depth=1, embed_dim=64, num_heads=2))
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    vae_optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=30, lr=2e-3, weight_decay=0.0))
    vae_dead_code_epochs: int = 18
    """Re-initialise unused codebook entries after each of the first this-many epochs."""
    classifier_optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=12, lr=2e-3, weight_decay=1e-4))
    target_optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=30, lr=1e-3, label_smoothing=0.1))
    draft_optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=30, lr=2e-3, label_smoothing=0.1))
    train_subset: int | None = None
    """Use only the first this-many training images (smoke runs and tests)."""
    eval_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    eval_num_samples: int = 300
    eval_cfg: float = 1.5
    extra_eval_settings: tuple[tuple[float, int, float], ...] = ((0.0, 0, 0.0), (1.0, 0, 0.0), (3.0, 0, 0.0), (1.5, 20, 0.9))
    """Further ``(cfg, top_k, top_p)`` settings reported in the model card."""

    def to_dict(self) -> dict:
        return asdict(self)


def default_config(seed: int = 0) -> TinyTrainConfig:
    return TinyTrainConfig(seed=seed)


def quick_config(seed: int = 0) -> TinyTrainConfig:
    """A smoke-test run (seconds): small subset, one epoch per phase, a handful of steps."""
    base = TinyTrainConfig(seed=seed)
    return replace(
        base,
        vae_optim=replace(base.vae_optim, epochs=2, max_steps=6),
        vae_dead_code_epochs=1,
        classifier_optim=replace(base.classifier_optim, epochs=1, max_steps=4),
        target_optim=replace(base.target_optim, epochs=2, max_steps=6),
        draft_optim=replace(base.draft_optim, epochs=2, max_steps=6),
        train_subset=256,
        eval_seeds=(0, 1),
        eval_num_samples=20,
        extra_eval_settings=((0.0, 0, 0.0),),
    )


# ---- model construction -------------------------------------------------------------------------------
def build_vae(config: VAEConfig, test_mode: bool = False) -> VQVAE:
    return VQVAE(**config.kwargs(test_mode))


def build_var(vae: VQVAE, config: VARConfig) -> VAR:
    var = VAR(vae, **config.kwargs())
    init_var_weights_(var)
    return var


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def init_var_weights_(
    var: VAR, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02
) -> None:
    """The reference VAR initialisation (``init_std = sqrt(1 / (3 C))``).

    Linear/embedding weights ~ truncated normal, biases 0; head weights x ``init_head``; attention and
    MLP output projections / ``sqrt(2 * depth)``; AdaLN scale/shift rows x ``init_adaln`` and gamma
    rows x ``init_adaln_gamma`` (blocks start close to the identity).
    """
    std = math.sqrt(1 / var.C / 3)
    for m in var.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=std)
    var.head.weight.mul_(init_head)
    var.head.bias.zero_()
    var.head_nm.ada_lin[-1].weight.mul_(init_adaln)
    var.head_nm.ada_lin[-1].bias.zero_()
    for block in var.blocks:
        block.attn.proj.weight.div_(math.sqrt(2 * var.depth))
        block.ffn.fc2.weight.div_(math.sqrt(2 * var.depth))
        if not block.shared_aln:
            lin = block.ada_lin[-1]
            lin.weight[2 * var.C :].mul_(init_adaln)
            lin.weight[: 2 * var.C].mul_(init_adaln_gamma)
            lin.bias.zero_()


# ---- optimisation helpers ---------------------------------------------------------------------------
def lr_at(step: int, total_steps: int, optim: OptimConfig) -> float:
    """Linear warmup over ``warmup_frac`` of the steps, then cosine to ``min_lr_ratio * lr``."""
    warmup = max(1, int(round(optim.warmup_frac * total_steps)))
    if step < warmup:
        return optim.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    ratio = optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return optim.lr * ratio


def _make_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms, embeddings, positional tables or 1-D parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "emb" in name or "pos_" in name or "scale_mul" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas)


def _total_steps(num_items: int, optim: OptimConfig) -> int:
    per_epoch = max(1, num_items // optim.batch_size) if num_items >= optim.batch_size else 1
    return per_epoch * optim.epochs


def _epoch_batches(num_items: int, optim: OptimConfig, gen: torch.Generator):
    return iterate_minibatches(num_items, optim.batch_size, gen, drop_last=num_items >= optim.batch_size)


def _step(model: nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float, grad_clip: float) -> float:
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    opt.step()
    return float(grad_norm)


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True, file=sys.stderr)


# ---- VQVAE --------------------------------------------------------------------------------------------
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


@torch.no_grad()
def _stage_residuals(vae: VQVAE, img_B3HW: torch.Tensor) -> torch.Tensor:
    """The residual vectors each stage quantizes, all stages concatenated: ``(N, Cvae)``."""
    q = vae.quantize
    f_BChw = vae.quant_conv(vae.encoder(img_B3HW))
    f_hats = q.f_to_idxBl_or_fhat(f_BChw, to_fhat=True)
    out = []
    for si, pn in enumerate(q.v_patch_nums):
        rest = f_BChw if si == 0 else f_BChw - f_hats[si - 1]
        if si != q.num_stages - 1:
            rest = F.interpolate(rest, size=(pn, pn), mode="area")
        out.append(rest.permute(0, 2, 3, 1).reshape(-1, q.Cvae))
    return torch.cat(out, dim=0)


@torch.no_grad()
def _code_hits(vae: VQVAE, img_B3HW: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Hits per stage and codebook entry ``(S, V)`` when encoding ``img_B3HW``."""
    hits = torch.zeros(vae.quantize.num_stages, vae.vocab_size, dtype=torch.long)
    for i in range(0, img_B3HW.shape[0], batch_size):
        for si, idx in enumerate(vae.img_to_idxBl(img_B3HW[i : i + batch_size])):
            hits[si] += idx.reshape(-1).bincount(minlength=vae.vocab_size).cpu()
    return hits


@torch.no_grad()
def reinit_dead_codes_(vae: VQVAE, img_B3HW: torch.Tensor, gen: torch.Generator) -> int:
    """Replace codebook entries no stage uses on ``img_B3HW`` by random residual vectors (+ small noise)."""
    was_training = vae.training
    vae.eval()
    try:
        dead = (_code_hits(vae, img_B3HW).sum(0) == 0).nonzero().reshape(-1)
        if dead.numel() == 0:
            return 0
        device = vae.quantize.embedding.weight.device
        residuals = torch.cat([_stage_residuals(vae, img_B3HW[i : i + 256]) for i in range(0, img_B3HW.shape[0], 256)])
        pick = torch.randint(0, residuals.shape[0], (dead.numel(),), generator=gen)
        noise = torch.randn(dead.numel(), vae.Cvae, generator=gen) * 0.01
        vae.quantize.embedding.weight[dead.to(device)] = residuals[pick.to(residuals.device)] + noise.to(device)
    finally:
        vae.train(was_training)
    return int(dead.numel())


def train_vqvae(
    vae: VQVAE,
    data: DigitsSplit,
    optim: OptimConfig,
    seed: int,
    dead_code_epochs: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> VAETrainResult:
    """Train ``vae`` (built with ``test_mode=False``) on ``data.train_img_B3HW``; returns it in eval mode."""
    if vae.test_mode:
        raise ValueError("train_vqvae needs a VQVAE built with test_mode=False (test_mode freezes the weights)")
    start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    vae.to(device).train()
    train_img = data.train_img_B3HW.to(device)
    opt = _make_optimizer(vae, optim)
    total = _total_steps(train_img.shape[0], optim)
    if optim.max_steps is not None:
        total_run = min(total, optim.max_steps)
    else:
        total_run = total
    history: list[float] = []
    step, dead_total = 0, 0
    bar = _progress(total_run, "VQVAE", progress)
    for epoch in range(optim.epochs):
        losses = []
        for batch in _epoch_batches(train_img.shape[0], optim, gen):
            if step >= total_run:
                break
            img = train_img[batch.to(device)]
            rec, _, vq_loss = vae(img)
            loss = F.l1_loss(rec, img) + F.mse_loss(rec, img) + vq_loss
            _step(vae, opt, loss, lr_at(step, total, optim), optim.grad_clip)
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if losses:
            history.append(sum(losses) / len(losses))
        if epoch < dead_code_epochs:
            n_dead = reinit_dead_codes_(vae, train_img, gen)
            dead_total += n_dead
            if n_dead:
                log.debug("epoch %d: re-initialised %d dead codes", epoch, n_dead)
        if history:
            log.info("VQVAE epoch %d: loss %.4f", epoch, history[-1])
        if step >= total_run:
            break
    bar.close()
    vae.eval()
    heldout = data.heldout_img_B3HW.to(device)
    with torch.no_grad():
        rec = vae.img_to_reconstructed_img(heldout, last_one=True)
    train_hits = _code_hits(vae, train_img)
    heldout_hits = _code_hits(vae, heldout)
    return VAETrainResult(
        loss_history=history,
        heldout_l1=float((rec - heldout).abs().mean()),
        heldout_mse=float((rec - heldout).square().mean()),
        heldout_usage_per_stage=[float((h > 0).float().mean() * 100) for h in heldout_hits],
        train_usage_per_stage=[float((h > 0).float().mean() * 100) for h in train_hits],
        total_usage=float((train_hits.sum(0) > 0).float().mean() * 100),
        dead_codes_reinitialised=dead_total,
        seconds=time.perf_counter() - start,
    )


# ---- tokens -----------------------------------------------------------------------------------------
@dataclass
class TokenData:
    """Teacher-forcing data from a frozen VQVAE."""

    idx_BL: torch.Tensor
    """All tokens of every stage, concatenated ``(B, L)``."""
    x_BLCv: torch.Tensor
    """VAR input without the first stage ``(B, L - first_l, Cvae)``."""
    label_B: torch.Tensor


@torch.no_grad()
def encode_tokens(vae: VQVAE, img_B3HW: torch.Tensor, label_B: torch.Tensor, batch_size: int = 256) -> TokenData:
    idx, xs = [], []
    for i in range(0, img_B3HW.shape[0], batch_size):
        idx_list = vae.img_to_idxBl(img_B3HW[i : i + batch_size])
        idx.append(torch.cat(idx_list, dim=1))
        xs.append(vae.quantize.idxBl_to_var_input(idx_list))
    return TokenData(idx_BL=torch.cat(idx), x_BLCv=torch.cat(xs), label_B=label_B.to(img_B3HW.device).long())


# ---- VAR ----------------------------------------------------------------------------------------------
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


@torch.no_grad()
def _tokens_nll(var: VAR, tokens: TokenData, batch_size: int = 256) -> float:
    var.eval()
    total = 0.0
    for i in range(0, tokens.idx_BL.shape[0], batch_size):
        logits = var(tokens.label_B[i : i + batch_size], tokens.x_BLCv[i : i + batch_size])
        total += float(F.cross_entropy(logits.reshape(-1, var.V), tokens.idx_BL[i : i + batch_size].reshape(-1), reduction="sum"))
    return total / tokens.idx_BL.numel()


def train_var(
    var: VAR,
    train_tokens: TokenData,
    optim: OptimConfig,
    seed: int,
    heldout_tokens: TokenData | None = None,
    eval_every: int = 5,
    name: str = "VAR",
    progress: bool = True,
    on_epoch: Callable[[int, VAR], None] | None = None,
    epoch_tokens: Callable[[int], TokenData] | None = None,
) -> VARTrainResult:
    """Teacher forcing over all ``L`` tokens (labels dropped with ``cond_drop_rate``); returns ``var`` in eval mode."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    device = var.device
    opt = _make_optimizer(var, optim)
    n = train_tokens.idx_BL.shape[0]
    total = _total_steps(n, optim)
    total_run = min(total, optim.max_steps) if optim.max_steps is not None else total
    history: list[float] = []
    nll_history: list[float] = []
    step = 0
    bar = _progress(total_run, name, progress)
    for epoch in range(optim.epochs):
        var.train()
        losses = []
        tokens = train_tokens if epoch_tokens is None else epoch_tokens(epoch)
        if tokens.idx_BL.shape[0] != n:
            raise ValueError(f"epoch_tokens({epoch}) gave {tokens.idx_BL.shape[0]} rows, expected {n}")
        for batch in _epoch_batches(n, optim, gen):
            if step >= total_run:
                break
            b = batch.to(device)
            logits_BLV = var(tokens.label_B[b], tokens.x_BLCv[b])
            loss = F.cross_entropy(
                logits_BLV.reshape(-1, var.V), tokens.idx_BL[b].reshape(-1), label_smoothing=optim.label_smoothing
            )
            _step(var, opt, loss, lr_at(step, total, optim), optim.grad_clip)
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if losses:
            history.append(sum(losses) / len(losses))
        last = step >= total_run or epoch == optim.epochs - 1
        if heldout_tokens is not None and ((epoch + 1) % eval_every == 0 or last):
            nll_history.append(_tokens_nll(var, heldout_tokens))
            train_loss = history[-1] if history else float("nan")
            log.info("%s epoch %d: train %.4f, held-out NLL %.4f", name, epoch, train_loss, nll_history[-1])
        elif history:
            log.info("%s epoch %d: train %.4f", name, epoch, history[-1])
        if on_epoch is not None:
            on_epoch(epoch, var)
            var.train()
        if step >= total_run:
            break
    bar.close()
    var.eval()
    final = nll_history[-1] if nll_history else float("nan")
    return VARTrainResult(
        loss_history=history, heldout_nll_history=nll_history, final_heldout_nll=final,
        num_parameters=count_parameters(var), steps=step, seconds=time.perf_counter() - start,
    )


# ---- classifier -----------------------------------------------------------------------------------------
@dataclass
class ClassifierTrainResult:
    loss_history: list[float]
    heldout_accuracy: float
    num_parameters: int
    seconds: float


def random_shift(img_B3HW: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift every image by a random integer offset in ``[-max_shift, max_shift]`` (zero-filled, i.e. value 0)."""
    if max_shift == 0:
        return img_B3HW
    B, _, H, W = img_B3HW.shape
    padded = F.pad(img_B3HW, (max_shift,) * 4, value=0.0)
    dy = torch.randint(0, 2 * max_shift + 1, (B,), generator=gen).tolist()
    dx = torch.randint(0, 2 * max_shift + 1, (B,), generator=gen).tolist()
    return torch.stack([padded[i, :, y : y + H, x : x + W] for i, (y, x) in enumerate(zip(dy, dx))])


def train_classifier(
    classifier: DigitClassifier,
    data: DigitsSplit,
    optim: OptimConfig,
    seed: int,
    device: torch.device | str = "cpu",
    max_shift: int = 1,
    progress: bool = True,
) -> ClassifierTrainResult:
    """Cross-entropy on the train split (images mapped to ``[0, 1]``, random ±``max_shift`` px shifts)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    classifier.to(device).train()
    train_img = to_unit_range(data.train_img_B3HW)
    train_lab = data.train_label_B
    opt = _make_optimizer(classifier, optim)
    total = _total_steps(train_img.shape[0], optim)
    total_run = min(total, optim.max_steps) if optim.max_steps is not None else total
    history: list[float] = []
    step = 0
    bar = _progress(total_run, "classifier", progress)
    for _ in range(optim.epochs):
        losses = []
        for batch in _epoch_batches(train_img.shape[0], optim, gen):
            if step >= total_run:
                break
            img = random_shift(train_img[batch], max_shift, gen).to(device)
            loss = F.cross_entropy(classifier(img), train_lab[batch].to(device))
            _step(classifier, opt, loss, lr_at(step, total, optim), optim.grad_clip)
            losses.append(loss.item())
            step += 1
            bar.update(1)
        if losses:
            history.append(sum(losses) / len(losses))
        if step >= total_run:
            break
    bar.close()
    classifier.eval()
    acc = classifier_accuracy(classifier, to_unit_range(data.heldout_img_B3HW), data.heldout_label_B)
    log.info("classifier held-out accuracy %.4f", acc)
    return ClassifierTrainResult(
        loss_history=history, heldout_accuracy=acc, num_parameters=count_parameters(classifier),
        seconds=time.perf_counter() - start,
    )


# ---- whole pipeline -------------------------------------------------------------------------------------
@dataclass
class TrainReport:
    """Everything :func:`train_all` measured (also written to ``metrics.json``)."""

    config: dict
    device: str
    torch_version: str
    num_threads: int
    platform: str
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


@dataclass
class TrainedModels:
    vae: VQVAE
    draft: VAR
    target: VAR
    classifier: DigitClassifier


def _subset(data: DigitsSplit, n: int | None) -> DigitsSplit:
    if n is None or n >= data.train_img_B3HW.shape[0]:
        return data
    if n < 1:
        raise ValueError(f"train_subset must be >= 1, got {n}")
    return replace(data, train_img_B3HW=data.train_img_B3HW[:n], train_label_B=data.train_label_B[:n],
                   train_index=data.train_index[:n])


def train_all(
    config: TinyTrainConfig,
    device: torch.device | str = "cpu",
    progress: bool = True,
    evaluate: bool = True,
    on_phase: Callable[[str], None] | None = None,
) -> tuple[TrainedModels, TrainReport]:
    """Train VQVAE, classifier, target and draft from ``config.seed``; optionally evaluate them."""
    device = torch.device(device)
    data = _subset(load_digits_split(), config.train_subset)
    seed = config.seed
    t0 = time.perf_counter()

    def phase(name: str) -> None:
        log.info("phase: %s", name)
        if on_phase is not None:
            on_phase(name)

    phase("vqvae")
    torch.manual_seed(seed)
    vae = build_vae(config.vae, test_mode=False)
    vae_result = train_vqvae(vae, data, config.vae_optim, seed, config.vae_dead_code_epochs, device, progress)
    for p in vae.parameters():
        p.requires_grad_(False)

    phase("classifier")
    torch.manual_seed(seed + 1)
    classifier = DigitClassifier(config.classifier)
    clf_result = train_classifier(classifier, data, config.classifier_optim, seed + 1, device, progress=progress)

    train_tokens = encode_tokens(vae, data.train_img_B3HW.to(device), data.train_label_B)
    heldout_tokens = encode_tokens(vae, data.heldout_img_B3HW.to(device), data.heldout_label_B)
    models: dict[str, VAR] = {}
    results: dict[str, VARTrainResult] = {}
    for offset, role in ((2, "target"), (3, "draft")):
        phase(role)
        torch.manual_seed(seed + offset)
        var = build_var(vae, getattr(config, role)).to(device)
        results[role] = train_var(
            var, train_tokens, getattr(config, f"{role}_optim"), seed + offset, heldout_tokens, name=role, progress=progress,
        )
        models[role] = var
    train_seconds = time.perf_counter() - t0

    with torch.no_grad():
        heldout = data.heldout_img_B3HW.to(device)
        rec = vae.img_to_reconstructed_img(heldout, last_one=True)
    recon_cc = classifier_accuracy(classifier, to_unit_range(rec), data.heldout_label_B)
    report = TrainReport(
        config=config.to_dict(), device=str(device), torch_version=torch.__version__, num_threads=torch.get_num_threads(),
        platform=platform.platform(), num_train=int(data.train_img_B3HW.shape[0]), num_heldout=int(heldout.shape[0]),
        vae=vae_result, classifier=clf_result, target=results["target"], draft=results["draft"],
        vae_num_parameters=count_parameters(vae), heldout_recon_class_consistency=recon_cc,
        heldout_recon_pearson=compare_images(rec.cpu(), data.heldout_img_B3HW).pearson, train_seconds=train_seconds,
    )
    trained = TrainedModels(vae=vae, draft=models["draft"], target=models["target"], classifier=classifier)
    if evaluate:
        phase("evaluate")
        evaluate_report_(report, trained, data, config)
    return trained, report


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


# ---- saving --------------------------------------------------------------------------------------------
def _cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def save_bundle(
    folder: str | Path, models: TrainedModels, config: TinyTrainConfig, description: str, report: TrainReport | None = None,
) -> list[Path]:
    """Write ``config.json`` and the weights-only state dicts (plus ``metrics.json``/``MODEL_CARD.md``
    when a report is given) into ``folder``; returns the written paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bundle_config = {
        "vae": config.vae.kwargs(test_mode=True),
        "draft": config.draft.kwargs(),
        "target": config.target.kwargs(),
        "classifier": asdict(config.classifier),
        "description": description,
    }
    written = []
    path = folder / "config.json"
    path.write_text(json.dumps(bundle_config, indent=2) + "\n")
    written.append(path)
    named = (("vae", models.vae), ("draft", models.draft), ("target", models.target), ("classifier", models.classifier))
    for name, model in named:
        path = folder / f"{name}.pth"
        torch.save(_cpu_state_dict(model), path)
        written.append(path)
    if report is not None:
        path = folder / "metrics.json"
        path.write_text(json.dumps(report.to_dict(), indent=2, default=_json_default) + "\n")
        written.append(path)
        path = folder / "MODEL_CARD.md"
        path.write_text(render_model_card(report.to_dict(), bundle_config, folder))
        written.append(path)
    log.info("wrote %s", ", ".join(str(p) for p in written))
    return written


def _fmt_usage(usage: Sequence[float]) -> str:
    return ", ".join(f"{u:.0f}%" for u in usage)


def _mean_pm(summary: dict, digits: int) -> str:
    half = (summary["ci_high"] - summary["ci_low"]) / 2
    return f"{summary['mean']:.{digits}f} ± {half:.{digits}f}"


def _quality_rows(r: dict) -> list[str]:
    rows = []
    for role in ("target", "draft"):
        for q in [r.get(f"{role}_quality")] + [x for who, x in r.get("extra_quality", []) if who == role]:
            if q is None:
                continue
            cc, fd = q["class_consistency"], q["frechet_distance"]
            rows.append(
                f"| {role} | {q['cfg']:g} | {q['top_k']} | {q['top_p']:g} | {q['num_samples']} | "
                f"{_mean_pm(cc, 3)} | {_mean_pm(fd, 1)} | {cc['num_seeds']} |"
            )
    return rows


def _other_device_lines(runs: list[dict]) -> list[str]:
    """Model-card lines for retraining runs timed on other devices (recorded in metrics.json)."""
    lines: list[str] = []
    for run in runs:
        phases = ", ".join(f"{name} {sec:.0f} s" for name, sec in run["phase_seconds"].items())
        lines += [
            "",
            f"On {run['device']} (torch {run['torch_version']}), `{run['command']}` trained everything in "
            f"**{run['train_seconds']:.0f} s** ({phases}); held-out NLL target {run['heldout_nll_target']:.4f}, "
            f"draft {run['heldout_nll_draft']:.4f}. GPU kernels are not bit-identical to the CPU's, so those "
            "weights differ slightly from the bundled (CPU-trained) ones.",
        ]
    return lines


def render_model_card(r: dict, bundle_config: dict, folder: Path) -> str:
    """``MODEL_CARD.md`` text from a report dict (the content of ``metrics.json``, :meth:`TrainReport.to_dict`)."""
    cfg = r['config']
    vae_cfg, tgt, dft = bundle_config["vae"], bundle_config["target"], bundle_config["draft"]
    sizes = {p.name: p.stat().st_size for p in sorted(folder.glob("*.pth"))}
    phase_rows = [
        f"| VQVAE | {cfg['vae_optim']['epochs']} | {r['vae']['seconds']:.0f} |",
        f"| classifier | {cfg['classifier_optim']['epochs']} | {r['classifier']['seconds']:.0f} |",
        f"| target VAR | {cfg['target_optim']['epochs']} ({r['target']['steps']} steps) | {r['target']['seconds']:.0f} |",
        f"| draft VAR | {cfg['draft_optim']['epochs']} ({r['draft']['steps']} steps) | {r['draft']['seconds']:.0f} |",
    ]
    quality = _quality_rows(r)
    lines = [
        "# Tiny digits draft/target pair (bundled default models)",
        "",
        bundle_config["description"],
        "",
        "Trained by the project on CPU, without network access, so that the workbench has a small, real,",
        "trained speculative-decoding pair: a draft VAR worse than the target VAR, both on one shared",
        "multi-scale VQVAE. Load with `sdvar_lib.models.checkpoints.load_bundled()` and the metric classifier",
        "with `sdvar_lib.eval.metrics.load_bundled_classifier()`.",
        "",
        "## Data",
        "",
        "- `sklearn.datasets.load_digits` (1,797 greyscale 8x8 digits, 10 classes, shipped with scikit-learn).",
        "- Upsampled to 16x16 with **bilinear** interpolation (`align_corners=False`), grey replicated to 3",
        "  channels, values mapped to `[-1, 1]` (`sdvar_lib.data.digits.load_digits_split`).",
        f"- Stratified split, seed 0: {r['num_train']} train / {r['num_heldout']} held-out images (85 / 15 per class).",
        "  Every model and metric uses this split; only the train part is used for training.",
        "",
        "## Models",
        "",
        "| model | architecture | parameters | file size |",
        "|---|---|---:|---:|",
        f"| VQVAE | vocab {vae_cfg['vocab_size']}, Cvae {vae_cfg['z_channels']}, ch {vae_cfg['ch']}, ch_mult "
        f"{tuple(vae_cfg['ch_mult'])}, {vae_cfg['num_res_blocks']} res block(s)/level, patch nums "
        f"{tuple(vae_cfg['v_patch_nums'])} (16x16 image, 8x8 latent, 7 stages, 155 tokens) | "
        f"{r['vae_num_parameters']:,} | {sizes.get('vae.pth', 0) / 1e6:.2f} MB |",
        f"| target VAR | depth {tgt['depth']}, width {tgt['embed_dim']}, {tgt['num_heads']} heads, dropout "
        f"{tgt['drop_rate']} | {r['target']['num_parameters']:,} | {sizes.get('target.pth', 0) / 1e6:.2f} MB |",
        f"| draft VAR | depth {dft['depth']}, width {dft['embed_dim']}, {dft['num_heads']} heads, dropout "
        f"{dft['drop_rate']} | {r['draft']['num_parameters']:,} | {sizes.get('draft.pth', 0) / 1e6:.2f} MB |",
        f"| classifier | `DigitClassifier` CNN, width {cfg['classifier']['width']}, {cfg['classifier']['feature_dim']}-d "
        f"features, input in [0, 1] | {r['classifier']['num_parameters']:,} | {sizes.get('classifier.pth', 0) / 1e6:.2f} MB |",
        "",
        f"Weight files together: {sum(sizes.values()) / 1e6:.2f} MB. "
        f"Target / draft parameter ratio: {r['target']['num_parameters'] / r['draft']['num_parameters']:.1f}x. "
        "Both VARs: 10 classes, `attn_l2_norm=True`, `cond_drop_rate=0.1` (CFG), `shared_aln=False`.",
        "",
        "## Training",
        "",
        "```",
        r.get("command") or "python -m sdvar_lib.train_tiny --out sdvar_lib/assets/tiny_digits",
        "```",
        "",
        f"Seed {cfg['seed']}; device `{r['device']}`, torch threads: {r['num_threads']}, torch {r['torch_version']}, "
        f"{r['platform']}.",
        "",
        "- VQVAE: L1 + MSE reconstruction + vq loss (commitment beta 0.25 + codebook), straight-through; unused",
        f"  codebook entries re-initialised from encoder residuals after each of the first {cfg['vae_dead_code_epochs']} epochs.",
        "- Classifier: cross-entropy with random ±1 px shifts.",
        "- VARs: teacher forcing on the frozen VQVAE's tokens, cross-entropy over all 155 tokens with label",
        f"  smoothing {cfg['target_optim']['label_smoothing']} (target) / {cfg['draft_optim']['label_smoothing']} (draft), "
        "labels dropped with probability 0.1 (CFG), AdamW (betas 0.9/0.95, wd 0.05), linear warmup + cosine,",
        f"  batch {cfg['target_optim']['batch_size']}, peak lr {cfg['target_optim']['lr']:g} (target) / "
        f"{cfg['draft_optim']['lr']:g} (draft), reference VAR initialisation.",
        "  Label smoothing keeps the target from becoming over-confident: without it the default CFG ramp",
        "  (t up to 1.5 at the last stage) collapsed the target's samples onto a few prototypes per class",
        "  (in development runs: class-consistency 0.99 but Fréchet distance about 60 instead of about 30 at cfg 1.5).",
        "  The draft follows the same recipe (same epochs, no dropout, a higher peak lr) with one narrow block;",
        "  in development runs a depth-2 width-64 draft came within the noise of the target's Fréchet distance",
        "  at cfg 1.5 (its digits are messier, but the metric saturates near the finite-sample floor).",
        "",
        "| phase | epochs | seconds |",
        "|---|---|---:|",
        *phase_rows,
        f"| **total training** | | **{r['train_seconds']:.0f}** ({r['train_seconds'] / 60:.1f} min) |",
        f"| evaluation (not training) | | {r['eval_seconds']:.0f} |",
        "",
        "The CPU is shared with other work, so wall times vary between runs.",
        *_other_device_lines(r.get("other_device_runs", [])),
        "",
        "## Metrics (held-out split)",
        "",
        f"- VQVAE reconstruction: mean |error| {r['vae']['heldout_l1']:.4f}, MSE {r['vae']['heldout_mse']:.5f} (pixel range",
        f"  [-1, 1]); Pearson correlation {r['heldout_recon_pearson']:.4f}; classifier accuracy on reconstructions "
        f"{r['heldout_recon_class_consistency']:.4f}.",
        f"- Codebook usage per stage (held-out): {_fmt_usage(r['vae']['heldout_usage_per_stage'])}; per stage (train):",
        f"  {_fmt_usage(r['vae']['train_usage_per_stage'])}; any stage (train): {r['vae']['total_usage']:.0f}%.",
        "  (Stage s has only pn_s^2 tokens per image, so the early stages cannot use many entries.)",
        f"- Classifier accuracy: {r['classifier']['heldout_accuracy']:.4f} on held-out real digits.",
        f"- Teacher-forced NLL (nats/token over all 155 tokens): target **{r['target']['final_heldout_nll']:.4f}**, "
        f"draft **{r['draft']['final_heldout_nll']:.4f}**.",
        "",
        "Generation quality: balanced labels, `sdvar_lib.eval.metrics.evaluate_generator` (seed s uses `g_seed = 1000 s`",
        "+ batch index); class-consistency = classifier prediction equals the requested label; Fréchet distance",
        f"between the classifier's 64-d penultimate features of the generated digits and the {r['num_heldout']}",
        "held-out real digits (lower is better). Mean ± half-width of the 95% Student-t CI over seeds.",
        "",
        "| model | cfg | top_k | top_p | samples/seed | class-consistency | Fréchet distance | seeds |",
        "|---|---:|---:|---:|---:|---|---|---:|",
        *quality,
        "",
        f"For scale: the Fréchet distance of {r['fd_reference'].get('num_samples', 0)} real *train* digits to the "
        "held-out set is "
        f"{r['fd_reference'].get('real_train', float('nan')):.1f}, and of their VQVAE reconstructions "
        f"{r['fd_reference'].get('reconstructed_train', float('nan')):.1f} (the finite-sample floor).",
        "",
        "Samples (`g_seed=0`, cfg 1.5, one row per class): `samples_target.png`, `samples_draft.png`.",
        "",
        "Every decoder on this pair (SDVAR policies and gamma rules, hand-offs): `evaluation.json`, written by",
        "`python -m sdvar_lib.evaluate` (table and command in `BENCHMARKS.md`). Retraining does not rewrite it:",
        "run that command again after retraining.",
        "",
        "## Limitations",
        "",
        "- 16x16 digits only; these models demonstrate the workbench's mechanics, not image quality at scale.",
        "- The held-out set is small (about 270 images), so Fréchet distances carry a finite-sample bias;",
        "  compare models only at the same number of samples.",
        "",
    ]
    return "\n".join(lines)


def rerender_model_card(folder: str | Path) -> Path:
    """Rewrite ``MODEL_CARD.md`` from the ``metrics.json`` and ``config.json`` already in ``folder``."""
    folder = Path(folder)
    for name in ("metrics.json", "config.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing; run the training first")
    report = json.loads((folder / "metrics.json").read_text())
    bundle_config = json.loads((folder / "config.json").read_text())
    path = folder / "MODEL_CARD.md"
    path.write_text(render_model_card(report, bundle_config, folder))
    return path


@torch.no_grad()
def save_sample_grid(var: VAR, path: str | Path, g_seed: int = 0, cfg: float = 1.5, per_class: int = 10) -> Path:
    """A PNG grid of generated digits: one row per class (``per_class`` samples each), ``g_seed`` fixed."""
    from torchvision.utils import save_image

    labels = torch.arange(var.num_classes).repeat_interleave(per_class)
    img = var.generate(int(labels.numel()), labels.to(var.device), g_seed=g_seed, cfg=cfg).images_B3HW.cpu()
    path = Path(path)
    save_image(img, path, nrow=per_class, padding=1)
    return path


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    raise TypeError(f"cannot serialise {type(obj).__name__}")


# ---- CLI --------------------------------------------------------------------------------------------------
def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sdvar_lib.train_tiny", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="sdvar_lib/assets/tiny_digits", help="output folder (the bundled folder by default)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: a few steps per phase on a subset")
    p.add_argument("--vae-epochs", type=int, default=None)
    p.add_argument("--target-epochs", type=int, default=None)
    p.add_argument("--draft-epochs", type=int, default=None)
    p.add_argument("--classifier-epochs", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="cap the steps of every phase")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--no-eval", action="store_true", help="skip the generation metrics (no metrics.json/MODEL_CARD.md)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--render-card", action="store_true",
                   help="only re-render MODEL_CARD.md in --out from its metrics.json and config.json (no training)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TinyTrainConfig:
    cfg = quick_config(args.seed) if args.quick else default_config(args.seed)
    for attr, value in (
        ("vae_optim", args.vae_epochs), ("target_optim", args.target_epochs), ("draft_optim", args.draft_epochs),
        ("classifier_optim", args.classifier_epochs),
    ):
        if value is not None:
            setattr(cfg, attr, replace(getattr(cfg, attr), epochs=value))
    if args.max_steps is not None:
        for attr in ("vae_optim", "target_optim", "draft_optim", "classifier_optim"):
            setattr(cfg, attr, replace(getattr(cfg, attr), max_steps=args.max_steps))
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    if args.render_card:
        rerender_model_card(args.out)
        print(f"[train_tiny] re-rendered {Path(args.out) / 'MODEL_CARD.md'}")
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = config_from_args(args)
    command = "python -m sdvar_lib.train_tiny " + " ".join(sys.argv[1:] if argv is None else list(argv))

    def announce(name: str) -> None:
        print(f"[train_tiny] {name} ...", flush=True)

    models, report = train_all(config, args.device, progress=not args.no_progress, evaluate=not args.no_eval, on_phase=announce)
    description = (
        f"tiny digits pair (seed {config.seed}): target d{config.target.depth} w{config.target.embed_dim} "
        f"({report.target.num_parameters:,} params), draft d{config.draft.depth} w{config.draft.embed_dim} "
        f"({report.draft.num_parameters:,} params), shared VQVAE vocab {config.vae.vocab_size} Cvae {config.vae.z_channels}, "
        "16x16 sklearn digits"
    )
    if args.quick:
        description += " [--quick smoke run, not for use]"
    report.command = command
    save_bundle(args.out, models, config, description, None if args.no_eval else report)
    for role in ("target", "draft"):
        save_sample_grid(getattr(models, role), Path(args.out) / f"samples_{role}.png", g_seed=0, cfg=config.eval_cfg)
    print(f"[train_tiny] training took {report.train_seconds:.0f} s on {report.device} ({report.num_threads} threads)")
    usage = [round(u) for u in report.vae.heldout_usage_per_stage]
    print(f"[train_tiny] VQVAE held-out L1 {report.vae.heldout_l1:.4f}, codebook usage per stage (%) {usage}")
    print(f"[train_tiny] classifier held-out accuracy {report.classifier.heldout_accuracy:.4f}")
    print(f"[train_tiny] held-out NLL: target {report.target.final_heldout_nll:.4f}, draft {report.draft.final_heldout_nll:.4f}")
    for role in ("target", "draft"):
        q = getattr(report, f"{role}_quality")
        if q is not None:
            print(f"[train_tiny] {role} cfg={q.cfg}: class-consistency {q.class_consistency.format()}, "
                  f"Fréchet {q.frechet_distance.format()}")
    print(f"[train_tiny] wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
