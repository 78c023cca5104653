"""SDVAR: speculative decoding for VAR with parallel verification, and the related decoders.

``SDVAR(draft, target)`` offers whole calls —
:meth:`SDVAR.generate_parallel` (SDVAR), :meth:`SDVAR.generate_test3` (draft first, then target),
:meth:`SDVAR.code_handoff` (target first, then draft), :meth:`SDVAR.baseline` (target alone) and
:meth:`SDVAR.draft_alone` — each returning images, tokens and :class:`~sdvar_lib.sdvar.stats.SDVARStats`.

One SDVAR round is a sequence of public steps (:meth:`SDVAR.run_round` reads top to bottom)::

    state = sd.prepare(B, labels, g_seed=0, gamma=2)       # validated arguments, fresh caches
    proposal = sd.draft(state)                              # the draft proposes gamma stages
    query = sd.verify_query(state, proposal)                # target inputs of stages c .. c+g
    mask = sd.verify_mask(state, query)                     # block-causal over prefix + chunk
    verify = sd.verify(state, proposal)                     # ONE target pass, logits split by stage
    acceptance = sd.accept(state, proposal, verify)         # the policy's verdicts (exact = lossless)
    state = sd.commit(state, proposal, acceptance)          # new state: tokens, f_hat, caches, stats

A round never mutates what a rollback needs: committed tokens, feature maps and statistics are
replaced by new values, and the static KV caches only ever write past their committed length and
then truncate to it. The research code's method names are kept as thin aliases at the end of the
class.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace

import torch

from sdvar_lib.models.kv_cache import block_causal_mask
from sdvar_lib.models.sampling import (
    SamplingConfig,
    check_batch_size,
    filter_top_k_top_p,
    guided_logits,
    make_generator,
    prepare_labels,
    sample_from_probs,
)
from sdvar_lib.models.var import VAR
from sdvar_lib.sdvar.acceptance import AcceptancePolicy, make_policy
from sdvar_lib.sdvar.gamma import GammaRule, make_gamma_rule, plan_never_drafts
from sdvar_lib.sdvar.handoff import decode_handoff, decode_stages
from sdvar_lib.sdvar.masks import check_sd_mask
from sdvar_lib.sdvar.run import ModelRun, RunFactory, eager_run
from sdvar_lib.sdvar.state import AcceptanceResult, CombinedQuery, DraftProposal, RoundRecord, SDVARInferenceState, VerifyResult
from sdvar_lib.sdvar.stats import SDVAROutput, SDVARStats
from sdvar_lib.util.checks import check_bool, check_int
from sdvar_lib.util.modes import eval_mode

log = logging.getLogger(__name__)

__all__ = ["SDVAR", "check_compatible"]


class SDVAR:
    """Speculative decoding with a draft VAR and a target VAR sharing one VQVAE."""

    def __init__(self, draft_model: VAR, target_model: VAR, run_factory: RunFactory | None = None) -> None:
        """``run_factory(model, label_B)`` may supply the per-call :class:`~sdvar_lib.sdvar.run.ModelRun` of
        each model (e.g. the CUDA-graph fast path of :mod:`sdvar_lib.fast`); by default an eager run
        with a fresh cache is used."""
        if not isinstance(draft_model, VAR) or not isinstance(target_model, VAR):
            raise TypeError("SDVAR needs two sdvar_lib.VAR models (draft_model, target_model)")
        if run_factory is not None and not callable(run_factory):
            raise TypeError(f"run_factory must be callable (model, label_B) -> ModelRun or None, got {run_factory!r}")
        check_compatible(draft_model, target_model)
        self.draft_model = draft_model
        self.target_model = target_model
        self.run_factory = run_factory
        self._local = threading.local()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_local")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

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

    @property
    def last_output(self) -> SDVAROutput | None:
        """The output of this thread's latest whole call (each thread sees its own)."""
        return getattr(self._local, "output", None)

    def _models(self) -> tuple[torch.nn.Module, ...]:
        return (self.draft_model, self.target_model, self.vae)

    def _new_run(self, model: VAR, label_B: torch.Tensor) -> ModelRun:
        return (self.run_factory or eager_run)(model, label_B)

    def _check_memory(self, B: int, models: Sequence[VAR]) -> None:
        for model in models:
            model.check_batch_fits(B, dtype=model.pos_1LC.dtype if self.run_factory is not None else torch.float32)

    def _call_setup(
        self, B, label_B, g_seed, cfg, top_k, top_p, more_smooth
    ) -> tuple[SamplingConfig, torch.Generator | None, torch.Tensor]:
        """Check the arguments every decoder shares, then seed the generator and prepare the labels."""
        check_batch_size(B)
        sampling = SamplingConfig(cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth)
        sampling.check_vocabulary(self.target_model.V)
        device = self.target_model.device
        rng = make_generator(g_seed, device)
        labels = prepare_labels(B, label_B, self.target_model.num_classes, rng, device)
        return sampling, rng, labels

    # ---- the state -------------------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, B: int, label_B=None, g_seed: int | None = None, cfg: float = 1.5, gamma=2, top_k: int = 0,
                top_p: float = 0.0, more_smooth: bool = False, policy: str | AcceptancePolicy = "exact",
                verbose: bool = False, **policy_kwargs) -> SDVARInferenceState:
        """Check every argument, then build the empty state (fresh caches, nothing committed).

        The models must be in eval mode (the whole-call decoders switch them for the call).
        """
        gamma_rule, policy_obj = self._check_round_arguments(B, gamma, more_smooth, policy, verbose, policy_kwargs)
        training = [name for name, m in zip(("draft", "target", "VQVAE"), self._models()) if m.training]
        if training:
            raise ValueError(f"the {', '.join(training)} model(s) are in training mode (dropout and label dropping "
                             "would change the samples); call .eval() first, or use a whole-call decoder such as "
                             "generate_parallel, which runs them in eval mode")
        sampling, rng, labels = self._call_setup(B, label_B, g_seed, cfg, top_k, top_p, more_smooth)
        self._check_memory(B, (self.draft_model, self.target_model))
        return self._state(B, labels, sampling, rng, gamma_rule, policy_obj, verbose)

    def _check_round_arguments(self, B, gamma, more_smooth, policy, verbose, policy_kwargs) -> tuple[GammaRule, AcceptancePolicy]:
        check_batch_size(B)
        check_bool(verbose, "verbose")
        gamma_rule = make_gamma_rule(gamma)
        policy_obj = make_policy(policy, **policy_kwargs)
        if more_smooth is True and policy_obj.token_level:
            raise ValueError(
                f"more_smooth=True cannot be used with the token-level policy {policy_obj.describe()!r}: with "
                "more_smooth a stage's feature map is a Gumbel-softmax mixture of codebook entries, not the "
                "embedding of the sampled tokens, so there is no token whose probability p(x)/q(x) could be "
                "verified. Use more_smooth=False, or the hand-off decoders (test3, code_handoff), which support it."
            )
        return gamma_rule, policy_obj

    def _state(self, B, labels, sampling, rng, gamma_rule, policy, verbose) -> SDVARInferenceState:
        context = policy.prepare(self.vae.quantize.embedding.weight.detach())
        return SDVARInferenceState(
            B=B, label_B=labels, sampling=sampling, gamma_rule=gamma_rule, policy=policy, policy_context=context,
            rng=rng, draft=self._new_run(self.draft_model, labels), target=self._new_run(self.target_model, labels),
            stats=SDVARStats(num_stages=self.num_stages), verbose=verbose,
        )

    def f_hats_after(self, base: Sequence[torch.Tensor], start: int, tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
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
    def _verify_stages(state: SDVARInferenceState, proposal: DraftProposal) -> list[int]:
        """Stages of the verify chunk: the proposals, plus the bonus stage's input if one is left."""
        return list(range(proposal.start, min(proposal.start + proposal.gamma, state.num_stages - 1) + 1))

    @staticmethod
    def _check_proposal(state: SDVARInferenceState, proposal: DraftProposal) -> None:
        if proposal.start != state.c:
            raise ValueError(f"proposals start at stage {proposal.start} but {state.c} stages are committed")

    # ---- step 1: draft ---------------------------------------------------------------------------
    @torch.no_grad()
    def draft(self, state: SDVARInferenceState, gamma: int | None = None) -> DraftProposal:
        """The draft reads its missing inputs (stages ``d .. c``) in one chunk, then proposes ``gamma`` stages.

        ``gamma`` defaults to the state's rule; it is capped at the stages left (``S - c``).
        """
        if state.done:
            raise ValueError("all stages are committed; nothing left to draft")
        if gamma is None:
            gamma = state.gamma_rule.next_gamma(state.round_context())
        check_int(gamma, "gamma of a drafting round", 1)
        c, S = state.c, state.num_stages
        g = min(gamma, S - c)
        run = state.draft
        d = run.cache.stages_held()
        if d > c:
            raise RuntimeError(f"draft cache holds {d} stages but only {c} are committed")
        before = run.cache.length
        tokens, q_probs, f_hats = [], [], []
        for i in range(g):
            si = c + i
            prefix = list(state.f_hats) + f_hats
            if i == 0 and d < c:  # catch up: the missing inputs and stage c's in one chunk
                sample = run.sample_stage(run.forward(run.chunk_input(range(d, c + 1), prefix)), si, state.sampling,
                                          state.rng)
                f_hat = self.f_hats_after(prefix, si, [sample.idx_Bl])[0]
            else:
                sample, f_hat = run.decode_stage(si, prefix, state.sampling, state.rng)
            tokens.append(sample.idx_Bl)
            q_probs.append(sample.probs_BlV)
            f_hats.append(f_hat)
        log.log(logging.INFO if state.verbose else logging.DEBUG,
                "draft: read stages %d..%d, proposed stages %d..%d", d, c, c, c + g - 1)
        return DraftProposal(start=c, tokens=tokens, q_probs=q_probs, f_hats=f_hats, draft_cache_before=before,
                             draft_passes=g)

    # ---- step 2: verify --------------------------------------------------------------------------
    @torch.no_grad()
    def verify_query(self, state: SDVARInferenceState, proposal: DraftProposal) -> CombinedQuery:
        """Target inputs of stages ``c .. c+g`` (the last only if ``c + g < S``), CFG-doubled once.

        Stage ``c`` reads the committed ``f_hat``; stage ``c + i`` the ``f_hat`` after proposal
        ``c + i - 1``; all with the target's word/level/position embeddings at their own positions.
        """
        self._check_proposal(state, proposal)
        stages = self._verify_stages(state, proposal)
        x = state.target.chunk_input(stages, list(state.f_hats) + list(proposal.f_hats))
        position = self.target_model.begin_ends[stages[0]][0]
        end = self.target_model.begin_ends[stages[-1]][1]
        return CombinedQuery(x_2BlC=x, stages=stages, position=position, stage_ids_l=self.target_model.lvl_1L[0, position:end])

    def verify_mask(self, state: SDVARInferenceState, query: CombinedQuery) -> torch.Tensor:
        """The verify pass's block-causal mask ``(l, prefix + l)`` as a boolean tensor, from stage ids."""
        return block_causal_mask(query.stage_ids_l, self.target_model.lvl_1L[0, : query.position + query.stage_ids_l.numel()])

    def split_logits(self, state: SDVARInferenceState, proposal: DraftProposal, logits_2BlV: torch.Tensor) -> list[torch.Tensor]:
        """Split the chunk's CFG-doubled logits ``(2B, l, V)`` by stage and guide each with its own strength."""
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
        """ONE target pass over the combined query; returns per-stage guided logits and ``p``."""
        query = self.verify_query(state, proposal)
        if state.target.cache.length != query.position:
            raise RuntimeError(
                f"target cache holds {state.target.cache.length} positions, the verify chunk starts at {query.position}"
            )
        per_stage = self.split_logits(state, proposal, state.target.forward(query.x_2BlC))
        s = state.sampling
        p_probs = [filter_top_k_top_p(lg, s.top_k, s.top_p).softmax(dim=-1) for lg in per_stage]
        return VerifyResult(stages=query.stages, logits=per_stage, p_probs=p_probs, target_passes=1)

    # ---- step 3: accept --------------------------------------------------------------------------
    @torch.no_grad()
    def accept(self, state: SDVARInferenceState, proposal: DraftProposal, verify: VerifyResult) -> AcceptanceResult:
        """Apply the state's policy to every proposed stage, then commit up to the first stage not accepted by all.

        All stages are judged from the one verify pass (their ``p`` do not depend on each other's
        verdicts), so the accept/reject flags come to the host in a single transfer per round.
        Random draws made for stages after the first rejection are discarded, which leaves the
        committed stages' distribution unchanged.
        """
        self._check_proposal(state, proposal)
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
                                    target_passes=verify.target_passes)
        committed = list(proposal.tokens)
        bonus = len(verify.stages) > proposal.gamma
        if bonus:
            committed.append(sample_from_probs(verify.p_probs[-1], state.rng))
        return AcceptanceResult(verdicts=verdicts, stage_all_accepted=flags, first_rejected=None,
                                committed=committed, bonus=bonus, target_passes=verify.target_passes)

    # ---- step 4: commit --------------------------------------------------------------------------
    @torch.no_grad()
    def commit(self, state: SDVARInferenceState, proposal: DraftProposal, acceptance: AcceptanceResult) -> SDVARInferenceState:
        """A new state with the accepted prefix committed, both caches truncated to valid inputs, ``f_hat``
        rebuilt from tokens and the round counted in its statistics (``state`` itself is unchanged)."""
        self._check_proposal(state, proposal)
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
        return replace(state, tokens=tuple(state.tokens) + tuple(acceptance.committed),
                       f_hats=tuple(state.f_hats) + tuple(new_f_hats), history=history, stats=stats)

    @torch.no_grad()
    def target_step(self, state: SDVARInferenceState) -> SDVARInferenceState:
        """A round with ``gamma == 0``: the target reads stage ``c``'s input and samples it."""
        if state.done:
            raise ValueError("all stages are committed; nothing left to decode")
        part = decode_stages(state.target, state.tokens, state.f_hats, state.c + 1, state.sampling, state.rng)
        return replace(state, tokens=part.tokens, f_hats=part.f_hats, history=state.history.add(0, 0),
                       stats=state.stats.after_target_steps(1))

    # ---- rounds ----------------------------------------------------------------------------------
    @torch.no_grad()
    def run_round(self, state: SDVARInferenceState, index: int = 0) -> RoundRecord:
        """One round: the rule's gamma, then draft -> verify -> accept -> commit (or a target step for 0)."""
        c = state.c
        gamma = state.gamma_rule.next_gamma(state.round_context())
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

    @torch.no_grad()
    def iter_rounds(self, state: SDVARInferenceState) -> Iterator[RoundRecord]:
        """Run rounds until every stage is committed, yielding a record (with the new state) after each."""
        index = 0
        while not state.done:
            record = self.run_round(state, index)
            state = record.state
            yield record
            index += 1

    # ---- whole calls -----------------------------------------------------------------------------
    def _finish(self, tokens, f_hats, labels, stats: SDVARStats, t0: float) -> SDVAROutput:
        images = self.target_model.images_from_f_hat(f_hats[-1])
        if images.is_cuda:
            torch.cuda.synchronize(images.device)
        out = SDVAROutput(images_B3HW=images, tokens_per_stage=list(tokens), label_B=labels, f_hat_BChw=f_hats[-1],
                          stats=stats.with_wall_time(time.perf_counter() - t0))
        self._local.output = out
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
        """Parallel-verification SDVAR; returns images, tokens and :class:`SDVARStats`.

        A gamma rule that would never draft decodes in the target-alone loop (no round bookkeeping,
        no draft run), so such a call costs what the target alone costs.
        """
        t0 = time.perf_counter()
        gamma_rule, policy_obj = self._check_round_arguments(B, gamma, more_smooth, policy, verbose, policy_kwargs)
        sampling, rng, labels = self._call_setup(B, label_B, g_seed, cfg, top_k, top_p, more_smooth)
        never = plan_never_drafts(gamma_rule, self.num_stages)
        self._check_memory(B, (self.target_model,) if never else (self.draft_model, self.target_model))
        with eval_mode(*self._models()):
            if never:
                log.debug("gamma rule %s never drafts: decoded with the target alone", gamma_rule.describe())
                run = self._new_run(self.target_model, labels)
                try:
                    part = decode_stages(run, (), (), self.num_stages, sampling, rng)
                finally:
                    run.cache.reset()
                stats = SDVARStats(num_stages=self.num_stages).after_target_steps(part.passes)
                out = self._finish(part.tokens, part.f_hats, labels, stats, t0)
            else:
                state = self._state(B, labels, sampling, rng, gamma_rule, policy_obj, verbose)
                try:
                    for record in self.iter_rounds(state):
                        state = record.state
                finally:
                    state.target.cache.reset()
                    state.draft.cache.reset()
                out = self._finish(state.tokens, state.f_hats, labels, state.stats, t0)
        if verbose:
            log.info("parallel_v1 (%s, gamma %s): %s", policy_obj.describe(), gamma_rule.describe(), out.stats.summary())
        return out

    @torch.no_grad()
    def _handoff(self, target_first: bool, B, label_B, g_seed, cfg, top_k, top_p, more_smooth, entry_num, sd_mask) -> SDVAROutput:
        t0 = time.perf_counter()
        check_batch_size(B)
        S = self.num_stages
        check_int(entry_num, "entry_num", 0, S)
        check_sd_mask(sd_mask)
        first, second = (self.target_model, self.draft_model) if target_first else (self.draft_model, self.target_model)
        sampling, rng, labels = self._call_setup(B, label_B, g_seed, cfg, top_k, top_p, more_smooth)
        self._check_memory(B, (first,) if entry_num == S else (second,) if entry_num == 0 else (first, second))
        with eval_mode(*self._models()):
            result = decode_handoff(self._new_run, first, second, target_first, labels, sampling, rng, entry_num, sd_mask)
            return self._finish(result.tokens, result.f_hats, labels, result.stats, t0)

    def generate_test3(
        self, B: int, label_B=None, g_seed=None, cfg=1.5, top_k=0, top_p=0.0, more_smooth=False, entry_num=None, sd_mask=0
    ) -> SDVAROutput:
        """Draft makes stages ``< entry_num``; the target reads that prefix in one pass and finishes.

        ``entry_num=None`` means every stage (the research code's default of 10 on the official scales).
        """
        entry_num = self.num_stages if entry_num is None else entry_num
        return self._handoff(False, B, label_B, g_seed, cfg, top_k, top_p, more_smooth, entry_num, sd_mask)

    def code_handoff(
        self, B: int, label_B=None, g_seed=None, cfg=1.5, top_k=0, top_p=0.0, more_smooth=False, entry_num=6
    ) -> SDVAROutput:
        """CoDe-style: the target makes stages ``< entry_num``, the draft reads the prefix and finishes."""
        return self._handoff(True, B, label_B, g_seed, cfg, top_k, top_p, more_smooth, entry_num, 0)

    def baseline(self, B: int, label_B=None, g_seed=None, cfg=1.5, top_k=0, top_p=0.0, more_smooth=False) -> SDVAROutput:
        """The target alone (same draws as ``target.autoregressive_infer_cfg``), with statistics."""
        return self._handoff(True, B, label_B, g_seed, cfg, top_k, top_p, more_smooth, self.num_stages, 0)

    def draft_alone(self, B: int, label_B=None, g_seed=None, cfg=1.5, top_k=0, top_p=0.0, more_smooth=False) -> SDVAROutput:
        """The draft alone, with statistics."""
        return self._handoff(False, B, label_B, g_seed, cfg, top_k, top_p, more_smooth, self.num_stages, 0)

    # ---- the research code's names ----------------------------------------------------------------
    # The original SDVAR notebooks call these; each is a thin alias of a public method above. ``B``
    # arguments are checked against the state's batch size.
    @staticmethod
    def _same_B(state: SDVARInferenceState, B: int) -> None:
        if B != state.B:
            raise ValueError(f"B={B} does not match the inference state's batch size {state.B}")

    def sdvar_autoregressive_infer_cfg_parallel_v1(
        self, B: int, label_B=None, g_seed: int | None = None, cfg: float = 1.5, gamma=2, top_k: int = 0,
        top_p: float = 0.0, more_smooth: bool = False, verbose: bool = False, policy: str | AcceptancePolicy = "exact",
        **policy_kwargs,
    ) -> torch.Tensor:
        """Images of :meth:`generate_parallel`; statistics are in ``self.last_output.stats``."""
        return self.generate_parallel(B, label_B, g_seed, cfg, gamma, top_k, top_p, more_smooth, verbose, policy,
                                      **policy_kwargs).images_B3HW

    def sdvar_autoregressive_infer_cfg_sd_test3(
        self, B: int, label_B=None, g_seed=None, cfg=1.5, top_k=0, top_p=0.0, more_smooth=False, entry_num=None, sd_mask=0
    ) -> torch.Tensor:
        """Images of :meth:`generate_test3`; statistics are in ``self.last_output.stats``."""
        return self.generate_test3(B, label_B, g_seed, cfg, top_k, top_p, more_smooth, entry_num, sd_mask).images_B3HW

    def _initialize_inference_state(self, B: int, label_B=None, g_seed=None, cfg=1.5, gamma=2, top_k=0, top_p=0.0,
                                    more_smooth=False, policy="exact", verbose=False, **policy_kwargs) -> SDVARInferenceState:
        """Alias of :meth:`prepare`."""
        return self.prepare(B, label_B, g_seed, cfg, gamma, top_k, top_p, more_smooth, policy, verbose, **policy_kwargs)

    def draft_generate_batch(self, state: SDVARInferenceState, B: int, verbose: bool = False,
                             gamma: int | None = None) -> DraftProposal:
        """Alias of :meth:`draft`."""
        self._same_B(state, B)
        return self.draft(replace(state, verbose=state.verbose or verbose), gamma)

    def _build_combined_query(self, draft_tokens: DraftProposal, state: SDVARInferenceState, B: int) -> CombinedQuery:
        """Alias of :meth:`verify_query`."""
        self._same_B(state, B)
        return self.verify_query(state, draft_tokens)

    def _get_attention_mask(self, state: SDVARInferenceState, query: CombinedQuery) -> torch.Tensor:
        """Alias of :meth:`verify_mask`."""
        return self.verify_mask(state, query)

    def target_verify_batch(self, draft_tokens: DraftProposal, state: SDVARInferenceState, B: int) -> VerifyResult:
        """Alias of :meth:`verify`."""
        self._same_B(state, B)
        return self.verify(state, draft_tokens)

    def _split_logits_by_stage(self, target_logits: torch.Tensor, draft_tokens: DraftProposal, B: int,
                               state: SDVARInferenceState) -> list[torch.Tensor]:
        """Alias of :meth:`split_logits`."""
        self._same_B(state, B)
        return self.split_logits(state, draft_tokens, target_logits)

    def basic_token_matching(self, draft_tokens: DraftProposal, verify: VerifyResult,
                             state: SDVARInferenceState) -> AcceptanceResult:
        """Alias of :meth:`accept` (it applies the state's policy, ``exact`` speculative sampling by default)."""
        return self.accept(state, draft_tokens, verify)

    def update_state_with_accepted_tokens(self, state: SDVARInferenceState, draft_tokens: DraftProposal,
                                          acceptance: AcceptanceResult) -> SDVARInferenceState:
        """Alias of :meth:`commit`."""
        return self.commit(state, draft_tokens, acceptance)


def check_compatible(draft: VAR, target: VAR) -> None:
    """Raise ``ValueError`` unless draft and target share one VQVAE (codebook, ``Cvae``, scales) and class set."""
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
