"""Reference computations of the harness, written independently of :mod:`sdvar_lib.sdvar`.

They follow the design notes literally: stage inputs are recomputed from the embedding tables
(``class_emb``, ``pos_start``, ``lvl_embed``, ``pos_1LC``, ``word_embed``) and an area-downsampled
``f_hat``; ``f_hat`` is rebuilt from tokens with the VQVAE's own decoding path; logits come from
one cached pass per stage (the sequential schedule the chunked passes must reproduce). Only the
model's forward pass (:meth:`sdvar_lib.models.var.VAR.forward_cached`) is shared with the code under test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sdvar_lib.models.kv_cache import KVCache
from sdvar_lib.models.sampling import filter_top_k_top_p
from sdvar_lib.models.var import VAR

__all__ = [
    "stage_bounds",
    "stage_ids",
    "default_labels",
    "random_tokens",
    "reference_f_hats",
    "reference_lvl_pos",
    "reference_cfg",
    "reference_probs",
    "reference_images",
    "ReferenceRun",
    "ReferenceDecode",
    "reference_decode",
    "GreedyCheck",
    "check_greedy",
    "max_abs_diff",
    "sequential_cache",
    "cache_layer_diffs",
]


def stage_bounds(patch_nums: Sequence[int]) -> list[tuple[int, int]]:
    """``[(begin_s, end_s)]`` of every stage, from the patch numbers alone."""
    out, cur = [], 0
    for pn in patch_nums:
        out.append((cur, cur + pn * pn))
        cur += pn * pn
    return out


def stage_ids(patch_nums: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """Stage id of every token position ``(L,)``."""
    return torch.cat([torch.full((pn * pn,), si, dtype=torch.long) for si, pn in enumerate(patch_nums)]).to(device)


def default_labels(B: int, num_classes: int, device: torch.device | str) -> torch.Tensor:
    """``B`` distinct-looking class labels spread over the classes (fixed, so runs are reproducible)."""
    return torch.tensor([(3 + 7 * i) % num_classes for i in range(B)], dtype=torch.long, device=device)


def random_tokens(model: VAR, B: int, seed: int) -> list[torch.Tensor]:
    """Uniform random tokens ``(B, pn*pn)`` of every stage (drawn on the CPU, then moved)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, model.V, (B, pn * pn), generator=gen).to(model.device) for pn in model.patch_nums]


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b|`` in float32 (``inf`` when the shapes differ)."""
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    return float((a.float() - b.float()).abs().amax())


def reference_f_hats(model: VAR, tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``f_hat`` after each stage of ``tokens`` (stages ``0 ..``), via the VQVAE's ``embed_to_fhat``."""
    if len(tokens) == 0:
        return []
    quant = model.vae.quantize
    return list(quant.embed_to_fhat(quant.idxBl_to_h(list(tokens)), all_to_max_scale=True, last_one=False))


def reference_lvl_pos(model: VAR) -> torch.Tensor:
    """Level + absolute position embedding of every position ``(1, L, C)``."""
    ids = stage_ids(model.patch_nums, model.device)
    return (model.lvl_embed.weight[ids] + model.pos_1LC[0]).unsqueeze(0)


def reference_cfg(logits_2BlV: torch.Tensor, si: int, num_stages: int, cfg: float) -> torch.Tensor:
    """``(1 + t) * cond - t * uncond`` with ``t = cfg * si / (S - 1)`` (conditional half first)."""
    t = cfg * si / (num_stages - 1) if num_stages > 1 else 0.0
    B = logits_2BlV.shape[0] // 2
    return (1 + t) * logits_2BlV[:B].float() - t * logits_2BlV[B:].float()


