"""SDVAR: speculative decoding for VAR, and the related hand-off decoders.

``SDVAR(draft, target)`` offers
- :meth:`SDVAR.sdvar_autoregressive_infer_cfg_parallel_v1`: the draft proposes ``gamma`` stages,
  the target verifies all of them in ONE block-causal pass over its cached prefix, a prefix is
  accepted by a policy (``exact`` is lossless), the bonus stage is sampled when all are accepted;
- :meth:`SDVAR.sdvar_autoregressive_infer_cfg_sd_test3`: draft first ``entry_num`` stages, then the
  target reads that prefix in one pass (mask selectable) and finishes;
- :meth:`SDVAR.code_handoff`: CoDe-style, target first ``entry_num`` stages, then the draft finishes;
- :meth:`SDVAR.baseline`: the target alone (the reference sampler).

State between rounds lives in :class:`SDVARInferenceState`; a round never mutates what a rollback
needs: committed tokens and feature maps are replaced by new tuples, and the static KV caches only
ever write past their committed length and then truncate to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch

from sdvar_lib.decoding.reference import (
    StageSample,
    cfg_labels,
    fhat_to_unit_images,
    guided_logits,
    make_generator,
    next_stage_input,
    prepare_labels,
    sample_stage,
    validate_batch_size,
    validate_sampling_for,
)
from sdvar_lib.decoding.sampling import SamplingConfig, filter_top_k_top_p, sample_from_probs
from sdvar_lib.models.kv_cache import KVCache
from sdvar_lib.models.var import VAR
from sdvar_lib.sdvar.acceptance import AcceptancePolicy, StageVerdict, make_policy
from sdvar_lib.sdvar.gamma import GammaRule, RoundContext, RoundHistory, make_gamma_rule, plan_never_drafts

log = logging.getLogger(__name__)

__all__ = [
    "SDVAR",
    "ModelRun",
    "RunFactory",
    "eager_run",
    "SDVARInferenceState",
    "SDVARStats",
    "SDVAROutput",
    "DraftProposal",
    "CombinedQuery",
    "VerifyResult",
    "AcceptanceResult",
    "RoundRecord",
    "SD_MASK_MODES",
    "prefill_mask",
]

SD_MASK_MODES = {
    0: "block-causal (standard)",
    1: "within-stage diagonal only",
    2: "within-stage diagonal only, last stage open",
    3: "native block-causal (the model's training mask)",
    4: "block-diagonal",
    5: "block-diagonal, last stage open",
}


# ---- data classes -------------------------------------------------------------------------------
@dataclass
class ModelRun:
    """One model's per-call context: CFG-doubled class condition, embeddings and its KV cache."""

    model: VAR
    cond_2BD: torch.Tensor
    lvl_pos_1LC: torch.Tensor
    cache: KVCache

    def stage_input(self, si: int, f_hats: Sequence[torch.Tensor]) -> torch.Tensor:
        """CFG-doubled input of stage ``si`` (``f_hats[s]`` is ``f_hat`` after stage ``s``)."""
        if si == 0:
            return self.model.start_input(self.cond_2BD, self.lvl_pos_1LC)
        return next_stage_input(self.model, si - 1, f_hats[si - 1], self.lvl_pos_1LC)

    def chunk_input(self, stages: Sequence[int], f_hats: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.stage_input(si, f_hats) for si in stages], dim=1)

    def forward(self, x_2BlC: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.forward_cached(x_2BlC, self.cond_2BD, self.cache, attn_mask=attn_mask)


def eager_run(model: VAR, label_B: torch.Tensor) -> ModelRun:
    """The default per-call run: CFG-doubled condition, embeddings and a fresh float32 cache."""
    cond = model.class_condition(cfg_labels(label_B, model.num_classes))
    return ModelRun(model=model, cond_2BD=cond, lvl_pos_1LC=model.lvl_pos(), cache=model.new_cache(2 * label_B.numel()))


RunFactory = Callable[[VAR, torch.Tensor], ModelRun]


@dataclass
class SDVARStats:
    """Counters of one generation call."""

    num_stages: int
    target_passes: int = 0
    draft_passes: int = 0
    rounds: int = 0
    gamma_per_round: list[int] = field(default_factory=list)
    stages_accepted_per_round: list[int] = field(default_factory=list)
    stages_committed_per_round: list[int] = field(default_factory=list)
    proposed_tokens_per_stage: list[int] = field(default_factory=list)
    proposed_stages_per_stage: list[int] = field(default_factory=list)
    accepted_stages_per_stage: list[int] = field(default_factory=list)
    wall_time_s: float = 0.0
    accepted_tokens_S: torch.Tensor | None = None
    """Accepted draft tokens per stage, counted on the models' device (no host sync per round);
    read it through :attr:`accepted_tokens_per_stage`."""

    def __post_init__(self) -> None:
        for name in ("proposed_tokens_per_stage", "proposed_stages_per_stage", "accepted_stages_per_stage"):
            if not getattr(self, name):
                setattr(self, name, [0] * self.num_stages)

    @property
    def accepted_tokens_per_stage(self) -> list[int]:
        if self.accepted_tokens_S is None:
            return [0] * self.num_stages
        return [int(v) for v in self.accepted_tokens_S.tolist()]

    def count_accepted(self, si: int, accepted_Bl: torch.Tensor) -> None:
        """Add a verified stage's accepted tokens (stays on the device)."""
        if self.accepted_tokens_S is None:
            self.accepted_tokens_S = torch.zeros(self.num_stages, dtype=torch.long, device=accepted_Bl.device)
        self.accepted_tokens_S[si] += accepted_Bl.sum()

    @property
    def token_acceptance_per_stage(self) -> list[float | None]:
        """Accepted / proposed draft tokens per stage (``None`` where nothing was proposed)."""
        return [a / p if p else None for a, p in zip(self.accepted_tokens_per_stage, self.proposed_tokens_per_stage)]

    @property
    def stage_acceptance_per_stage(self) -> list[float | None]:
        """Fraction of verified proposals of a stage that every sample accepted."""
        return [a / p if p else None for a, p in zip(self.accepted_stages_per_stage, self.proposed_stages_per_stage)]

    @property
    def token_acceptance(self) -> float | None:
        proposed = sum(self.proposed_tokens_per_stage)
        return sum(self.accepted_tokens_per_stage) / proposed if proposed else None

    def summary(self) -> str:
        acc = ", ".join("-" if a is None else f"{a:.2f}" for a in self.token_acceptance_per_stage)
        return (
            f"target passes {self.target_passes}, draft passes {self.draft_passes}, rounds {self.rounds}, "
            f"gamma/round {self.gamma_per_round}, accepted stages/round {self.stages_accepted_per_round}, "
            f"token acceptance per stage [{acc}], {self.wall_time_s * 1000:.1f} ms"
        )


@dataclass
class SDVAROutput:
    """Images in ``[0, 1]``, committed tokens of every stage, labels and statistics."""

    images_B3HW: torch.Tensor
    tokens_per_stage: list[torch.Tensor]
    label_B: torch.Tensor
    f_hat_BChw: torch.Tensor
    stats: SDVARStats


@dataclass(frozen=True)
class SDVARInferenceState:
    """Everything between two rounds. Rounds return a new state instead of mutating this one.

    ``tokens``/``f_hats`` hold the committed stages ``< c``; the target cache holds the inputs of
    stages ``< c``, the draft cache those of stages ``< d`` with ``d <= c``.
    """

    B: int
    label_B: torch.Tensor
    sampling: SamplingConfig
    gamma_rule: GammaRule
    policy: AcceptancePolicy
    policy_context: object | None
    rng: torch.Generator | None
    draft: ModelRun
    target: ModelRun
    tokens: tuple[torch.Tensor, ...] = ()
    f_hats: tuple[torch.Tensor, ...] = ()
    history: RoundHistory = RoundHistory()
    stats: SDVARStats | None = None
    verbose: bool = False

    @property
    def c(self) -> int:
        """Number of committed stages (the next stage to generate)."""
        return len(self.tokens)

    @property
    def num_stages(self) -> int:
        return self.target.model.num_stages

    @property
    def done(self) -> bool:
        return self.c >= self.num_stages

    @property
    def f_hat(self) -> torch.Tensor:
        return self.f_hats[-1]


@dataclass
class DraftProposal:
    """The draft's proposals for stages ``start .. start + len(tokens) - 1``."""

    start: int
    tokens: list[torch.Tensor]
    q_probs: list[torch.Tensor]
    """The draft's sampling distribution ``(B, l, V)`` of every proposed stage."""
    f_hats: list[torch.Tensor]
    """``f_hat`` after each proposed stage (on top of the committed prefix)."""
    draft_cache_before: int
    """Draft cache length before the draft read its missing inputs."""

    @property
    def gamma(self) -> int:
        return len(self.tokens)

    @property
    def stages(self) -> list[int]:
        return list(range(self.start, self.start + self.gamma))


@dataclass
class CombinedQuery:
    """The target's verify chunk: inputs of ``stages`` (CFG-doubled) placed at ``[position, + l)``."""

    x_2BlC: torch.Tensor
    stages: list[int]
    position: int
    stage_ids_l: torch.Tensor


@dataclass
class VerifyResult:
    """Guided target logits and sampling distributions of every stage of the verify chunk."""

    stages: list[int]
    logits: list[torch.Tensor]
    p_probs: list[torch.Tensor]


@dataclass
class AcceptanceResult:
    """Verdicts of the verified stages and what the round commits."""

    verdicts: list[StageVerdict]
    """Verdicts of the stages up to and including the first one not accepted by every sample."""
    stage_all_accepted: list[bool]
    """Per verdict: every sample accepted the stage (read from the device once per round)."""
    first_rejected: int | None
    """Stage index ``r`` of the first stage not accepted by every sample (``None``: all accepted)."""
    committed: list[torch.Tensor]
    """Tokens committed by this round, stages ``c ..`` in order (corrected stage or bonus included)."""
    bonus: bool


@dataclass
class RoundRecord:
    """One round of :meth:`SDVAR.iter_rounds`: what it did and the state after it."""

    index: int
    start_stage: int
    gamma: int
    accepted_stages: int
    committed_stages: int
    first_rejected: int | None
    bonus: bool
    state: SDVARInferenceState
    acceptance: AcceptanceResult | None = None

    @property
    def target_stage_acceptance(self) -> list[float]:
        """Token acceptance rate of every verified stage (reads from the device)."""
        if self.acceptance is None:
            return []
        return [float(v.accepted_Bl.float().mean()) for v in self.acceptance.verdicts]


# ---- masks --------------------------------------------------------------------------------------
def prefill_mask(stage_ids_l: torch.Tensor, sd_mask: int) -> torch.Tensor | None:
    """Boolean ``(l, l)`` mask of a prefill chunk starting at position 0 (``None`` = block-causal).

    Modes 1-5 reproduce the experimental masks of the original notebooks; only 0 and 3 are the
    attention the model was trained with.
    """
    if sd_mask not in SD_MASK_MODES:
        raise ValueError(f"sd_mask must be one of {sorted(SD_MASK_MODES)} ({SD_MASK_MODES}), got {sd_mask!r}")
    if sd_mask in (0, 3):
        return None if sd_mask == 0 else stage_ids_l.unsqueeze(0) <= stage_ids_l.unsqueeze(1)
    q = stage_ids_l.unsqueeze(1)
    k = stage_ids_l.unsqueeze(0)
    last = int(stage_ids_l.max())
    eye = torch.eye(stage_ids_l.numel(), dtype=torch.bool, device=stage_ids_l.device)
    if sd_mask in (1, 2):
        mask = (k < q) | eye
        if sd_mask == 2:
            mask = mask | ((q == last) & (k <= q))
        return mask
    mask = k == q
    if sd_mask == 5:
        mask = mask | ((q == last) & (k <= q))
    return mask


def _native_mask(model: VAR, l: int) -> torch.Tensor:
    return model.attn_bias_for_masking[0, 0, :l, :l] == 0


# ---- the decoder --------------------------------------------------------------------------------
class SDVAR:
    """Speculative decoding with a draft VAR and a target VAR sharing one VQVAE."""

    def __init__(self, draft_model: VAR, target_model: VAR, run_factory: RunFactory | None = None) -> None:
        """``run_factory(model, label_B)`` may supply the per-call :class:`ModelRun` of each model (e.g. the
        CUDA-graph fast path of :mod:`sdvar_lib.fast.run`); by default an eager run with a fresh cache is used."""
        if not isinstance(draft_model, VAR) or not isinstance(target_model, VAR):
            raise TypeError("SDVAR needs two sdvar_lib.VAR models (draft_model, target_model)")
        _check_compatible(draft_model, target_model)
        self.draft_model = draft_model
        self.target_model = target_model
        self.run_factory = run_factory
        self.last_output: SDVAROutput | None = None

    # -- properties --
    @property
    def vae(self):
        return self.target_model.vae

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.target_model.patch_nums

    @property
    def num_stages(self) -> int:
        return self.target_model.num_stages

    # -- state --
    def _new_run(self, model: VAR, label_B: torch.Tensor) -> ModelRun:
        if self.run_factory is not None:
            return self.run_factory(model, label_B)
        return eager_run(model, label_B)

    @torch.no_grad()
    def _initialize_inference_state(
        self,
        B: int,
        label_B=None,
        g_seed: int | None = None,
        cfg: float = 1.5,
        gamma=2,
        top_k: int = 0,
        top_p: float = 0.0,
        more_smooth: bool = False,
        policy: str | AcceptancePolicy = "exact",
        verbose: bool = False,
        **policy_kwargs,
    ) -> SDVARInferenceState:
        """Validate the arguments and build the empty state (fresh caches, nothing committed)."""
        validate_batch_size(B)
        sampling = SamplingConfig(cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth)
        validate_sampling_for(self.target_model, sampling)
        gamma_rule = make_gamma_rule(gamma)
        policy_obj = make_policy(policy, **policy_kwargs)
        if more_smooth and policy_obj.token_level:
            raise ValueError(
                f"more_smooth=True cannot be used with the token-level policy {policy_obj.describe()!r}: with "
                "more_smooth a stage's feature map is a Gumbel-softmax mixture of codebook entries, not the "
                "embedding of the sampled tokens, so there is no token whose probability p(x)/q(x) could be "
                "verified. Use more_smooth=False, or the hand-off decoders (test3, code_handoff), which support it."
            )
        device = self.target_model.device
        rng = make_generator(g_seed, device)
        labels = prepare_labels(B, label_B, self.target_model.num_classes, rng, device)
        context = policy_obj.prepare(self.vae.quantize.embedding.weight.detach())
        return SDVARInferenceState(
            B=B, label_B=labels, sampling=sampling, gamma_rule=gamma_rule, policy=policy_obj,
            policy_context=context, rng=rng, draft=self._new_run(self.draft_model, labels),
            target=self._new_run(self.target_model, labels), stats=SDVARStats(num_stages=self.num_stages),
            verbose=verbose,
        )

    def _f_hats_after(self, base: Sequence[torch.Tensor], start: int, tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``f_hat`` after each of ``tokens`` (stages ``start ..``) on top of the committed ``base``."""
        quant = self.vae.quantize
        f_hat = base[start - 1] if start > 0 else None
        out = []
        for i, idx_Bl in enumerate(tokens):
            contrib = quant.stage_contribution(start + i, quant.idx_to_h(start + i, idx_Bl))
            f_hat = contrib if f_hat is None else f_hat + contrib
            out.append(f_hat)
        return out

    @staticmethod
    def _round_context(state: SDVARInferenceState) -> RoundContext:
        return RoundContext(c=state.c, num_stages=state.num_stages,
                            draft_stages_held=state.draft.cache.stages_held(), history=state.history)

    def _check_B(self, state: SDVARInferenceState, B: int) -> None:
        if B != state.B:
            raise ValueError(f"B={B} does not match the inference state's batch size {state.B}")

    # -- step 1: draft --
    @torch.no_grad()
    def draft_generate_batch(
        self, state: SDVARInferenceState, B: int, verbose: bool = False, gamma: int | None = None
    ) -> DraftProposal:
        """The draft reads its missing inputs (stages ``d .. c``) in one chunk, then proposes ``gamma`` stages.

        ``gamma`` defaults to the state's rule; it is capped at the stages left (``S - c``).
        """
        self._check_B(state, B)
        if state.done:
            raise ValueError("all stages are committed; nothing left to draft")
        if gamma is None:
            gamma = state.gamma_rule.next_gamma(self._round_context(state))
        if isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 1:
            raise ValueError(f"draft_generate_batch needs gamma >= 1, got {gamma!r}")
        c, S = state.c, state.num_stages
        g = min(gamma, S - c)
        run = state.draft
        d = run.cache.stages_held()
        if d > c:
            raise RuntimeError(f"draft cache holds {d} stages but only {c} are committed")
        before = run.cache.length
        tokens, q_probs, f_hats = [], [], []
        x_2BlC = run.chunk_input(range(d, c + 1), state.f_hats)
        for i in range(g):
            si = c + i
            if i > 0:
                x_2BlC = run.stage_input(si, list(state.f_hats) + f_hats)
            logits_2BlV = run.forward(x_2BlC)
            state.stats.draft_passes += 1
            l = self.patch_nums[si] ** 2
            sample = sample_stage(
                self.draft_model, guided_logits(logits_2BlV[:, -l:], si, S, state.sampling.cfg), si, state.sampling, state.rng
            )
            tokens.append(sample.idx_Bl)
            q_probs.append(sample.probs_BlV)
            f_hats.extend(self._f_hats_after(list(state.f_hats) + f_hats, si, [sample.idx_Bl]))
        if verbose or state.verbose:
            log.info("draft: read stages %d..%d, proposed stages %d..%d", d, c, c, c + g - 1)
        return DraftProposal(start=c, tokens=tokens, q_probs=q_probs, f_hats=f_hats, draft_cache_before=before)

    # -- step 2: verify --
    def _verify_stages(self, draft_tokens: DraftProposal, state: SDVARInferenceState) -> list[int]:
        last = min(draft_tokens.start + draft_tokens.gamma, state.num_stages - 1)
        return list(range(draft_tokens.start, last + 1))

    @torch.no_grad()
    def _build_combined_query(self, draft_tokens: DraftProposal, state: SDVARInferenceState, B: int) -> CombinedQuery:
        """Target inputs of stages ``c .. c+g`` (the last only if ``c + g < S``), CFG-doubled once.

        Stage ``c`` reads the committed ``f_hat``; stage ``c + i`` the ``f_hat`` after proposal
        ``c + i - 1``; all with the target's word/level/position embeddings at their own positions.
        """
        self._check_B(state, B)
        if draft_tokens.start != state.c:
            raise ValueError(f"proposals start at stage {draft_tokens.start} but {state.c} stages are committed")
        stages = self._verify_stages(draft_tokens, state)
        f_hats = list(state.f_hats) + draft_tokens.f_hats
        x = state.target.chunk_input(stages, f_hats)
        position = self.target_model.begin_ends[stages[0]][0]
        end = self.target_model.begin_ends[stages[-1]][1]
        return CombinedQuery(
            x_2BlC=x, stages=stages, position=position, stage_ids_l=self.target_model.lvl_1L[0, position:end]
        )

    def _get_attention_mask(self, state: SDVARInferenceState, query: CombinedQuery) -> torch.Tensor:
        """The verify pass's block-causal mask ``(l, prefix + l)`` as a boolean tensor, from stage ids."""
        ids = self.target_model.lvl_1L[0, : query.position + query.stage_ids_l.numel()]
        return ids.unsqueeze(0) <= query.stage_ids_l.unsqueeze(1)

    def _split_logits_by_stage(
        self, target_logits: torch.Tensor, draft_tokens: DraftProposal, B: int, state: SDVARInferenceState
    ) -> list[torch.Tensor]:
        """Split the chunk's CFG-doubled logits ``(2B, l, V)`` by stage and guide each with its own strength."""
        self._check_B(state, B)
        stages = self._verify_stages(draft_tokens, state)
        if target_logits.shape[0] != 2 * B:
            raise ValueError(f"target logits have batch {target_logits.shape[0]}, CFG with B={B} needs {2 * B}")
        expected = sum(self.patch_nums[s] ** 2 for s in stages)
        if target_logits.shape[1] != expected:
            raise ValueError(f"target logits cover {target_logits.shape[1]} tokens, stages {stages} have {expected}")
        out, offset = [], 0
        for si in stages:
            l = self.patch_nums[si] ** 2
            out.append(guided_logits(target_logits[:, offset : offset + l], si, self.num_stages, state.sampling.cfg))
            offset += l
        return out

    @torch.no_grad()
    def target_verify_batch(self, draft_tokens: DraftProposal, state: SDVARInferenceState, B: int) -> VerifyResult:
        """ONE target pass over the combined query; returns per-stage guided logits and ``p``."""
        query = self._build_combined_query(draft_tokens, state, B)
        if state.target.cache.length != query.position:
            raise RuntimeError(
                f"target cache holds {state.target.cache.length} positions, the verify chunk starts at {query.position}"
            )
        logits = state.target.forward(query.x_2BlC)
        state.stats.target_passes += 1
        per_stage = self._split_logits_by_stage(logits, draft_tokens, B, state)
        s = state.sampling
        p_probs = [filter_top_k_top_p(lg, s.top_k, s.top_p).softmax(dim=-1) for lg in per_stage]
        return VerifyResult(stages=query.stages, logits=per_stage, p_probs=p_probs)

    # -- step 3: accept --
    @torch.no_grad()
    def basic_token_matching(
        self, draft_tokens: DraftProposal, verify: VerifyResult, state: SDVARInferenceState
    ) -> AcceptanceResult:
        """Apply the policy to every proposed stage, then commit up to the first stage not accepted by all.

        All stages are judged from the one verify pass (their ``p`` do not depend on each other's
        verdicts), so the accept/reject flags come to the host in a single transfer per round.
        Random draws made for stages after the first rejection are discarded, which leaves the
        committed stages' distribution unchanged.
        """
        verdicts = [
            state.policy.verify_stage(
                si, draft_tokens.tokens[i], draft_tokens.q_probs[i], verify.p_probs[i], state.rng, state.policy_context
            )
            for i, si in enumerate(draft_tokens.stages)
        ]
        flags = [bool(f) for f in torch.stack([v.stage_accepted_B.all() for v in verdicts]).tolist()]
        if not all(flags):
            r = flags.index(False)
            committed = list(draft_tokens.tokens[:r]) + [verdicts[r].tokens_if_last_Bl]
            return AcceptanceResult(verdicts=verdicts[: r + 1], stage_all_accepted=flags[: r + 1],
                                    first_rejected=draft_tokens.start + r, committed=committed, bonus=False)
        committed = list(draft_tokens.tokens)
        bonus = len(verify.stages) > draft_tokens.gamma
        if bonus:
            committed.append(sample_from_probs(verify.p_probs[-1], state.rng))
        return AcceptanceResult(verdicts=verdicts, stage_all_accepted=flags, first_rejected=None,
                                committed=committed, bonus=bonus)

    # -- step 4: commit --
    @torch.no_grad()
    def update_state_with_accepted_tokens(
        self,
        state: SDVARInferenceState,
        draft_tokens: DraftProposal,
        acceptance: AcceptanceResult,
    ) -> SDVARInferenceState:
        """Commit the accepted prefix, truncate both caches to valid inputs, rebuild ``f_hat`` from tokens."""
        c = state.c
        new_tokens = tuple(state.tokens) + tuple(acceptance.committed)
        new_f_hats = tuple(state.f_hats) + tuple(self._f_hats_after(state.f_hats, c, acceptance.committed))
        last_committed = c + len(acceptance.committed) - 1
        # target: inputs of committed stages are valid (each built from stages before it)
        state.target.cache.truncate(self.target_model.begin_ends[last_committed][1])
        # draft: it read inputs up to c + g - 1; those of stages <= last committed stay valid
        last_draft_input = min(last_committed, c + draft_tokens.gamma - 1)
        state.draft.cache.truncate(self.draft_model.begin_ends[last_draft_input][1])
        accepted_stages = sum(acceptance.stage_all_accepted)
        stats = state.stats
        stats.rounds += 1
        stats.gamma_per_round.append(draft_tokens.gamma)
        stats.stages_accepted_per_round.append(accepted_stages)
        stats.stages_committed_per_round.append(len(acceptance.committed))
        for si, verdict, ok in zip(draft_tokens.stages, acceptance.verdicts, acceptance.stage_all_accepted):
            stats.proposed_tokens_per_stage[si] += verdict.accepted_Bl.numel()
            stats.count_accepted(si, verdict.accepted_Bl)
            stats.proposed_stages_per_stage[si] += 1
            stats.accepted_stages_per_stage[si] += int(ok)
        return replace(
            state, tokens=new_tokens, f_hats=new_f_hats,
            history=state.history.add(
                draft_tokens.gamma, accepted_stages, list(zip(draft_tokens.stages, acceptance.stage_all_accepted))
            ),
        )

    @torch.no_grad()
    def _target_step(self, state: SDVARInferenceState) -> SDVARInferenceState:
        """A round with ``gamma == 0``: the target reads stage ``c``'s input and samples it."""
        c, S = state.c, state.num_stages
        logits = state.target.forward(state.target.stage_input(c, state.f_hats))
        state.stats.target_passes += 1
        sample = sample_stage(self.target_model, guided_logits(logits, c, S, state.sampling.cfg), c, state.sampling, state.rng)
        state.stats.rounds += 1
        state.stats.gamma_per_round.append(0)
        state.stats.stages_accepted_per_round.append(0)
        state.stats.stages_committed_per_round.append(1)
        return replace(
            state, tokens=tuple(state.tokens) + (sample.idx_Bl,),
            f_hats=tuple(state.f_hats) + tuple(self._f_hats_after(state.f_hats, c, [sample.idx_Bl])),
            history=state.history.add(0, 0),
        )

    # -- the loop --
    @torch.no_grad()
    def iter_rounds(self, state: SDVARInferenceState) -> Iterator[RoundRecord]:
        """Run rounds until every stage is committed, yielding a record (with the new state) after each."""
        index = 0
        while not state.done:
            c = state.c
            gamma = state.gamma_rule.next_gamma(self._round_context(state))
            if gamma == 0:
                state = self._target_step(state)
                record = RoundRecord(
                    index=index, start_stage=c, gamma=0, accepted_stages=0, committed_stages=1, first_rejected=None,
                    bonus=False, state=state,
                )
            else:
                draft = self.draft_generate_batch(state, state.B, gamma=gamma)
                verify = self.target_verify_batch(draft, state, state.B)
                acceptance = self.basic_token_matching(draft, verify, state)
                state = self.update_state_with_accepted_tokens(state, draft, acceptance)
                record = RoundRecord(
                    index=index, start_stage=c, gamma=draft.gamma,
                    accepted_stages=sum(acceptance.stage_all_accepted),
                    committed_stages=len(acceptance.committed), first_rejected=acceptance.first_rejected,
                    bonus=acceptance.bonus, state=state, acceptance=acceptance,
                )
            level = logging.INFO if state.verbose else logging.DEBUG
            if log.isEnabledFor(level):
                log.log(
                    level,
                    "round %d: stages %d.., gamma %d, accepted %d, committed %d%s, token acceptance %s; "
                    "target cache %d, draft cache %d",
                    index, c, record.gamma, record.accepted_stages, record.committed_stages,
                    " (+bonus)" if record.bonus else "", [round(a, 3) for a in record.target_stage_acceptance],
                    state.target.cache.length, state.draft.cache.length,
                )
            yield record
            index += 1

    @torch.no_grad()
    def _target_only(self, state: SDVARInferenceState) -> SDVARInferenceState:
        """Every stage as a target step, in the baseline's loop (no per-round bookkeeping).

        Used when the gamma rule would never draft, so the call costs what the target alone costs.
        """
        samples: list[StageSample] = []
        f_hats: list[torch.Tensor] = []
        S = state.num_stages
        self._run_stages(state.target, samples, f_hats, S, state.sampling, state.rng, state.stats, is_target=True)
        stats = state.stats
        stats.rounds += S
        stats.gamma_per_round.extend([0] * S)
        stats.stages_accepted_per_round.extend([0] * S)
        stats.stages_committed_per_round.extend([1] * S)
        log.debug("gamma rule %s never drafts: decoded with the target alone", state.gamma_rule.describe())
        return replace(state, tokens=tuple(s.idx_Bl for s in samples), f_hats=tuple(f_hats),
                       history=RoundHistory((0,) * S, (0,) * S))

    def _finish(self, state: SDVARInferenceState, t0: float) -> SDVAROutput:
        images = fhat_to_unit_images(self.target_model, state.f_hat)
        if images.is_cuda:
            torch.cuda.synchronize(images.device)
        state.stats.wall_time_s = time.perf_counter() - t0
        state.target.cache.reset()
        state.draft.cache.reset()
        out = SDVAROutput(
            images_B3HW=images, tokens_per_stage=list(state.tokens), label_B=state.label_B,
            f_hat_BChw=state.f_hat, stats=state.stats,
        )
        self.last_output = out
        return out

    @torch.no_grad()
    def generate_parallel(
        self,
        B: int,
        label_B=None,
        g_seed: int | None = None,
        cfg: float = 1.5,
        gamma=2,
        top_k: int = 0,
        top_p: float = 0.0,
        more_smooth: bool = False,
        verbose: bool = False,
        policy: str | AcceptancePolicy = "exact",
        **policy_kwargs,
    ) -> SDVAROutput:
        """Parallel-verification SDVAR; returns images, tokens and :class:`SDVARStats`."""
        t0 = time.perf_counter()
        state = self._initialize_inference_state(
            B, label_B, g_seed, cfg, gamma, top_k=top_k, top_p=top_p, more_smooth=more_smooth, policy=policy,
            verbose=verbose, **policy_kwargs,
        )
        if plan_never_drafts(state.gamma_rule, state.num_stages):
            state = self._target_only(state)
        for record in self.iter_rounds(state):
            state = record.state
        out = self._finish(state, t0)
        if verbose:
            log.info("parallel_v1 (%s, gamma %s): %s", state.policy.describe(), state.gamma_rule.describe(),
                     out.stats.summary())
        return out

    @torch.no_grad()
    def sdvar_autoregressive_infer_cfg_parallel_v1(
        self,
        B: int,
        label_B=None,
        g_seed: int | None = None,
        cfg: float = 1.5,
        gamma=2,
        top_k: int = 0,
        top_p: float = 0.0,
        more_smooth: bool = False,
        verbose: bool = False,
        policy: str | AcceptancePolicy = "exact",
        **policy_kwargs,
    ) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in ``[0, 1]``; statistics are in ``self.last_output.stats``."""
        return self.generate_parallel(
            B, label_B, g_seed, cfg, gamma, top_k, top_p, more_smooth, verbose, policy, **policy_kwargs
        ).images_B3HW

    # ---- hand-off decoders and baseline ---------------------------------------------------------
    def _run_stages(
        self,
        run: ModelRun,
        samples: list[StageSample],
        f_hats: list[torch.Tensor],
        stop: int,
        sampling: SamplingConfig,
        rng: torch.Generator | None,
        stats: SDVARStats,
        is_target: bool,
        sd_mask: int = 0,
    ) -> None:
        """Generate stages ``len(samples) .. stop - 1`` with one model, appending to ``samples``/``f_hats``.

        The first pass reads every input the model's cache is missing in one chunk under the
        ``sd_mask`` prefill mask; later passes read one stage each.
        """
        S = self.num_stages
        quant = self.vae.quantize
        while len(samples) < stop:
            c = len(samples)
            d = run.cache.stages_held()
            stages = list(range(d, c + 1))
            x = run.chunk_input(stages, f_hats)
            mask = None
            if len(stages) > 1 and sd_mask != 0:
                if d != 0:
                    raise RuntimeError("experimental prefill masks apply to a prefill from stage 0 only")
                mask = prefill_mask(run.model.lvl_1L[0, : x.shape[1]], sd_mask)
            logits = run.forward(x, attn_mask=mask)
            if is_target:
                stats.target_passes += 1
            else:
                stats.draft_passes += 1
            l = self.patch_nums[c] ** 2
            sample = sample_stage(run.model, guided_logits(logits[:, -l:], c, S, sampling.cfg), c, sampling, rng)
            samples.append(sample)
            contrib = quant.stage_contribution(c, sample.h_BChw)
            f_hats.append(contrib if c == 0 else f_hats[-1] + contrib)

    @torch.no_grad()
    def _handoff(
        self,
        target_first: bool,
        B: int,
        label_B,
        g_seed: int | None,
        cfg: float,
        top_k: int,
        top_p: float,
        more_smooth: bool,
        entry_num: int,
        sd_mask: int,
    ) -> SDVAROutput:
        t0 = time.perf_counter()
        validate_batch_size(B)
        S = self.num_stages
        if isinstance(entry_num, bool) or not isinstance(entry_num, int) or not 0 <= entry_num <= S:
            raise ValueError(f"entry_num must be an int in [0, {S}] (stages made by the first model), got {entry_num!r}")
        if isinstance(sd_mask, bool) or sd_mask not in SD_MASK_MODES:
            raise ValueError(f"sd_mask must be one of {sorted(SD_MASK_MODES)} ({SD_MASK_MODES}), got {sd_mask!r}")
        sampling = SamplingConfig(cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth)
        validate_sampling_for(self.target_model, sampling)
        device = self.target_model.device
        rng = make_generator(g_seed, device)
        labels = prepare_labels(B, label_B, self.target_model.num_classes, rng, device)
        stats = SDVARStats(num_stages=S)
        samples: list[StageSample] = []
        f_hats: list[torch.Tensor] = []
        first, second = (self.target_model, self.draft_model) if target_first else (self.draft_model, self.target_model)
        if entry_num > 0:
            first_run = self._new_run(first, labels)
            self._run_stages(first_run, samples, f_hats, entry_num, sampling, rng, stats, target_first)
            first_run.cache.reset()
        if entry_num < S:
            second_run = self._new_run(second, labels)
            self._run_stages(second_run, samples, f_hats, S, sampling, rng, stats, not target_first, sd_mask=sd_mask)
            second_run.cache.reset()
        images = fhat_to_unit_images(self.target_model, f_hats[-1])
        if images.is_cuda:
            torch.cuda.synchronize(images.device)
        stats.wall_time_s = time.perf_counter() - t0
        out = SDVAROutput(
            images_B3HW=images, tokens_per_stage=[s.idx_Bl for s in samples], label_B=labels,
            f_hat_BChw=f_hats[-1], stats=stats,
        )
        self.last_output = out
        return out

    @torch.no_grad()
    def generate_test3(
        self, B: int, label_B=None, g_seed=None, cfg=1.5, top_k=0, top_p=0.0, more_smooth=False, entry_num=10, sd_mask=0
    ) -> SDVAROutput:
        """Draft makes stages ``< entry_num``; the target reads that prefix in one pass and finishes."""
        return self._handoff(False, B, label_B, g_seed, cfg, top_k, top_p, more_smooth, entry_num, sd_mask)

    @torch.no_grad()
    def sdvar_autoregressive_infer_cfg_sd_test3(
        self, B: int, label_B=None, g_seed=None, cfg=1.5, top_k=0, top_p=0.0, more_smooth=False, entry_num=10, sd_mask=0
    ) -> torch.Tensor:
        """Images of :meth:`generate_test3`; statistics are in ``self.last_output.stats``."""
        return self.generate_test3(B, label_B, g_seed, cfg, top_k, top_p, more_smooth, entry_num, sd_mask).images_B3HW

    @torch.no_grad()
    def code_handoff(
        self, B: int, label_B=None, g_seed=None, cfg=1.5, top_k=0, top_p=0.0, more_smooth=False, entry_num=6
    ) -> SDVAROutput:
        """CoDe-style: the target makes stages ``< entry_num``, the draft reads the prefix and finishes."""
        return self._handoff(True, B, label_B, g_seed, cfg, top_k, top_p, more_smooth, entry_num, 0)

    @torch.no_grad()
    def baseline(self, B: int, label_B=None, g_seed=None, cfg=1.5, top_k=0, top_p=0.0, more_smooth=False) -> SDVAROutput:
        """The target alone (same draws as ``target.autoregressive_infer_cfg``), with statistics."""
        return self._handoff(True, B, label_B, g_seed, cfg, top_k, top_p, more_smooth, self.num_stages, 0)

    @torch.no_grad()
    def draft_alone(self, B: int, label_B=None, g_seed=None, cfg=1.5, top_k=0, top_p=0.0, more_smooth=False) -> SDVAROutput:
        """The draft alone, with statistics."""
        return self._handoff(False, B, label_B, g_seed, cfg, top_k, top_p, more_smooth, self.num_stages, 0)


def _check_compatible(draft: VAR, target: VAR) -> None:
    dv, tv = draft.vae, target.vae
    problems = []
    if draft.V != target.V:
        problems.append(f"vocabulary sizes differ (draft {draft.V}, target {target.V})")
    if draft.Cvae != target.Cvae:
        problems.append(f"Cvae differs (draft {draft.Cvae}, target {target.Cvae})")
    if tuple(draft.patch_nums) != tuple(target.patch_nums):
        problems.append(f"patch numbers differ (draft {draft.patch_nums}, target {target.patch_nums})")
    if draft.num_classes != target.num_classes:
        problems.append(f"numbers of classes differ (draft {draft.num_classes}, target {target.num_classes})")
    if not problems and dv is not tv:
        dw, tw = dv.quantize.embedding.weight, tv.quantize.embedding.weight
        if dw.shape != tw.shape or dw.device != tw.device or not torch.equal(dw, tw):
            problems.append("their VQVAE codebooks differ (they must share one VQVAE)")
    if problems:
        raise ValueError("draft and target must share one VQVAE and class set: " + "; ".join(problems))
