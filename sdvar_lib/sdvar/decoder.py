"""SDVAR: speculative decoding for VAR with parallel verification.

``SDVAR(draft, target)`` holds a draft and a target VAR sharing one VQVAE (and the run factory that
supplies their per-call runs). One SDVAR round is a sequence of public steps
(:meth:`SDVAR.run_round` reads top to bottom)::

    state = sd.prepare(B, labels, g_seed=0, sampling=SamplingConfig(cfg=1.5), gamma=2)  # checked, fresh caches
    proposal = sd.draft(state)                           # the draft proposes gamma stages
    verify = sd.verify(state, proposal)                  # ONE target pass, logits split by stage, p
    acceptance = sd.accept(state, proposal, verify)      # the policy's verdicts (exact = lossless)
    state = sd.commit(state, proposal, acceptance)       # new state: tokens, f_hat, caches, stats

:meth:`SDVAR.verify` builds the combined query (:meth:`SDVAR.verify_query`), runs the pass under
the block-causal mask the target's cache builds from stage ids, splits and guides the logits
(:meth:`SDVAR.split_logits`) and takes each stage's ``p`` with
:func:`~sdvar_lib.models.sampling.stage_probs`, the function the draft's ``q`` comes from too.
:meth:`SDVAR.verify_mask` shows that mask for inspection. :meth:`SDVAR.generate_parallel` runs the
rounds of a whole call. The other decoders (the target or the draft alone, the scale hand-offs) are
functions of :mod:`sdvar_lib.sdvar.handoff`; every decoder is reached through the registry
(:func:`sdvar_lib.sdvar.registry.get_method`). The research fork's method names live in
:mod:`sdvar_lib.compat`.

A round never mutates what a rollback needs: committed tokens, feature maps and statistics are
replaced by new values, and the static KV caches only ever write past their committed length and
then truncate to it. The caches (and the generator) are shared by the states of one call, so only
the newest state is current: a step on an older one raises ``ValueError`` before any model call
(:meth:`~sdvar_lib.sdvar.state.SDVARInferenceState.check_current`). Each step also refuses, before any
model call, what does not belong together: a state of another pair, a proposal of another state, a
verify result of another proposal, an acceptance of another one (the identity links of
:mod:`sdvar_lib.sdvar.state`), and a step out of order (a second ``verify`` of one proposal, a
``target_step`` while a round is in progress).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import is_dataclass

import torch

from sdvar_lib.models.kv_cache import block_causal_chunk_mask
from sdvar_lib.models.run import ModelRun, RunFactory, decode_stages, eager_run, prepare_call
from sdvar_lib.models.sampling import SamplingConfig, check_batch_size, guided_logits, sample_from_probs, stage_probs
from sdvar_lib.models.var import VAR
from sdvar_lib.sdvar.acceptance import AcceptancePolicy, make_policy
from sdvar_lib.sdvar.gamma import GammaRule, check_gamma_rule, make_gamma_rule, plan_never_drafts
from sdvar_lib.sdvar.state import (
    AcceptanceResult,
    CombinedQuery,
    DraftProposal,
    RoundRecord,
    SDVARInferenceState,
    VerifyResult,
    successor,
    take_over,
)
from sdvar_lib.sdvar.stats import SDVAROutput, SDVARStats
from sdvar_lib.util.checks import check_bool, check_instance, check_int
from sdvar_lib.util.modes import eval_mode
from sdvar_lib.util.progress import progress_log

log = logging.getLogger(__name__)

__all__ = ["SDVAR", "check_compatible"]


class SDVAR:
    """Speculative decoding with a draft VAR and a target VAR sharing one VQVAE."""

    def __init__(self, draft_model: VAR, target_model: VAR, run_factory: RunFactory | None = None) -> None:
        """``run_factory(model, label_B)`` may supply the per-call :class:`~sdvar_lib.models.run.ModelRun` of
        each model (e.g. the CUDA-graph fast path of :mod:`sdvar_lib.fast`); by default an eager run
        with a fresh cache is used."""
        if not isinstance(draft_model, VAR) or not isinstance(target_model, VAR):
            raise TypeError("SDVAR needs two sdvar_lib.models.VAR models (draft_model, target_model)")
        if run_factory is not None and not callable(run_factory):
            raise TypeError(f"run_factory must be callable (model, label_B) -> ModelRun or None, got {run_factory!r}")
        check_compatible(draft_model, target_model)
        self.draft_model = draft_model
        self.target_model = target_model
        self.run_factory = run_factory
        self._plans: dict[int, tuple[GammaRule, bool]] = {}
        """``plan_never_drafts`` of the rules seen lately (checked for this pair), by identity: a caller passes the same
        rule object call after call, a run factory hands out one priced rule per rule and prices; checking and planning
        a measured adaptive rule at every call cost about 0.3 ms of host time (the calibrated rule, CPU machine) and
        put ``exact_calibrated`` 2-3 % behind the target alone at batch 1 (one H200, 12-03)."""

    # ---- properties ------------------------------------------------------------------------------
    @property
    def vae(self):
        return self.target_model.vae

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.target_model.patch_nums

    @property
    def num_stages(self) -> int:
        return self.target_model.num_stages

    # ---- what every whole call shares (also the hand-off decoders of sdvar.handoff) ----------------
    def new_run(self, model: VAR, label_B: torch.Tensor) -> ModelRun:
        """The per-call run of ``model`` (draft or target) from the run factory (default: an eager run)."""
        run = (self.run_factory or eager_run)(model, label_B)
        rows = 2 * label_B.numel()
        if not isinstance(run, ModelRun) or run.model is not model or run.cache.batch_size != rows:
            got = (f"a run of another model or with a cache of {run.cache.batch_size} rows" if isinstance(run, ModelRun)
                   else f"a {type(run).__name__}")
            raise TypeError(f"run_factory returned {got}; it must return a ModelRun of the model it is given whose "
                            f"cache holds the CFG-doubled batch ({rows} rows)")
        return run

    def start_call(self, B: int, label_B, g_seed: int | None, sampling: SamplingConfig | None,
                   models: Sequence[VAR]) -> tuple[SamplingConfig, torch.Tensor, torch.Generator | None]:
        """Check a whole call's arguments and that the caches of ``models`` fit, then seed and prepare labels.

        Returns ``(sampling, labels, rng)`` (``sampling`` defaults to ``SamplingConfig()``).
        """
        sampling = SamplingConfig() if sampling is None else sampling
        check_batch_size(B)
        self.check_fits(models, B)
        labels, rng = prepare_call(self.target_model, B, label_B, g_seed, sampling)
        prepare = getattr(self.run_factory, "prepare_call", None)
        if prepare is not None:  # e.g. the fast path compiles the kernels the call will meet first, all at once
            prepare(models, B, sampling)
        return sampling, labels, rng

    def check_fits(self, models: Sequence[VAR], B: int) -> None:
        """Raise unless the caches of ``models`` for batch ``B`` fit in the device's memory (in the runs' dtype)."""
        for model in models:
            model.check_batch_fits(B, dtype=model.pos_1LC.dtype if self.run_factory is not None else torch.float32)

    def _priced(self, rule: GammaRule, B: int, sampling: SamplingConfig, policy: AcceptancePolicy) -> GammaRule:
        """``rule`` as the run factory prices it for this call (its ``price_rule``; the fast path times its programs
        for an adaptive rule with :class:`~sdvar_lib.sdvar.gamma.RunCost`), or as it is."""
        price = getattr(self.run_factory, "price_rule", None)
        if price is None:
            return rule
        priced = price(rule, self.draft_model, self.target_model, B, sampling, policy)
        if priced is not rule:
            self._never_drafts(check_gamma_rule(priced))
        return priced

    def _never_drafts(self, rule: GammaRule) -> bool:
        """``rule`` checked for this pair's stages (``check_for``: a ValueError if it cannot price them), then
        :func:`plan_never_drafts`; both kept for the rule object when it is a frozen dataclass (every rule of
        :mod:`~sdvar_lib.sdvar.gamma`), done again at every call for any other rule (it might change between calls)."""
        kept = self._plans.get(id(rule))
        if kept is not None and kept[0] is rule:
            return kept[1]
        rule.check_for(self.num_stages)
        never = plan_never_drafts(rule, self.num_stages)
        if not (is_dataclass(rule) and rule.__dataclass_params__.frozen):
            return never
        if len(self._plans) >= 16:
            self._plans.clear()
        self._plans[id(rule)] = (rule, never)
        return never

    def one_off_seconds(self) -> float:
        """Seconds the run factory has spent on one-off preparation so far (its ``one_off_s``; 0 for eager runs)."""
        return float(getattr(self.run_factory, "one_off_s", 0.0))

    def decode(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """Images in ``[0, 1]`` from a last ``f_hat`` (the VQVAE decode, queued on a GPU)."""
        return self.target_model.images_from_f_hat(f_hat_BChw)

    def finish_call(self, tokens: Sequence[torch.Tensor], f_hats: Sequence[torch.Tensor], labels: torch.Tensor,
                    stats: SDVARStats, t0: float, one_off_at_start: float = 0.0,
                    images: torch.Tensor | None = None) -> SDVAROutput:
        """Decode the last ``f_hat`` to images (unless ``images``, decoded from it already, are given) and time the
        call (``t0``: its ``time.perf_counter()`` start; ``one_off_at_start``: :meth:`one_off_seconds` then, so that
        the call's one-off part is counted apart)."""
        images = self.decode(f_hats[-1]) if images is None else images
        if images.is_cuda:
            torch.cuda.synchronize(images.device)
        wall = time.perf_counter() - t0
        one_off = min(max(self.one_off_seconds() - one_off_at_start, 0.0), wall)
        if one_off > 0:
            progress_log.info("one-off preparation in this call: %.1f s (kernel compiles, CUDA-graph captures); "
                              "later calls of the same shapes replay them (%.1f ms of this call was the decode itself)",
                              one_off, (wall - one_off) * 1000)
        return SDVAROutput(images_B3HW=images, tokens_per_stage=list(tokens), label_B=labels, f_hat_BChw=f_hats[-1],
                           stats=stats.with_wall_time(wall, one_off))

    # ---- the state -------------------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, B: int, label_B=None, g_seed: int | None = None, sampling: SamplingConfig | None = None,
                gamma=2, policy: str | AcceptancePolicy = "exact", verbose: bool = False,
                **policy_kwargs) -> SDVARInferenceState:
        """Check every argument, then build the empty state (fresh caches, nothing committed).

        The models must be in eval mode (the whole-call decoders switch them for the call).
        """
        gamma_rule, policy_obj, _ = self._check_round_arguments(B, gamma, sampling, policy, verbose, policy_kwargs)
        training = [name for name, m in zip(("draft", "target", "VQVAE"), (self.draft_model, self.target_model, self.vae))
                    if m.training]
        if training:
            raise ValueError(f"the {', '.join(training)} model(s) are in training mode (dropout and label dropping "
                             "would change the samples); call .eval() first, or use a whole-call decoder such as "
                             "generate_parallel, which runs them in eval mode")
        sampling, labels, rng = self.start_call(B, label_B, g_seed, sampling, (self.draft_model, self.target_model))
        return self._state(B, labels, sampling, rng, gamma_rule, policy_obj, verbose)

    def _check_round_arguments(self, B, gamma, sampling, policy, verbose,
                               policy_kwargs) -> tuple[GammaRule, AcceptancePolicy, bool]:
        """The gamma rule (checked for this pair), the policy and whether the rule's plan never drafts."""
        check_batch_size(B)
        check_bool(verbose, "verbose")
        gamma_rule = make_gamma_rule(gamma)
        never = self._never_drafts(gamma_rule)
        policy_obj = make_policy(policy, **policy_kwargs)
        if isinstance(sampling, SamplingConfig) and sampling.more_smooth and policy_obj.token_level:
            raise ValueError(
                f"more_smooth=True cannot be used with the token-level policy {policy_obj.describe()!r}: with "
                "more_smooth a stage's feature map is a Gumbel-softmax mixture of codebook entries, not the "
                "embedding of the sampled tokens, so there is no token whose probability p(x)/q(x) could be "
                "verified. Use more_smooth=False, or the hand-off decoders (test3, code_handoff), which support it."
            )
        return gamma_rule, policy_obj, never

    def _state(self, B, labels, sampling, rng, gamma_rule, policy, verbose) -> SDVARInferenceState:
        context = policy.prepare(self.vae.quantize.embedding.weight.detach())
        draft, target = self.new_run(self.draft_model, labels), self.new_run(self.target_model, labels)
        return SDVARInferenceState(
            B=B, label_B=labels, sampling=sampling, gamma_rule=gamma_rule, policy=policy, policy_context=context,
            rng=rng, draft=draft, target=target, stats=SDVARStats(num_stages=self.num_stages), verbose=verbose,
            epochs=take_over(draft, target),
        )

    def f_hats_after(self, base: Sequence[torch.Tensor], start: int, tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``f_hat`` after each of ``tokens`` (stages ``start ..``) on top of the committed ``base``."""
        check_int(start, "start", 0, self.num_stages)
        if len(base) < start or len(tokens) > self.num_stages - start:
            raise ValueError(f"f_hats_after needs the f_hat of the {start} stages before start (got {len(base)}) and at "
                             f"most {self.num_stages - start} token maps from stage {start} (got {len(tokens)})")
        for i, idx_Bl in enumerate(tokens):
            want = self.patch_nums[start + i] ** 2
            if not isinstance(idx_Bl, torch.Tensor) or idx_Bl.dim() != 2 or idx_Bl.shape[1] != want:
                raise ValueError(f"the tokens of stage {start + i} must be a (B, {want}) tensor, got "
                                 f"{tuple(idx_Bl.shape) if isinstance(idx_Bl, torch.Tensor) else type(idx_Bl).__name__}")
        quant = self.vae.quantize
        f_hat = base[start - 1] if start > 0 else None
        out = []
        for i, idx_Bl in enumerate(tokens):
            f_hat = quant.f_hat_after(start + i, f_hat, quant.idx_to_h(start + i, idx_Bl))
            out.append(f_hat)
        return out

    @staticmethod
    def _verify_stages(state: SDVARInferenceState, proposal: DraftProposal) -> list[int]:
        """Stages of the verify chunk: the proposals, plus the bonus stage's input if one is left."""
        return list(range(proposal.start, min(proposal.start + proposal.gamma, state.num_stages - 1) + 1))

    # ---- what belongs together: every step checks its arguments before any model call ----------------
    def _check_state(self, state: SDVARInferenceState) -> None:
        """A current state of this pair whose batch matches its labels and caches."""
        check_instance(state, "state", SDVARInferenceState, "an SDVARInferenceState (from SDVAR.prepare or a commit)")
        if state.draft.model is not self.draft_model or state.target.model is not self.target_model:
            raise ValueError("this state belongs to another SDVAR pair (its runs hold other draft/target models than "
                             "this SDVAR's): run its steps on the SDVAR whose prepare() made it")
        state.check_current()
        rows = (state.label_B.numel(), state.draft.cache.batch_size, state.target.cache.batch_size)
        if rows != (state.B, 2 * state.B, 2 * state.B):
            raise ValueError(f"this state's B={state.B} does not match its {rows[0]} label(s) and its caches of "
                             f"{rows[1]}/{rows[2]} rows (CFG needs 2B): the state was edited; prepare() a new one")

    def _check_between_rounds(self, state: SDVARInferenceState, step: str) -> None:
        """No round from ``state`` is in progress: the caches hold its committed stages, no proposal or verify chunk."""
        d, held, position = state.draft.cache.stages_held(), state.target.cache.length, self._begin(state.c)
        if d > state.c or held != position:
            done, rest = ("draft()", "verify, accept and commit") if held == position else ("verify()", "accept and commit")
            raise ValueError(f"{step}: a round from this state is in progress ({done} ran on it: the draft cache holds "
                             f"{d} stages, the target cache {held} positions, {state.c} stages are committed); finish "
                             f"it with {rest}, or start again with prepare()")

    def _begin(self, stage: int) -> int:
        """Cache position where ``stage``'s input begins (the end of the inputs of the stages before it)."""
        return self.target_model.begin_ends[stage][0] if stage < self.num_stages else self.target_model.L

    def _check_proposal(self, state: SDVARInferenceState, proposal: DraftProposal) -> None:
        """``proposal`` was drafted from ``state`` (or made by hand for it), for its next stages."""
        self._check_state(state)
        check_instance(proposal, "proposal", DraftProposal, "a DraftProposal (from SDVAR.draft)")
        if proposal.state_key is not None and proposal.state_key != state.key:
            raise ValueError(f"this proposal (stages {proposal.stages}) was drafted from another state, not this one "
                             f"(c={state.c}, B={state.B}): from an older state of this call or from another call; "
                             "draft() from this state, or pass the state the proposal was drafted from")
        if proposal.start != state.c:
            raise ValueError(f"proposals start at stage {proposal.start} but {state.c} stages are committed")
        g = proposal.gamma
        if not 1 <= g <= state.num_stages - state.c or len(proposal.q_probs) != g:
            raise ValueError(f"a proposal needs 1 to {state.num_stages - state.c} proposed stages with one q each, "
                             f"got {g} token maps and {len(proposal.q_probs)} q")

    def _check_verify(self, state: SDVARInferenceState, proposal: DraftProposal, verify: VerifyResult) -> None:
        """``verify`` is the verification of ``proposal`` (or made by hand for it)."""
        check_instance(verify, "verify", VerifyResult, "a VerifyResult (from SDVAR.verify)")
        if verify.proposal_key is not None and verify.proposal_key != proposal.key:
            raise ValueError(f"this verify result (stages {verify.stages}) belongs to another proposal, not this one "
                             f"(stages {proposal.stages}): verify(state, proposal) the proposal you accept")
        g = proposal.gamma
        if list(verify.stages[:g]) != proposal.stages or len(verify.stages) > g + 1 or len(verify.p_probs) != len(verify.stages):
            raise ValueError(f"this verify result covers stages {verify.stages} with {len(verify.p_probs)} p, the "
                             f"proposal stages {proposal.stages} (plus at most the next one, with one p per stage)")

    def _check_acceptance(self, state: SDVARInferenceState, proposal: DraftProposal, acceptance: AcceptanceResult) -> None:
        """``acceptance`` judged ``proposal``, commits stages ``c ..`` of this batch, and the caches hold their inputs."""
        check_instance(acceptance, "acceptance", AcceptanceResult, "an AcceptanceResult (from SDVAR.accept)")
        if acceptance.proposal_key is not None and acceptance.proposal_key != proposal.key:
            raise ValueError(f"this acceptance judged another proposal, not this one (stages {proposal.stages}): "
                             "accept(state, proposal, verify) the proposal you commit")
        c, n = state.c, len(acceptance.committed)
        if not 1 <= n <= min(proposal.gamma + 1, state.num_stages - c):
            raise ValueError(f"an acceptance commits 1 to {min(proposal.gamma + 1, state.num_stages - c)} stages of "
                             f"this proposal, this one {n}")
        for i, tokens in enumerate(acceptance.committed):
            want = (state.B, self.patch_nums[c + i] ** 2)
            if tuple(tokens.shape) != want:
                raise ValueError(f"the acceptance's tokens of stage {c + i} have shape {tuple(tokens.shape)}, this "
                                 f"state needs {want}")
        last = c + n - 1
        if state.target.cache.length < self.target_model.begin_ends[last][1]:
            raise ValueError(f"commit needs the verification of this proposal: the target cache holds "
                             f"{state.target.cache.length} positions, the committed stages end at "
                             f"{self.target_model.begin_ends[last][1]}; run verify() and accept() first")
        draft_end = self.draft_model.begin_ends[min(last, c + proposal.gamma - 1)][1]
        if state.draft.cache.length < draft_end:
            raise ValueError(f"the draft cache holds {state.draft.cache.length} positions, not the inputs of this "
                             f"proposal (up to {draft_end}): commit a proposal that draft() made from this state")

    # ---- step 1: draft ---------------------------------------------------------------------------
    @torch.no_grad()
    def draft(self, state: SDVARInferenceState, gamma: int | None = None) -> DraftProposal:
        """The draft reads its missing inputs (stages ``d .. c``) in one chunk, then proposes ``gamma`` stages.

        ``gamma`` defaults to the state's rule; it is capped at the stages left (``S - c``).
        """
        self._check_state(state)
        if state.done:
            raise ValueError("all stages are committed; nothing left to draft")
        gamma = self._next_gamma(state) if gamma is None else gamma
        check_int(gamma, "gamma of a drafting round", 1)
        c, S = state.c, state.num_stages
        g = min(gamma, S - c)
        run = state.draft
        d = run.cache.stages_held()
        if d > c:
            raise ValueError(f"the draft cache already holds proposals made from this state ({d} stages, {c} committed): "
                             "draft() ran on it before; verify, accept and commit that proposal, or prepare() again")
        self._check_between_rounds(state, "draft")
        before = run.cache.length
        tokens, q_probs, f_hats = [], [], []
        for i in range(g):  # the first stage step also reads the missing inputs d .. c-1 (the catch-up chunk)
            sample, f_hat = run.decode_stage(c + i, list(state.f_hats) + f_hats, state.sampling, state.rng)
            tokens.append(sample.idx_Bl)
            q_probs.append(sample.probs_BlV)
            f_hats.append(f_hat)
        log.log(logging.INFO if state.verbose else logging.DEBUG,
                "draft: read stages %d..%d, proposed stages %d..%d", d, c, c, c + g - 1)
        return DraftProposal(start=c, tokens=tokens, q_probs=q_probs, f_hats=f_hats, draft_cache_before=before,
                             draft_passes=g, state_key=state.key)

    # ---- step 2: verify --------------------------------------------------------------------------
    @torch.no_grad()
    def verify_query(self, state: SDVARInferenceState, proposal: DraftProposal) -> CombinedQuery:
        """Target inputs of stages ``c .. c+g`` (the last only if ``c + g < S``), CFG-doubled once.

        Stage ``c`` reads the committed ``f_hat``; stage ``c + i`` the ``f_hat`` after proposal
        ``c + i - 1``; all with the target's word/level/position embeddings at their own positions.
        The first part of :meth:`verify`.
        """
        self._check_proposal(state, proposal)
        stages = self._verify_stages(state, proposal)
        if len(proposal.f_hats) < stages[-1] - proposal.start or any(f.shape[0] != state.B for f in proposal.f_hats):
            raise ValueError(f"the verify chunk of stages {stages} reads f_hat after each proposal but the last "
                             f"({stages[-1] - proposal.start} of batch {state.B}); the proposal has {len(proposal.f_hats)} "
                             f"of batch {[f.shape[0] for f in proposal.f_hats]}")
        x = state.target.chunk_input(stages, list(state.f_hats) + list(proposal.f_hats))
        position = self.target_model.begin_ends[stages[0]][0]
        end = self.target_model.begin_ends[stages[-1]][1]
        return CombinedQuery(x_2BlC=x, stages=stages, position=position, stage_ids_l=self.target_model.lvl_1L[0, position:end])

    def verify_mask(self, state: SDVARInferenceState, query: CombinedQuery) -> torch.Tensor:
        """For inspection: the verify pass's block-causal mask ``(l, prefix + l)`` as a boolean tensor.

        The pass does not take it as an argument: the target's cache builds the same mask from the
        same stage ids (:meth:`~sdvar_lib.models.kv_cache.KVCache.chunk_mask`, with
        :func:`~sdvar_lib.models.kv_cache.block_causal_chunk_mask`; on the fast path it is built
        once per chunk shape and captured with the graph).
        """
        check_instance(query, "query", CombinedQuery, "a CombinedQuery (from SDVAR.verify_query)")
        return block_causal_chunk_mask(self.target_model.lvl_1L[0], query.position, query.stage_ids_l.numel())

    def split_logits(self, state: SDVARInferenceState, proposal: DraftProposal, logits_2BlV: torch.Tensor) -> list[torch.Tensor]:
        """Split the chunk's CFG-doubled logits ``(2B, l, V)`` by stage and guide each with its own strength.

        The second part of :meth:`verify`.
        """
        self._check_proposal(state, proposal)
        check_instance(logits_2BlV, "logits_2BlV", torch.Tensor, "a tensor (2B, l, V)")
        stages = self._verify_stages(state, proposal)
        if logits_2BlV.shape[0] != 2 * state.B:
            raise ValueError(f"target logits have batch {logits_2BlV.shape[0]}, CFG with B={state.B} needs {2 * state.B}")
        expected = sum(self.patch_nums[s] ** 2 for s in stages)
        if logits_2BlV.shape[1] != expected:
            raise ValueError(f"target logits cover {logits_2BlV.shape[1]} tokens, stages {stages} have {expected}")
        out, offset = [], 0
        for si in stages:
            l = self.patch_nums[si] ** 2
            out.append(guided_logits(logits_2BlV[:, offset : offset + l], si, self.num_stages, state.sampling.cfg))
            offset += l
        return out

    @torch.no_grad()
    def verify(self, state: SDVARInferenceState, proposal: DraftProposal) -> VerifyResult:
        """ONE target pass over the combined query; returns per-stage guided logits and ``p`` (``stage_probs``)."""
        self._check_proposal(state, proposal)
        position = self._begin(state.c)
        if state.target.cache.length != position:
            raise ValueError(
                f"the target cache holds {state.target.cache.length} positions, the verify chunk starts at {position}: "
                "verify() already ran on this state; accept and commit that verification, or prepare() again"
            )
        query = self.verify_query(state, proposal)
        per_stage = self.split_logits(state, proposal, state.target.forward(query.x_2BlC))
        p_probs = [stage_probs(lg, state.sampling) for lg in per_stage]
        return VerifyResult(stages=query.stages, logits=per_stage, p_probs=p_probs, target_passes=1,
                            proposal_key=proposal.key)

    # ---- step 3: accept --------------------------------------------------------------------------
    @torch.no_grad()
    def accept(self, state: SDVARInferenceState, proposal: DraftProposal, verify: VerifyResult) -> AcceptanceResult:
        """Apply the state's policy to every proposed stage, then commit up to the first stage not accepted by all.

        All stages are judged from the one verify pass (their ``p`` do not depend on each other's
        verdicts), so the accept/reject flags come to the host in a single transfer per round.
        Random draws made for stages after the first rejection are discarded, which leaves the
        committed stages' distribution unchanged. ``accept`` draws from the call's generator: a second
        call on the same verification draws again (another verdict); commit one of them.
        """
        self._check_proposal(state, proposal)
        self._check_verify(state, proposal, verify)
        links = dict(proposal_key=proposal.key, verify_key=verify.key)
        verdicts = [
            state.policy.verify_stage(si, proposal.tokens[i], proposal.q_probs[i], verify.p_probs[i], state.rng,
                                      state.policy_context)
            for i, si in enumerate(proposal.stages)
        ]
        flags = [bool(f) for f in torch.stack([v.stage_accepted_B.all() for v in verdicts]).tolist()]
        if not all(flags):
            r = flags.index(False)
            committed = list(proposal.tokens[:r]) + [verdicts[r].tokens_if_last_Bl]
            return AcceptanceResult(verdicts=verdicts[: r + 1], stage_all_accepted=flags[: r + 1],
                                    first_rejected=proposal.start + r, committed=committed, bonus=False,
                                    target_passes=verify.target_passes, **links)
        committed = list(proposal.tokens)
        bonus = len(verify.stages) > proposal.gamma
        if bonus:
            committed.append(sample_from_probs(verify.p_probs[-1], state.rng))
        return AcceptanceResult(verdicts=verdicts, stage_all_accepted=flags, first_rejected=None,
                                committed=committed, bonus=bonus, target_passes=verify.target_passes, **links)

    # ---- step 4: commit --------------------------------------------------------------------------
    @torch.no_grad()
    def commit(self, state: SDVARInferenceState, proposal: DraftProposal, acceptance: AcceptanceResult) -> SDVARInferenceState:
        """A new state with the accepted prefix committed, both caches truncated to valid inputs, ``f_hat``
        rebuilt from tokens and the round counted in its statistics. ``state`` itself is unchanged but
        no longer current: the new state took over the caches."""
        self._check_proposal(state, proposal)
        self._check_acceptance(state, proposal, acceptance)
        c = state.c
        new_f_hats = self.f_hats_after(state.f_hats, c, acceptance.committed)
        last_committed = c + len(acceptance.committed) - 1
        # target: inputs of committed stages are valid (each built from stages before it)
        state.target.cache.truncate(self.target_model.begin_ends[last_committed][1])
        # draft: it read inputs up to c + g - 1; those of stages <= last committed stay valid
        last_draft_input = min(last_committed, c + proposal.gamma - 1)
        state.draft.cache.truncate(self.draft_model.begin_ends[last_draft_input][1])
        judged = list(zip(proposal.stages, acceptance.verdicts, acceptance.stage_all_accepted))
        stats = state.stats.after_round(
            target_passes=acceptance.target_passes, draft_passes=proposal.draft_passes, gamma=proposal.gamma,
            committed=len(acceptance.committed), judged=[(si, v.accepted_Bl, ok) for si, v, ok in judged],
        )
        history = state.history.add(proposal.gamma, sum(acceptance.stage_all_accepted),
                                    [(si, ok) for si, _, ok in judged])
        return successor(state, tokens=tuple(state.tokens) + tuple(acceptance.committed),
                         f_hats=tuple(state.f_hats) + tuple(new_f_hats), history=history, stats=stats)

    @torch.no_grad()
    def target_step(self, state: SDVARInferenceState) -> SDVARInferenceState:
        """A round with ``gamma == 0``: the target reads stage ``c``'s input and samples it (one stage step)."""
        self._check_state(state)
        if state.done:
            raise ValueError("all stages are committed; nothing left to decode")
        self._check_between_rounds(state, "target_step")
        part = decode_stages(state.target, state.tokens, state.f_hats, state.c + 1, state.sampling, state.rng)
        return successor(state, tokens=part.tokens, f_hats=part.f_hats, history=state.history.add(0, 0),
                         stats=state.stats.after_target_steps(1))

    # ---- rounds ----------------------------------------------------------------------------------
    @torch.no_grad()
    def run_round(self, state: SDVARInferenceState, index: int = 0) -> RoundRecord:
        """One round: the rule's gamma, then draft -> verify -> accept -> commit (or a target step for 0)."""
        self._check_state(state)
        check_int(index, "index", 0)
        c = state.c
        gamma = self._next_gamma(state)
        if gamma == 0:
            new_state = self.target_step(state)
            record = RoundRecord(index=index, start_stage=c, gamma=0, accepted_stages=0, committed_stages=1,
                                 first_rejected=None, bonus=False, state=new_state)
        else:
            proposal = self.draft(state, gamma)
            verify = self.verify(state, proposal)
            acceptance = self.accept(state, proposal, verify)
            new_state = self.commit(state, proposal, acceptance)
            record = RoundRecord(index=index, start_stage=c, gamma=proposal.gamma,
                                 accepted_stages=sum(acceptance.stage_all_accepted),
                                 committed_stages=len(acceptance.committed), first_rejected=acceptance.first_rejected,
                                 bonus=acceptance.bonus, state=new_state, acceptance=acceptance)
        level = logging.INFO if state.verbose else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "round %d: stages %d.., gamma %d, accepted %d, committed %d%s, token acceptance %s; "
                    "target cache %d, draft cache %d", index, c, record.gamma, record.accepted_stages,
                    record.committed_stages, " (+bonus)" if record.bonus else "",
                    [round(a, 3) for a in record.target_stage_acceptance], new_state.target.cache.length,
                    new_state.draft.cache.length)
        return record

    @staticmethod
    def _next_gamma(state: SDVARInferenceState) -> int:
        """The state's rule's gamma for the next round, checked (a custom rule may return anything)."""
        rule = state.gamma_rule
        return check_int(rule.next_gamma(state.round_context()),
                         f"the gamma that the rule {rule.describe()} returned (next_gamma must return an int >= 0, "
                         "0 = a target step)", 0)

    @torch.no_grad()
    def iter_rounds(self, state: SDVARInferenceState) -> Iterator[RoundRecord]:
        """Run rounds until every stage is committed, yielding a record (with the new state) after each."""
        self._check_state(state)
        index = 0
        while not state.done:
            record = self.run_round(state, index)
            state = record.state
            yield record
            index += 1

    # ---- the whole call --------------------------------------------------------------------------
    @torch.no_grad()
    def generate_parallel(
        self,
        B: int,
        label_B=None,
        g_seed: int | None = None,
        sampling: SamplingConfig | None = None,
        gamma=2,
        policy: str | AcceptancePolicy = "exact",
        verbose: bool = False,
        **policy_kwargs,
    ) -> SDVAROutput:
        """Parallel-verification SDVAR over ``B`` images; returns images, tokens and :class:`SDVARStats`.

        ``sampling`` (default ``SamplingConfig()``) holds CFG, top-k/top-p and ``more_smooth``;
        ``gamma`` what :func:`~sdvar_lib.sdvar.gamma.make_gamma_rule` accepts; ``policy`` a name with
        its options (``policy_kwargs``) or an :class:`~sdvar_lib.sdvar.acceptance.AcceptancePolicy`.
        A gamma rule that would never draft decodes in the target-alone loop (no round bookkeeping,
        no draft run), so such a call costs what the target alone costs. The run factory may price the
        rule first (the fast path times its own programs for an adaptive rule whose costs are
        :class:`~sdvar_lib.sdvar.gamma.RunCost`, the default: ``FastRunFactory.price_rule``).
        """
        t0, one_off0 = time.perf_counter(), self.one_off_seconds()
        gamma_rule, policy_obj, never = self._check_round_arguments(B, gamma, sampling, policy, verbose, policy_kwargs)
        models = (self.target_model,) if never else (self.draft_model, self.target_model)
        sampling, labels, rng = self.start_call(B, label_B, g_seed, sampling, models)
        priced = self._priced(gamma_rule, B, sampling, policy_obj)
        priced_never = never if priced is gamma_rule else self._never_drafts(priced)
        gamma_rule = priced
        if never and not priced_never:  # the measured prices make it draft
            self.check_fits((self.draft_model,), B)
        never = priced_never
        with eval_mode(self.draft_model, self.target_model, self.vae):
            if never:
                log.debug("gamma rule %s never drafts: decoded with the target alone", gamma_rule.describe())
                run = self.new_run(self.target_model, labels)
                try:
                    part = decode_stages(run, (), (), self.num_stages, sampling, rng)
                finally:
                    run.cache.reset()
                stats = SDVARStats(num_stages=self.num_stages).after_target_steps(part.passes)
                out = self.finish_call(part.tokens, part.f_hats, labels, stats, t0, one_off0)
            else:
                state = self._state(B, labels, sampling, rng, gamma_rule, policy_obj, verbose)
                queued: list[torch.Tensor] = []  # images of a decode queued behind the device rounds' last program
                try:
                    device_rounds = getattr(self.run_factory, "round_runner", lambda state: None)(state)
                    if device_rounds is not None:  # the fast path: rounds as device programs (sdvar_lib.fast.round)
                        state = device_rounds.run(state, after_last=lambda f_hat: queued.append(self.decode(f_hat)))
                    for record in self.iter_rounds(state):
                        state = record.state
                finally:
                    state.target.cache.reset()
                    state.draft.cache.reset()
                out = self.finish_call(state.tokens, state.f_hats, labels, state.stats, t0, one_off0,
                                       images=queued[0] if queued else None)
        if verbose:
            log.info("parallel_v1 (%s, gamma %s): %s", policy_obj.describe(), gamma_rule.describe(), out.stats.summary())
        return out


def check_compatible(draft: VAR, target: VAR) -> None:
    """Raise ``ValueError`` unless draft and target share one VQVAE (codebook, ``Cvae``, scales) and class set."""
    check_instance(draft, "draft", VAR, "an sdvar_lib.models.VAR")
    check_instance(target, "target", VAR, "an sdvar_lib.models.VAR")
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