def reference_probs(guided_BlV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The sampling distribution of guided logits (top-k / top-p as in the sampling contract)."""
    return filter_top_k_top_p(guided_BlV, top_k, top_p).softmax(dim=-1)


def reference_images(model: VAR, f_hat_BChw: torch.Tensor) -> torch.Tensor:
    """``decoder(post_quant_conv(f_hat)).clamp(-1, 1)`` mapped to ``[0, 1]``."""
    return model.vae.fhat_to_img(f_hat_BChw).add(1).mul(0.5)


class ReferenceRun:
    """One model, one batch: CFG-doubled condition, independent stage inputs and a fresh cache."""

    def __init__(self, model: VAR, label_B: torch.Tensor, cache_dtype: torch.dtype | None = None) -> None:
        self.model = model
        self.dtype = model.pos_1LC.dtype
        self.B = int(label_B.numel())
        labels_2B = torch.cat((label_B, torch.full_like(label_B, model.num_classes)))
        self.cond_2BD = model.class_emb.weight[labels_2B]
        self.lvl_pos_1LC = reference_lvl_pos(model)
        self.bounds = stage_bounds(model.patch_nums)
        self.cache: KVCache = model.new_cache(2 * self.B, dtype=cache_dtype or self.dtype)

    def stage_input(self, si: int, f_hats: Sequence[torch.Tensor]) -> torch.Tensor:
        """CFG-doubled input ``(2B, L_si, C)`` of stage ``si`` (``f_hats[s]``: ``f_hat`` after stage ``s``)."""
        m = self.model
        b, e = self.bounds[si]
        if si == 0:
            x = self.cond_2BD.unsqueeze(1) + m.pos_start + self.lvl_pos_1LC[:, b:e]
            return x.to(self.dtype)
        pn = m.patch_nums[si]
        f = f_hats[si - 1]
        down_BlCv = F.interpolate(f, size=(pn, pn), mode="area").flatten(2).transpose(1, 2)
        x = F.linear(down_BlCv.to(self.dtype), m.word_embed.weight, m.word_embed.bias) + self.lvl_pos_1LC[:, b:e]
        return x.repeat(2, 1, 1)

    def forward_stage(self, si: int, f_hats: Sequence[torch.Tensor]) -> torch.Tensor:
        """One cached pass over stage ``si``'s input; raw CFG-doubled float32 logits ``(2B, L_si, V)``."""
        if self.cache.length != self.bounds[si][0]:
            raise RuntimeError(f"reference cache holds {self.cache.length} positions, stage {si} starts at {self.bounds[si][0]}")
        return self.model.forward_cached(self.stage_input(si, f_hats), self.cond_2BD, self.cache).float()

    def prefill(self, n_stages: int, f_hats: Sequence[torch.Tensor]) -> KVCache:
        """Read the inputs of stages ``< n_stages`` one pass each; returns the cache."""
        for si in range(n_stages):
            self.forward_stage(si, f_hats)
        return self.cache


@torch.no_grad()
def sequential_cache(model: VAR, label_B: torch.Tensor, tokens: Sequence[torch.Tensor], n_stages: int) -> KVCache:
    """A cache filled by one pass per stage over the inputs of stages ``< n_stages`` built from ``tokens``."""
    run = ReferenceRun(model, label_B)
    return run.prefill(n_stages, reference_f_hats(model, list(tokens[: max(n_stages - 1, 0)])))


def cache_layer_diffs(cache: KVCache, reference: KVCache) -> list[float]:
    """``max|keys - ref| , |values - ref|`` per layer over the valid positions (``inf`` if lengths differ)."""
    if cache.length != reference.length or cache.num_layers != reference.num_layers:
        return [float("inf")] * reference.num_layers
    return [
        max(max_abs_diff(cache.keys(i), reference.keys(i)), max_abs_diff(cache.values(i), reference.values(i)))
        for i in range(reference.num_layers)
    ]


@dataclass
class ReferenceDecode:
    """Tokens and guided logits of a sequential decode (teacher-forced prefix, then greedy)."""

    tokens: list[torch.Tensor]
    guided_logits: list[torch.Tensor]
    f_hats: list[torch.Tensor]


@torch.no_grad()
def reference_decode(
    model: VAR, label_B: torch.Tensor, cfg: float, prefix: Sequence[torch.Tensor], stop: int | None = None
) -> ReferenceDecode:
    """One pass per stage up to ``stop``: stages of ``prefix`` are teacher-forced, later ones greedy (argmax)."""
    S = model.num_stages
    stop = S if stop is None else stop
    run = ReferenceRun(model, label_B)
    tokens = [t for t in prefix[:stop]]
    f_hats = reference_f_hats(model, tokens)
    logits = []
    for si in range(stop):
        guided = reference_cfg(run.forward_stage(si, f_hats), si, S, cfg)
        logits.append(guided)
        if si >= len(tokens):
            tokens.append(guided.argmax(dim=-1))
            f_hats = reference_f_hats(model, tokens)
    return ReferenceDecode(tokens=tokens, guided_logits=logits, f_hats=f_hats)


@dataclass
class GreedyCheck:
    """Is ``tokens`` the greedy decode of ``model`` for stages ``start .. stop - 1``?

    ``max_argmax_gap`` is the largest ``max(logits) - logits[token]`` of the candidate's tokens under
    the model's own sequential logits given the candidate's earlier stages; the candidate is a
    greedy decode up to rounding when it is within ``tolerance`` (a near tie may then pick either).
    """

    start: int
    stop: int
    identical: bool
    first_differing_stage: int | None
    differing_tokens: int
    max_argmax_gap: float
    tolerance: float

    @property
    def consistent(self) -> bool:
        return self.max_argmax_gap <= self.tolerance

    def describe(self) -> str:
        span = f"stages {self.start}..{self.stop - 1}"
        if self.identical:
            return f"{span} identical to the sequential greedy decode"
        verdict = "all at near ties" if self.consistent else "NOT greedy"
        return (
            f"{span}: {self.differing_tokens} token(s) differ from the sequential greedy decode from stage "
            f"{self.first_differing_stage} on ({verdict}: largest argmax gap {self.max_argmax_gap:.4f}, "
            f"tolerance {self.tolerance:.4f})"
        )


@torch.no_grad()
def check_greedy(
    model: VAR, label_B: torch.Tensor, cfg: float, tokens: Sequence[torch.Tensor], start: int, stop: int, bound
) -> GreedyCheck:
    """Compare ``tokens[start:stop]`` with the model's greedy continuation of ``tokens[:start]``.

    ``bound`` is a :class:`~test_framework.tolerances.Bound` on logits.
    """
    if not 0 <= start <= stop <= len(tokens):
        raise ValueError(f"need 0 <= start <= stop <= {len(tokens)}, got start={start}, stop={stop}")
    forced = reference_decode(model, label_B, cfg, list(tokens[:stop]), stop)
    greedy = reference_decode(model, label_B, cfg, list(tokens[:start]), stop)
    gap, tol, differing, first = 0.0, 0.0, 0, None
    for si in range(start, stop):
        lg = forced.guided_logits[si]
        chosen = lg.gather(-1, tokens[si].unsqueeze(-1)).squeeze(-1)
        gap = max(gap, float((lg.amax(dim=-1) - chosen).amax()))
        tol = max(tol, bound.allowed(lg))
        n = int((tokens[si] != greedy.tokens[si]).sum())
        if n and first is None:
            first = si
        differing += n
    return GreedyCheck(
        start=start, stop=stop, identical=differing == 0, first_differing_stage=first, differing_tokens=differing,
        max_argmax_gap=gap, tolerance=tol,
    )
