"""Stage-by-stage VAR decoding with CFG and a static KV cache (the reference sampler).

The building blocks here (label preparation, per-stage sampling, next-stage inputs) are shared by
the baseline and by every speculative / hand-off decoder in :mod:`sdvar_lib.sdvar.decoder`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sdvar_lib.decoding.sampling import (
    SamplingConfig,
    apply_cfg,
    cfg_strength,
    filter_top_k_top_p,
    gumbel_softmax_with_rng,
    sample_from_probs,
    smooth_temperature,
)
from sdvar_lib.models.kv_cache import KVCache
from sdvar_lib.models.var import VAR

__all__ = [
    "GenerationOutput",
    "StageSample",
    "make_generator",
    "prepare_labels",
    "cfg_labels",
    "validate_batch_size",
    "validate_sampling_for",
    "guided_logits",
    "sample_stage",
    "next_stage_input",
    "autoregressive_generate",
    "fhat_to_unit_images",
]


@dataclass
class GenerationOutput:
    """Result of one generation call."""

    images_B3HW: torch.Tensor
    """Images in ``[0, 1]``."""
    tokens_per_stage: list[torch.Tensor]
    """Sampled tokens ``(B, pn*pn)`` of every stage."""
    label_B: torch.Tensor
    """Class labels used (``num_classes`` = no class)."""
    f_hat_BChw: torch.Tensor
    """Accumulated VQVAE feature map after the last stage."""


@dataclass
class StageSample:
    """Tokens drawn at one stage and the embedded map they add to ``f_hat``."""

    idx_Bl: torch.Tensor
    h_BChw: torch.Tensor
    probs_BlV: torch.Tensor
    """The distribution the tokens were drawn from (after CFG, top-k, top-p)."""


def validate_batch_size(B) -> int:
    if isinstance(B, bool) or not isinstance(B, int):
        raise TypeError(f"B must be an int >= 1, got {B!r}")
    if B < 1:
        raise ValueError(f"B must be >= 1, got {B}")
    return B


def validate_sampling_for(model: VAR, sampling: SamplingConfig) -> None:
    if sampling.top_k > model.V:
        raise ValueError(f"top_k must be in [0, {model.V}] (the vocabulary size; 0 disables top-k), got {sampling.top_k}")


def make_generator(g_seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """A generator seeded with ``g_seed`` on ``device``, or ``None`` (global RNG) when no seed is given."""
    if g_seed is None:
        return None
    if isinstance(g_seed, bool) or not isinstance(g_seed, int):
        raise TypeError(f"g_seed must be an int or None, got {g_seed!r}")
    rng = torch.Generator(device=device)
    rng.manual_seed(g_seed)
    return rng


def prepare_labels(
    B: int, label_B, num_classes: int, rng: torch.Generator | None, device: torch.device | str
) -> torch.Tensor:
    """Class labels ``(B,)`` with ``num_classes`` meaning "no class".

    ``None`` draws ``B`` labels uniformly (one ``multinomial`` call on ``rng``, the first random
    draw of a call); an int is broadcast; a sequence or tensor gives one label per sample.
    Negative labels mean "no class".
    """
    validate_batch_size(B)
    if label_B is None:
        uniform = torch.full((1, num_classes), 1.0 / num_classes, dtype=torch.float32, device=device)
        return torch.multinomial(uniform, num_samples=B, replacement=True, generator=rng).reshape(B)
    if isinstance(label_B, bool):
        raise TypeError("label_B must be None, an int, a sequence of ints or an int tensor, got a bool")
    if isinstance(label_B, int):
        if label_B >= num_classes:
            raise ValueError(f"label_B must be in [0, {num_classes}) or negative for no class, got {label_B}")
        return torch.full((B,), num_classes if label_B < 0 else label_B, dtype=torch.long, device=device)
    if isinstance(label_B, torch.Tensor):
        if label_B.dtype.is_floating_point or label_B.dtype == torch.bool:
            raise TypeError(f"label_B tensor must hold integers, got dtype {label_B.dtype}")
        labels = label_B.to(device=device, dtype=torch.long).reshape(-1)
    elif isinstance(label_B, Sequence) and not isinstance(label_B, str):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in label_B):
            raise TypeError(f"label_B sequence must hold ints, got {list(label_B)!r}")
        labels = torch.tensor(list(label_B), dtype=torch.long, device=device)
    else:
        raise TypeError(f"label_B must be None, an int, a sequence of ints or an int tensor, got {type(label_B).__name__}")
    if labels.numel() != B:
        raise ValueError(f"label_B has {labels.numel()} labels but B={B}; give one label per sample")
    if bool((labels >= num_classes).any()):
        raise ValueError(
            f"labels must be in [0, {num_classes}) or negative for no class, got {labels.tolist()}"
        )
    return torch.where(labels < 0, torch.full_like(labels, num_classes), labels)


def cfg_labels(label_B: torch.Tensor, num_classes: int) -> torch.Tensor:
    """CFG-doubled labels: the conditional half first, then "no class"."""
    return torch.cat((label_B, torch.full_like(label_B, num_classes)), dim=0)


def guided_logits(logits_2BlV: torch.Tensor, si: int, num_stages: int, cfg: float) -> torch.Tensor:
    """CFG at stage ``si`` on a doubled batch: ``(B, l, V)``."""
    return apply_cfg(logits_2BlV, cfg_strength(cfg, si, num_stages))


def sample_stage(
    model: VAR, logits_BlV: torch.Tensor, si: int, sampling: SamplingConfig, rng: torch.Generator | None
) -> StageSample:
    """Draw stage ``si``'s tokens from guided logits, in the reference's order of random draws."""
    vae = model.vae
    B, l, _ = logits_BlV.shape
    pn = model.patch_nums[si]
    filtered = filter_top_k_top_p(logits_BlV, sampling.top_k, sampling.top_p)
    probs = filtered.softmax(dim=-1)
    idx_Bl = sample_from_probs(probs, rng)
    if not sampling.more_smooth:
        h_BlC = vae.quantize.embedding(idx_Bl)
    else:
        ratio = si / model.num_stages_minus_1
        weights_BlV = gumbel_softmax_with_rng(filtered.mul(1 + ratio), tau=smooth_temperature(ratio), rng=rng)
        h_BlC = weights_BlV @ vae.quantize.embedding.weight.unsqueeze(0)
    h_BChw = h_BlC.transpose(1, 2).reshape(B, model.Cvae, pn, pn)
    return StageSample(idx_Bl=idx_Bl, h_BChw=h_BChw, probs_BlV=probs)


def next_stage_input(model: VAR, si: int, f_hat_BChw: torch.Tensor, lvl_pos_1LC: torch.Tensor) -> torch.Tensor:
    """CFG-doubled input ``(2B, l, C)`` of stage ``si + 1`` from ``f_hat`` after stage ``si``."""
    next_BlCv = model.vae.quantize.next_input(si, f_hat_BChw).to(model.word_embed.weight.dtype)
    return model.stage_input(si + 1, next_BlCv, lvl_pos_1LC).repeat(2, 1, 1)


def fhat_to_unit_images(model: VAR, f_hat_BChw: torch.Tensor) -> torch.Tensor:
    """Decode ``f_hat`` to images in ``[0, 1]``."""
    return model.vae.fhat_to_img(f_hat_BChw).add(1).mul(0.5)


@torch.no_grad()
def autoregressive_generate(
    model: VAR,
    B: int,
    label_B=None,
    g_seed: int | None = None,
    cfg: float = 1.5,
    top_k: int = 0,
    top_p: float = 0.0,
    more_smooth: bool = False,
    cache: KVCache | None = None,
) -> GenerationOutput:
    """The reference sampler: one cached pass per stage, CFG, top-k/top-p, optional Gumbel smoothing.

    A ``cache`` may be passed to reuse preallocated memory; it is reset first and its contents
    are meaningless after the call. Without one, a cache local to this call is used.
    """
    validate_batch_size(B)
    sampling = SamplingConfig(cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth)
    validate_sampling_for(model, sampling)
    device = model.device
    rng = make_generator(g_seed, device)
    labels = prepare_labels(B, label_B, model.num_classes, rng, device)
    if cache is None:
        cache = model.new_cache(2 * B)
    elif cache.batch_size != 2 * B:
        raise ValueError(f"cache holds {cache.batch_size} rows but CFG with B={B} needs {2 * B}")
    cache.reset()
    cond_BD = model.class_condition(cfg_labels(labels, model.num_classes))
    lvl_pos = model.lvl_pos()
    x_2BlC = model.start_input(cond_BD, lvl_pos)
    f_hat = cond_BD.new_zeros(B, model.Cvae, model.patch_nums[-1], model.patch_nums[-1])
    tokens: list[torch.Tensor] = []
    S = model.num_stages
    for si in range(S):
        logits = guided_logits(model.forward_cached(x_2BlC, cond_BD, cache), si, S, sampling.cfg)
        stage = sample_stage(model, logits, si, sampling, rng)
        tokens.append(stage.idx_Bl)
        f_hat = f_hat + model.vae.quantize.stage_contribution(si, stage.h_BChw)
        if si < S - 1:
            x_2BlC = next_stage_input(model, si, f_hat, lvl_pos)
    cache.reset()
    return GenerationOutput(
        images_B3HW=fhat_to_unit_images(model, f_hat), tokens_per_stage=tokens, label_B=labels, f_hat_BChw=f_hat
    )
