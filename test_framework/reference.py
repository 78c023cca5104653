"""Reference computations of the harness, written independently of the code they check.

They follow the design notes literally and call none of the functions under test (the decoder,
the model's run and cache machinery, the sampling filters, the quantizer's ``f_hat`` path, the
image decoding helper):

- stage inputs from the embedding tables (``class_emb``, ``pos_start``, ``lvl_embed``, ``pos_1LC``,
  ``word_embed``) and an area-downsampled ``f_hat``;
- ``f_hat`` from tokens: codebook rows, bicubic upsampling, the residual conv ``phi`` chosen by the
  tick rule of DESIGN §3 (:func:`reference_phi_index`) and applied as ``(1 - r) h + r conv(h)``;
- logits from one pass per stage through :class:`ReferenceCache`, a list-based cache written here
  (its own block-causal masks from stage ids), so the model's :class:`~sdvar_lib.models.kv_cache.KVCache`
  is checked, not trusted; the cache the harness compares against is this one;
- CFG, top-k/top-p and softmax (:func:`reference_probs`) from DESIGN §4;
- images as ``decoder(post_quant_conv(f_hat)).clamp(-1, 1)`` mapped to ``[0, 1]``.

Only the networks' layers are shared with the code under test: the transformer blocks and head
(through :meth:`sdvar_lib.models.var.VAR.forward_cached`, which takes the cache object as an
argument) and the VQVAE's decoder convolutions.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sdvar_lib.models import VAR, KVCache

__all__ = [
    "stage_bounds",
    "stage_ids",
    "default_labels",
    "random_tokens",
    "reference_phi_index",
    "reference_f_hats",
    "reference_lvl_pos",
    "reference_cfg",
    "reference_filter",
    "reference_probs",
    "reference_images",
    "ReferenceCache",
    "ReferenceRun",
    "ReferenceDecode",
    "reference_decode",
    "GreedyCheck",
    "check_greedy",
    "max_abs_diff",
    "sequential_cache",
    "exact_cache",
    "CacheDrift",
    "cache_drift",
    "strict_float32",
    "decode_drift",
    "cache_layer_diffs",
    "ChiSquareRows",
    "chi_square_rows",
    "chi_square_sf",
    "normal_sf",
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
    """``max|a - b|`` in float32 (``inf`` when the shapes differ).

    Two empty tensors raise ``ValueError``: a comparison over nothing must not read as a match.
    """
    if a.numel() == 0 and b.numel() == 0:
        raise ValueError(f"nothing to compare: both tensors are empty (shapes {tuple(a.shape)}, {tuple(b.shape)})")
    if a.shape != b.shape:
        return float("inf")
    return float((a.float() - b.float()).abs().amax())


def reference_phi_index(num_convs: int, si: int, num_stages: int) -> int:
    """Which of ``num_convs`` residual convs stage ``si`` uses (DESIGN §3): the tick nearest ``si / (S - 1)``.

    Ticks ``linspace(1/(3K), 1 - 1/(3K), K)`` when ``K == 4``, else ``linspace(1/(2K), 1 - 1/(2K), K)``,
    computed as the reference release does (numpy float64 ``linspace`` and ``argmin``): ties between two
    equally near ticks (at 10 stages, stage 7 lies halfway between the last two) are broken by its rounding.
    """
    K = num_convs
    if K == 1:
        return 0
    ticks = np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K) if K == 4 else np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K)
    return int(np.argmin(np.abs(ticks - si / (num_stages - 1))))


def _phi_convs(quant) -> list[torch.nn.Conv2d]:
    """The quantizer's residual convs in their order (empty when ``quant_resi`` is 0: ``phi`` is the identity)."""
    return [m for m in quant.quant_resi.modules() if isinstance(m, torch.nn.Conv2d)]


