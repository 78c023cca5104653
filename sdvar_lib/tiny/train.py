"""The trainers of the tiny digits models and :func:`train_all`, which runs them in order.

Phases (each seeded: ``torch.manual_seed(seed + phase offset)`` and its own shuffling generator, so
the data order and every random draw are deterministic):

1. VQVAE (``ch_mult=(1, 1)``: 16x16 images, 8x8 latent, patch numbers ``(1, 2, 3, 4, 5, 6, 8)``):
   L1 + MSE reconstruction plus the quantizer's vq loss (straight-through); unused codebook entries
   are re-initialised from encoder residuals after every epoch of the first part of training.
2. Classifier (:class:`sdvar_lib.eval.metrics.DigitClassifier`) on the same train split, with ±1 pixel
   random shifts.
3. VAR teacher forcing for the target and the draft on the frozen VQVAE's tokens: cross-entropy over
   all ``L`` tokens, labels dropped with probability ``cond_drop_rate`` (CFG).
4. Evaluation (held-out NLL, class-consistency, Fréchet distance over seeds): :mod:`sdvar_lib.tiny.report`.

The three training loops share :class:`StepLoop` (seeding, optimizer, step budget, learning-rate
schedule, per-epoch mean loss, progress bar). Library functions log through :mod:`logging`.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sdvar_lib.data.digits import DigitsSplit, iterate_minibatches, load_digits_split, to_unit_range
from sdvar_lib.eval.metrics import DigitClassifier, classifier_accuracy
from sdvar_lib.models.init import init_var_weights_
from sdvar_lib.models.var import VAR
from sdvar_lib.models.vqvae import VQVAE
from sdvar_lib.tiny.config import OptimConfig, TinyTrainConfig
from sdvar_lib.tiny.report import (
    ClassifierTrainResult,
    TrainedModels,
    TrainReport,
    VAETrainResult,
    VARTrainResult,
    build_report,
    count_parameters,
    evaluate_report_,
)
from sdvar_lib.util.checks import check_int

log = logging.getLogger(__name__)

__all__ = [
    "lr_at",
    "StepLoop",
    "train_vqvae",
    "reinit_dead_codes_",
    "TokenData",
    "encode_tokens",
    "train_var",
    "random_shift",
    "train_classifier",
    "train_all",
]


# ---- the shared optimisation loop ----------------------------------------------------------------------
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


class StepLoop:
    """Epoch/step bookkeeping of one training phase.

    Creating it seeds torch's global generator (dropout, label dropping) with ``seed`` and makes the
    shuffling generator :attr:`gen` from the same seed, then the optimizer. Use::

        loop = StepLoop(model, optim, num_items, seed, "name", progress)
        for epoch in loop.epochs():
            for batch_B in loop.batches():   # shuffled indices; stops when the step budget is spent
                loop.step(loss_of(batch_B))  # sets the scheduled lr, backward, clip, optimizer step
            ...                              # end of epoch: loop.loss_history[-1] is its mean loss
        loop.close()

    The schedule spans ``optim.epochs`` epochs; ``optim.max_steps`` may stop the run earlier.
    """

    def __init__(self, model: nn.Module, optim: OptimConfig, num_items: int, seed: int, name: str, progress: bool,
                 postfix: str | None = None) -> None:
        torch.manual_seed(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.model, self.optim, self.num_items, self.postfix = model, optim, num_items, postfix
        self.opt = _make_optimizer(model, optim)
        per_epoch = max(1, num_items // optim.batch_size) if num_items >= optim.batch_size else 1
        self.total_steps = per_epoch * optim.epochs
        """Length of the learning-rate schedule."""
        self.run_steps = self.total_steps if optim.max_steps is None else min(self.total_steps, optim.max_steps)
        """Steps this run takes."""
        self.step_count = 0
        self._losses: list[float] = []
        self.loss_history: list[float] = []
        """Mean loss of every epoch that took a step."""
        self._bar = tqdm(total=self.run_steps, desc=name, disable=not progress, leave=False, dynamic_ncols=True,
                         file=sys.stderr)

    @property
    def done(self) -> bool:
        return self.step_count >= self.run_steps

    def epochs(self) -> Iterator[int]:
        """The epoch indices; ends after the last epoch or the epoch that spent the step budget."""
        for epoch in range(self.optim.epochs):
            yield epoch
            if self.done:
                break

    def is_last(self, epoch: int) -> bool:
        return self.done or epoch == self.optim.epochs - 1

    def batches(self) -> Iterator[torch.Tensor]:
        """One epoch of shuffled index batches (the last partial batch dropped when there is a full one)."""
        self._losses = []
        drop_last = self.num_items >= self.optim.batch_size
        for batch in iterate_minibatches(self.num_items, self.optim.batch_size, self.gen, drop_last=drop_last):
            if self.done:
                break
            yield batch
        if self._losses:
            self.loss_history.append(sum(self._losses) / len(self._losses))

    def step(self, loss: torch.Tensor) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.step_count, self.total_steps, self.optim)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.optim.grad_clip)
        self.opt.step()
        self._losses.append(loss.item())
        self.step_count += 1
        self._bar.update(1)
        if self.postfix is not None:
            self._bar.set_postfix(loss=format(self._losses[-1], self.postfix))

    def close(self) -> None:
        self._bar.close()


# ---- VQVAE --------------------------------------------------------------------------------------------
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
    vae.to(device).train()
    train_img = data.train_img_B3HW.to(device)
    loop = StepLoop(vae, optim, train_img.shape[0], seed, "VQVAE", progress, postfix=".4f")
    dead_total = 0
    for epoch in loop.epochs():
        for batch in loop.batches():
            img = train_img[batch.to(device)]
            rec, _, vq_loss = vae(img)
            loop.step(F.l1_loss(rec, img) + F.mse_loss(rec, img) + vq_loss)
        if epoch < dead_code_epochs:
            n_dead = reinit_dead_codes_(vae, train_img, loop.gen)
            dead_total += n_dead
            if n_dead:
                log.debug("epoch %d: re-initialised %d dead codes", epoch, n_dead)
        if loop.loss_history:
            log.info("VQVAE epoch %d: loss %.4f", epoch, loop.loss_history[-1])
    loop.close()
    vae.eval()
    heldout = data.heldout_img_B3HW.to(device)
    with torch.no_grad():
        rec = vae.img_to_reconstructed_img(heldout, last_one=True)
    train_hits = _code_hits(vae, train_img)
    heldout_hits = _code_hits(vae, heldout)
    return VAETrainResult(
        loss_history=loop.loss_history,
        heldout_l1=float((rec - heldout).abs().mean()),
        heldout_mse=float((rec - heldout).square().mean()),
        heldout_usage_per_stage=[float((h > 0).float().mean() * 100) for h in heldout_hits],
        train_usage_per_stage=[float((h > 0).float().mean() * 100) for h in train_hits],
        total_usage=float((train_hits.sum(0) > 0).float().mean() * 100),
        dead_codes_reinitialised=dead_total,
        seconds=time.perf_counter() - start,
    )


# ---- VAR ----------------------------------------------------------------------------------------------
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
    device = var.device
    n = train_tokens.idx_BL.shape[0]
    loop = StepLoop(var, optim, n, seed, name, progress, postfix=".3f")
    nll_history: list[float] = []
    for epoch in loop.epochs():
        var.train()
        tokens = train_tokens if epoch_tokens is None else epoch_tokens(epoch)
        if tokens.idx_BL.shape[0] != n:
            raise ValueError(f"epoch_tokens({epoch}) gave {tokens.idx_BL.shape[0]} rows, expected {n}")
        for batch in loop.batches():
            b = batch.to(device)
            logits_BLV = var(tokens.label_B[b], tokens.x_BLCv[b])
            loop.step(F.cross_entropy(
                logits_BLV.reshape(-1, var.V), tokens.idx_BL[b].reshape(-1), label_smoothing=optim.label_smoothing
            ))
        history = loop.loss_history
        if heldout_tokens is not None and ((epoch + 1) % eval_every == 0 or loop.is_last(epoch)):
            nll_history.append(_tokens_nll(var, heldout_tokens))
            train_loss = history[-1] if history else float("nan")
            log.info("%s epoch %d: train %.4f, held-out NLL %.4f", name, epoch, train_loss, nll_history[-1])
        elif history:
            log.info("%s epoch %d: train %.4f", name, epoch, history[-1])
        if on_epoch is not None:
            on_epoch(epoch, var)
            var.train()
    loop.close()
    var.eval()
    final = nll_history[-1] if nll_history else float("nan")
    return VARTrainResult(
        loss_history=loop.loss_history, heldout_nll_history=nll_history, final_heldout_nll=final,
        num_parameters=count_parameters(var), steps=loop.step_count, seconds=time.perf_counter() - start,
    )


# ---- classifier -----------------------------------------------------------------------------------------
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
    classifier.to(device).train()
    train_img = to_unit_range(data.train_img_B3HW)
    train_lab = data.train_label_B
    loop = StepLoop(classifier, optim, train_img.shape[0], seed, "classifier", progress)
    for _ in loop.epochs():
        for batch in loop.batches():
            img = random_shift(train_img[batch], max_shift, loop.gen).to(device)
            loop.step(F.cross_entropy(classifier(img), train_lab[batch].to(device)))
    loop.close()
    classifier.eval()
    acc = classifier_accuracy(classifier, to_unit_range(data.heldout_img_B3HW), data.heldout_label_B)
    log.info("classifier held-out accuracy %.4f", acc)
    return ClassifierTrainResult(
        loss_history=loop.loss_history, heldout_accuracy=acc, num_parameters=count_parameters(classifier),
        seconds=time.perf_counter() - start,
    )


# ---- whole pipeline -------------------------------------------------------------------------------------
def _subset(data: DigitsSplit, n: int | None) -> DigitsSplit:
    if n is None:
        return data
    check_int(n, "train_subset", 1)
    if n >= data.train_img_B3HW.shape[0]:
        return data
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
    vae = VQVAE(**config.vae.kwargs(test_mode=False))
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
        var = VAR(vae, **getattr(config, role).kwargs())
        init_var_weights_(var)
        var.to(device)
        results[role] = train_var(
            var, train_tokens, getattr(config, f"{role}_optim"), seed + offset, heldout_tokens, name=role, progress=progress,
        )
        models[role] = var
    train_seconds = time.perf_counter() - t0

    trained = TrainedModels(vae=vae, draft=models["draft"], target=models["target"], classifier=classifier)
    report = build_report(config, data, trained, vae_result, clf_result, results["target"], results["draft"],
                          train_seconds, device)
    if evaluate:
        phase("evaluate")
        evaluate_report_(report, trained, data, config)
    return trained, report