def reference_f_hats(model: VAR, tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``f_hat`` after each stage of ``tokens`` (stages ``0 ..``), float32 ``(B, Cvae, pn_last, pn_last)``.

    Stage ``s`` adds ``phi_s(upsample(codebook[tokens_s]))``: codebook rows as a ``pn_s x pn_s`` map,
    bicubic upsampling to the last patch number (the last stage as is), ``phi_s(h) = (1 - r) h + r conv_s(h)``.
    """
    if len(tokens) == 0:
        return []
    quant = model.vae.quantize
    patch_nums = model.patch_nums
    S, H = len(patch_nums), patch_nums[-1]
    codebook = quant.embedding.weight
    convs = _phi_convs(quant)
    r = abs(quant.quant_resi_ratio)
    f_hat, out = None, []
    for si, idx_Bl in enumerate(tokens):
        pn = patch_nums[si]
        h = codebook[idx_Bl].float().transpose(1, 2).reshape(idx_Bl.shape[0], -1, pn, pn)
        if si != S - 1:
            h = F.interpolate(h, size=(H, H), mode="bicubic")
        if convs:
            conv = convs[reference_phi_index(len(convs), si, S)]
            h = h * (1 - r) + F.conv2d(h, conv.weight, conv.bias, padding=1) * r
        f_hat = h if f_hat is None else f_hat + h
        out.append(f_hat)
    return out


def reference_lvl_pos(model: VAR) -> torch.Tensor:
    """Level + absolute position embedding of every position ``(1, L, C)``."""
    ids = stage_ids(model.patch_nums, model.device)
    return (model.lvl_embed.weight[ids] + model.pos_1LC[0]).unsqueeze(0)


def reference_cfg(logits_2BlV: torch.Tensor, si: int, num_stages: int, cfg: float) -> torch.Tensor:
    """``(1 + t) * cond - t * uncond`` with ``t = cfg * si / (S - 1)`` (conditional half first)."""
    t = cfg * si / (num_stages - 1) if num_stages > 1 else 0.0
    B = logits_2BlV.shape[0] // 2
    return (1 + t) * logits_2BlV[:B].float() - t * logits_2BlV[B:].float()


def reference_filter(guided_BlV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Guided logits with the entries outside top-k / top-p at ``-inf`` (DESIGN §4, written out).

    top-k: keep the logits that are at least the k-th largest of their row. top-p (on what top-k
    left): sort ascending, drop the entries whose cumulative softmax is ``<= 1 - top_p``, never the
    largest. Computed in the logits' dtype (float32), as the sampling contract does.
    """
    logits = guided_BlV
    if top_k > 0:
        kth = logits.sort(dim=-1, descending=True).values[..., top_k - 1 : top_k]
        logits = torch.where(logits >= kth, logits, torch.full_like(logits, -torch.inf))
    if top_p > 0:
        values, order = logits.sort(dim=-1)
        drop_sorted = torch.cumsum(torch.softmax(values, dim=-1), dim=-1) <= 1 - top_p
        drop_sorted[..., -1] = False
        drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = torch.where(drop, torch.full_like(logits, -torch.inf), logits)
    return logits


def reference_probs(guided_BlV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The sampling distribution of guided logits: ``softmax(reference_filter(...))``."""
    return torch.softmax(reference_filter(guided_BlV, top_k, top_p), dim=-1)


def reference_images(model: VAR, f_hat_BChw: torch.Tensor) -> torch.Tensor:
    """``decoder(post_quant_conv(f_hat)).clamp(-1, 1)`` mapped to ``[0, 1]`` (the VQVAE's layers, called here)."""
    vae = model.vae
    return (vae.decoder(vae.post_quant_conv(f_hat_BChw)).clamp(-1, 1) + 1) / 2


@contextlib.contextmanager
def strict_float32() -> Iterator[None]:
    """Float32 matrix products and convolutions without TF32 inside the block (no effect on a CPU)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@torch.no_grad()
def decode_drift(model: VAR, f_hat_BChw: torch.Tensor) -> float:
    """How far the reference decode of ``f_hat`` moves between the configured arithmetic (TF32 convolutions
    on CUDA by default) and strict float32: ``max|images - images_strict|`` (0 on a CPU)."""
    if f_hat_BChw.device.type != "cuda":
        return 0.0
    configured = reference_images(model, f_hat_BChw)
    with strict_float32():
        strict = reference_images(model, f_hat_BChw)
    return max_abs_diff(configured, strict)


class ReferenceCache:
    """A key/value cache written for the references: per layer, the chunks' keys and values in a list.

    It offers what :meth:`VAR.forward_cached` asks of a cache (``length``, ``chunk_mask``, ``write``,
    ``advance``) and what the harness compares (``keys``, ``values``, ``num_layers``); masks are
    block-causal from the stage ids of the positions.
    """

    def __init__(self, num_layers: int, patch_nums: Sequence[int], device: torch.device | str | None = None) -> None:
        self.num_layers = num_layers
        self.stage_ids_L = stage_ids(patch_nums, device)
        self._k: list[list[torch.Tensor]] = [[] for _ in range(num_layers)]
        self._v: list[list[torch.Tensor]] = [[] for _ in range(num_layers)]
        self._pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.length = 0

    @property
    def max_length(self) -> int:
        return int(self.stage_ids_L.numel())

    def chunk_mask(self, l: int) -> torch.Tensor:
        """Block-causal ``(l, length + l)``: a query sees every key of its own or an earlier stage."""
        if self.length + l > self.max_length:
            raise ValueError(f"chunk of {l} tokens at position {self.length} overflows {self.max_length} positions")
        ids = self.stage_ids_L[: self.length + l]
        return ids.unsqueeze(0) <= ids[self.length :].unsqueeze(1)

    def write(self, layer: int, k_BHlc: torch.Tensor, v_BHlc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._pending[layer] = (k_BHlc.clone(), v_BHlc.clone())
        return torch.cat(self._k[layer] + [k_BHlc], dim=2), torch.cat(self._v[layer] + [v_BHlc], dim=2)

    def advance(self, l: int) -> None:
        if sorted(self._pending) != list(range(self.num_layers)):
            raise RuntimeError(f"advance({l}) before every layer wrote the chunk")
        for layer, (k, v) in self._pending.items():
            self._k[layer].append(k)
            self._v[layer].append(v)
        self._pending = {}
        self.length += l

    def keys(self, layer: int) -> torch.Tensor:
        return torch.cat(self._k[layer], dim=2) if self._k[layer] else torch.empty(0)

    def values(self, layer: int) -> torch.Tensor:
        return torch.cat(self._v[layer], dim=2) if self._v[layer] else torch.empty(0)


class ReferenceRun:
    """One model, one batch: CFG-doubled condition, independent stage inputs and a fresh cache.

    The cache is a :class:`ReferenceCache` unless ``cache`` is given (the stale-cache diagnostics
    pass a :class:`~sdvar_lib.models.kv_cache.KVCache` on purpose, to show how that one fails).
    """

    def __init__(self, model: VAR, label_B: torch.Tensor, cache: KVCache | ReferenceCache | None = None,
                 dtype: torch.dtype | None = None) -> None:
        self.model = model
        self.dtype = model.pos_1LC.dtype if dtype is None else dtype
        self.B = int(label_B.numel())
        labels_2B = torch.cat((label_B, torch.full_like(label_B, model.num_classes)))
        self.cond_2BD = model.class_emb.weight[labels_2B].to(self.dtype)
        self.lvl_pos_1LC = reference_lvl_pos(model).to(self.dtype)
        self.bounds = stage_bounds(model.patch_nums)
        self.cache = ReferenceCache(model.depth, model.patch_nums, model.device) if cache is None else cache

    def stage_input(self, si: int, f_hats: Sequence[torch.Tensor]) -> torch.Tensor:
        """CFG-doubled input ``(2B, L_si, C)`` of stage ``si`` (``f_hats[s]``: ``f_hat`` after stage ``s``)."""
        m = self.model
        b, e = self.bounds[si]
        if si == 0:
            x = self.cond_2BD.unsqueeze(1) + m.pos_start.to(self.dtype) + self.lvl_pos_1LC[:, b:e]
            return x.to(self.dtype)
        pn = m.patch_nums[si]
        f = f_hats[si - 1]
        down_BlCv = F.interpolate(f, size=(pn, pn), mode="area").flatten(2).transpose(1, 2)
        weight, bias = m.word_embed.weight.to(self.dtype), m.word_embed.bias.to(self.dtype)
        x = F.linear(down_BlCv.to(self.dtype), weight, bias) + self.lvl_pos_1LC[:, b:e]
        return x.repeat(2, 1, 1)

    def forward_stage(self, si: int, f_hats: Sequence[torch.Tensor]) -> torch.Tensor:
        """One cached pass over stage ``si``'s input; raw CFG-doubled float32 logits ``(2B, L_si, V)``."""
        if self.cache.length != self.bounds[si][0]:
            raise RuntimeError(f"reference cache holds {self.cache.length} positions, stage {si} starts at {self.bounds[si][0]}")
        return self.model.forward_cached(self.stage_input(si, f_hats), self.cond_2BD, self.cache).float()

    def prefill(self, n_stages: int, f_hats: Sequence[torch.Tensor]) -> KVCache | ReferenceCache:
        """Read the inputs of stages ``< n_stages`` one pass each; returns the cache."""
        for si in range(n_stages):
            self.forward_stage(si, f_hats)
        return self.cache


@torch.no_grad()
def sequential_cache(model: VAR, label_B: torch.Tensor, tokens: Sequence[torch.Tensor], n_stages: int) -> ReferenceCache:
    """A cache filled by one pass per stage over the inputs of stages ``< n_stages`` built from ``tokens``."""
    run = ReferenceRun(model, label_B)
    return run.prefill(n_stages, reference_f_hats(model, list(tokens[: max(n_stages - 1, 0)])))


@torch.no_grad()
def exact_cache(model: VAR, label_B: torch.Tensor, tokens: Sequence[torch.Tensor], n_stages: int) -> ReferenceCache:
    """The keys and values of the inputs of stages ``< n_stages`` in strict float32 from the model's stored weights.

    One block-causal pass over all those inputs; for a half-precision model each block is upcast in turn
    (at most one block's float32 copy exists at a time, so this fits where the model does). These are the
    values a half-precision computation approximates.
    """
    run = ReferenceRun(model, label_B, dtype=torch.float32)
    if n_stages == 0:
        return run.cache
    f_hats = reference_f_hats(model, list(tokens[: max(n_stages - 1, 0)]))
    h = torch.cat([run.stage_input(si, f_hats) for si in range(n_stages)], dim=1)
    mask = run.cache.chunk_mask(h.shape[1])
    upcast = model.pos_1LC.dtype != torch.float32
    with strict_float32():
        cond = run.cond_2BD
        if not isinstance(model.shared_ada_lin, nn.Identity):
            cond = (copy.deepcopy(model.shared_ada_lin).float() if upcast else model.shared_ada_lin)(cond)
        for i, block in enumerate(model.blocks):
            h = (copy.deepcopy(block).float() if upcast else block)(h, cond, mask, run.cache, i)
    run.cache.advance(h.shape[1])
    return run.cache


@dataclass(frozen=True)
class CacheDrift:
    """Per layer, the envelope (running maximum over layers ``<= i``) of ``max|reference - exact|``, keys and
    values apart: how far a faithful computation in the model's precision lands from the exact values."""

    keys: list[float]
    values: list[float]


@torch.no_grad()
def cache_drift(sequential: ReferenceCache, exact: ReferenceCache) -> CacheDrift:
    """The drift envelope of a reference cache against the exact one of the same inputs (:func:`sequential_cache`,
    :func:`exact_cache`)."""
    if sequential.length != exact.length or sequential.num_layers != exact.num_layers:
        raise ValueError(f"reference caches differ in shape ({sequential.length} vs {exact.length} positions)")
    keys, values, ek, ev = [], [], 0.0, 0.0
    for i in range(sequential.num_layers):
        if sequential.length:
            ek = max(ek, max_abs_diff(sequential.keys(i), exact.keys(i)))
            ev = max(ev, max_abs_diff(sequential.values(i), exact.values(i)))
        keys.append(ek)
        values.append(ev)
    return CacheDrift(keys=keys, values=values)


def cache_layer_diffs(cache: KVCache, reference: ReferenceCache) -> list[float]:
    """``max|keys - ref| , |values - ref|`` per layer over the valid positions (``inf`` if lengths differ)."""
    if cache.length != reference.length or cache.num_layers != reference.num_layers:
        return [float("inf")] * reference.num_layers
    if reference.length == 0:  # both hold nothing (equal lengths were the comparison)
        return [0.0] * reference.num_layers
    return [
        max(max_abs_diff(cache.keys(i), reference.keys(i)), max_abs_diff(cache.values(i), reference.values(i)))
        for i in range(reference.num_layers)
    ]


@dataclass
class ReferenceDecode:
    """Tokens and guided logits of a sequential decode (teacher-forced prefix, then greedy)."""

    tokens: list[torch.Tensor]
    stage_logits: list[torch.Tensor]
    """Guided (CFG) float32 logits of every stage."""
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
    return ReferenceDecode(tokens=tokens, stage_logits=logits, f_hats=f_hats)


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
        lg = forced.stage_logits[si]
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


# ---- statistics of the sampled checks ------------------------------------------------------------
def chi_square_sf(statistic: float, dof: int) -> float:
    """``P(chi2_dof > statistic)`` (regularised upper incomplete gamma)."""
    if dof <= 0:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(statistic / 2, dtype=torch.float64)))


def normal_sf(z: float) -> float:
    """``P(N(0, 1) > z)``."""
    return 0.5 * math.erfc(z / math.sqrt(2))


@dataclass
class ChiSquareRows:
    """Pearson goodness of fit of ``n`` draws per row against each row's distribution, summed over rows."""

    statistic: float
    dof: int
    p_value: float
    impossible: int
    """Draws in cells of probability 0 (each one alone refutes the distribution)."""


def chi_square_rows(tokens_nR: torch.Tensor, probs_RV: torch.Tensor, min_expected: float = 5.0) -> ChiSquareRows:
    """``tokens_nR[:, r]`` are ``n`` draws that should follow ``probs_RV[r]``; cells with expected count
    below ``min_expected`` are merged per row."""
    n, R = tokens_nR.shape
    V = probs_RV.shape[-1]
    counts = torch.zeros(R, V, dtype=torch.float64, device=tokens_nR.device)
    counts.scatter_add_(1, tokens_nR.T.contiguous(), torch.ones(R, n, dtype=torch.float64, device=tokens_nR.device))
    counts, probs = counts.cpu(), probs_RV.double().cpu()
    probs = probs / probs.sum(dim=-1, keepdim=True)
    statistic, dof, impossible = 0.0, 0, int(counts[probs <= 0].sum())
    for r in range(R):
        expected = probs[r] * n
        big = expected >= min_expected
        small = (expected > 0) & ~big
        obs = [counts[r][big]]
        exp = [expected[big]]
        if bool(small.any()):
            obs.append(counts[r][small].sum().view(1))
            exp.append(expected[small].sum().view(1))
        o, e = torch.cat(obs), torch.cat(exp)
        statistic += float(((o - e) ** 2 / e).sum())
        dof += o.numel() - 1
    p_value = 0.0 if impossible else chi_square_sf(statistic, dof)
    return ChiSquareRows(statistic=statistic, dof=dof, p_value=p_value, impossible=impossible)
