"""SDVAR rounds as device programs: a whole call's rounds with one host read per round.

:class:`DeviceRound` runs :meth:`SDVAR.generate_parallel <sdvar_lib.sdvar.decoder.SDVAR.generate_parallel>`'s
rounds on a draft and a target :class:`~sdvar_lib.fast.run.FastRun` (the fast path's run factory hands
it out, :meth:`FastRunFactory.round_runner <sdvar_lib.fast.factory.FastRunFactory.round_runner>`). A round
from stage ``c`` with ``g`` proposals, the draft's cache holding stages ``< d``, is three programs (CUDA
graphs) replayed back to back, with no host synchronisation between or inside them:

1. **draft** (:meth:`FastRun.stage_program <sdvar_lib.fast.run.FastRun.stage_program>`, per ``(c, d, g)``):
   the catch-up chunk with stage ``c``, then one pass per further proposal, each stage's draw (its ``q``
   kept), its tokens and ``f_hat``;
2. **verify** (per ``(c, g)``): the target's chunk of stages ``c .. c + g`` (the last only if there is
   one) built from those ``f_hat`` maps, one pass, every stage's ``p``;
3. **accept** (per ``(c, g, policy)``): the policy's verdict of every proposed stage
   (:mod:`sdvar_lib.fast.acceptance`), ``r`` = the number of leading stages every sample accepted, the
   committed tokens (proposals before ``r``, the corrected stage ``r``), the accepted-token counts and
   ``f_hat`` of the corrected stage (computed for every proposed stage and selected by ``r`` on the
   device).

The host then reads ``r`` (the round's one synchronisation), and when every proposal was accepted and
a stage is left it draws the bonus stage (a fourth small program: ``argmax(p / Exp(1))``, tokens and
``f_hat``). Caches, pass records and statistics are host bookkeeping from ``r``. Stages the gamma rule
leaves to the target (gamma 0) run as one target stage program per run of such steps.

**Random numbers.** A round draws every random number the eager round
(:meth:`SDVAR.run_round <sdvar_lib.sdvar.decoder.SDVAR.run_round>`) draws, from the call's generator and
in its order: the draft's ``Exp(1)`` noise of each proposed stage (inside the draft's program, which the
call's generator drives: :meth:`FastRun.run_drawing <sdvar_lib.fast.run.FastRun.run_drawing>`), then per
stage the policy's draws (:attr:`DevicePolicy.draws <sdvar_lib.fast.acceptance.DevicePolicy.draws>`, by the
host while the draft's program runs); the bonus stage's noise only once ``r`` says there is one, as the
eager round does (inside the bonus program). So on the CPU (PyTorch's sampler, float32) a
device round gives the eager round's tokens, statistics and ``f_hat`` bit for bit, for every policy
and seed. On a GPU the draft draws and ``p`` come from the fused sampler kernel where the run uses it:
the same random numbers, a softmax that may round differently in the last bit, so a token can differ
from the eager round's only at such a tie.

Every program only reads what the round's earlier programs or the host wrote and writes the same
values when it runs twice (a program captured during a call is warmed up once on real data).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import torch

from sdvar_lib.fast.acceptance import DevicePolicy, Draw, device_policy
from sdvar_lib.fast.config import PassRecord
from sdvar_lib.fast.run import FastRun, StageSlots, _Program, chunk_span
from sdvar_lib.models.sampling import SamplingConfig, guided_logits, stage_probs
from sdvar_lib.sdvar.gamma import AdaptiveGamma, FixedGamma, GammaRule, GammaSchedule, ProgramCost, RoundContext, RoundHistory
from sdvar_lib.sdvar.state import SDVARInferenceState, take_over
from sdvar_lib.util.checks import check_int
from sdvar_lib.util.timing import median_ms

log = logging.getLogger(__name__)

__all__ = ["DeviceRound", "RoundKey", "STOP_MARGIN", "round_keys", "rule_gammas"]

RoundKey = tuple[int, int, int]
"""``(c, d, g)``: start stage, stages the draft's cache holds, proposals."""

STOP_MARGIN = 1.5
""":meth:`DeviceRound.price` stops after the gamma-1 rounds when each, rejected, costs more than this many times the
loss budget: the margin keeps a timing's noise from deciding whether the rounds it did not time are out of reach."""


def round_keys(gammas, num_stages: int) -> list[RoundKey]:
    """The ``(c, d, g)`` of rounds with ``gamma`` in ``gammas`` when the draft lags by at most one stage
    (every round of a fixed gamma: after a bonus stage the draft holds ``c - 1`` stages)."""
    keys = set()
    for gamma in gammas:
        for c in range(num_stages):
            for d in {max(c - 1, 0), c}:
                keys.add((c, d, min(gamma, num_stages - c)))
    return sorted(keys)


def rule_gammas(rule: GammaRule) -> tuple[int, ...]:
    """The drafting gammas a rule may take (what to precapture): a fixed gamma, a schedule's non-zero values, an
    adaptive rule's ``1 .. max_gamma``; ``()`` for a rule of another kind (its rounds are captured as they come)."""
    if isinstance(rule, FixedGamma):
        return (rule.gamma,)
    if isinstance(rule, GammaSchedule):
        return tuple(sorted({v for v in rule.values if v > 0}))
    if isinstance(rule, AdaptiveGamma):
        return tuple(range(1, rule.max_gamma + 1))
    return ()


class DeviceRound:
    """The device rounds of one draft/target pair of fast runs (one batch size); see the module docstring."""

    def __init__(self, draft: FastRun, target: FastRun) -> None:
        if not isinstance(draft, FastRun) or not isinstance(target, FastRun):
            raise TypeError("DeviceRound needs two FastRun objects (draft, target)")
        if draft is target:
            raise ValueError("the draft and the target need a run each (a model used as both gets two runs)")
        if draft.batch_size != target.batch_size or draft.model.device != target.model.device:
            raise ValueError("draft and target runs must have the same batch size and device")
        self.draft, self.target = draft, target
        model = target.model
        self.batch_size, self.num_stages = target.batch_size, model.num_stages
        B, V, S, device = self.batch_size, model.V, model.num_stages, model.device
        self.slots = StageSlots.for_model(draft.model, B)
        """The draft's proposals (tokens, ``q``, noise) and the call's ``f_hat`` after every stage."""
        n = self.slots.row_begins[-1]
        self.p = torch.zeros(n, V, dtype=torch.float32, device=device)
        """The target's ``p`` of every verified stage."""
        self.tokens = torch.zeros(n, dtype=torch.long, device=device)
        """Committed tokens of every stage (the stage's verdict before ``r`` is known)."""
        self.accepted = torch.zeros(n, dtype=torch.bool, device=device)
        self.stage_ok = torch.zeros(S, B, dtype=torch.bool, device=device)
        self.accepted_tokens = torch.zeros(S, dtype=torch.long, device=device)
        """Accepted proposals per stage, counted in the round that commits the stage."""
        self.leading = torch.zeros(1, dtype=torch.long, device=device)
        """``r`` of the latest round: the number of leading proposed stages every sample accepted."""
        self._draws: dict[tuple, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        self._contexts: dict[object, torch.Tensor] = {}
        self._verify: dict[tuple, _Program] = {}
        self._accept: dict[tuple, _Program] = {}
        self._bonus: dict[tuple, _Program] = {}
        self._target_version = target.buffers_version

    # ---- what runs this way ----------------------------------------------------------------------
    def unsupported(self, state: SDVARInferenceState) -> str | None:
        """Why ``state``'s call cannot run as device rounds (``None``: it can)."""
        if state.draft is not self.draft or state.target is not self.target:
            raise ValueError("the state's runs are not this DeviceRound's")
        problem = self._why_not(state.sampling, state.policy)
        if problem is None and (state.c != 0 or self.draft.cache.length != 0 or self.target.cache.length != 0):
            return "the state is not a fresh call's"
        return problem

    def _why_not(self, sampling: SamplingConfig, policy) -> str | None:
        """Why calls with ``sampling`` and ``policy`` cannot run as device rounds on these runs (``None``: they can)."""
        for run in (self.draft, self.target):
            if not run.config.device_rounds:
                return "device rounds are off (FastConfig(device_rounds=False))"
            if not run.stage_programs_apply(sampling):
                return "stages run step by step here (first fast path, generic pass or more_smooth)"
        if device_policy(policy) is None:
            return f"the policy {policy.describe()} has no device form"
        return None

    def _prepared_context(self, form: DevicePolicy, policy) -> torch.Tensor | None:
        """The static copy of ``policy``'s context (:meth:`_static_context`) prepared from the codebook, for programs
        built outside a call."""
        return self._static_context(form, policy, policy.prepare(self.target.model.vae.quantize.embedding.weight.detach()))

    # ---- one call --------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, state: SDVARInferenceState,
            after_last: Callable[[torch.Tensor], None] | None = None) -> SDVARInferenceState:
        """Every round of the fresh call ``state`` (as :meth:`SDVAR.iter_rounds` runs them); the state after them.

        ``after_last`` is called with the call's last ``f_hat`` (a view of a static buffer, valid until this
        runner's next call) as soon as the last program is queued, before the host builds the outputs: the
        decoder queues the VQVAE decode there, so that the GPU decodes while the host does the bookkeeping.
        """
        state.check_current()
        problem = self.unsupported(state)
        if problem is not None:
            raise ValueError(f"this call cannot run as device rounds: {problem}")
        form = device_policy(state.policy)
        self._check_target_buffers()
        context = self._static_context(form, state.policy, state.policy_context)
        self.accepted_tokens.zero_()
        S, rule = self.num_stages, state.gamma_rule
        stats, history, c, drafted = state.stats, state.history, 0, False
        level = logging.INFO if state.verbose else logging.DEBUG
        while c < S:
            d = self.draft.cache.stages_held()
            gamma = rule.next_gamma(RoundContext(c=c, num_stages=S, draft_stages_held=d, history=history))
            if gamma == 0:  # target steps: as many as the rule takes in a row, one program
                k = self._target_steps_ahead(rule, c, d, history)
                self._target_steps(state, c, k)
                stats = stats.after_target_steps(k)
                for _ in range(k):
                    history = history.add(0, 0)
                log.log(level, "device rounds: target steps for stages %d..%d", c, c + k - 1)
                c += k
                continue
            check_int(gamma, "gamma of a drafting round", 1)
            g = min(gamma, S - c)
            r, bonus = self._round(state, form, context, c, d, g)
            committed = r + 1 if r < g else g + int(bonus)
            flags = [i < r for i in range(min(r + 1, g))]
            rows = self.slots.row_begins
            judged = [(c + i, rows[c + i + 1] - rows[c + i], ok) for i, ok in enumerate(flags)]
            stats = stats.after_round_counted(1, g, g, committed, judged)  # accepted tokens: counted on the device
            history = history.add(g, sum(flags), [(c + i, ok) for i, ok in enumerate(flags)])
            drafted = True
            log.log(level, "device round: stages %d.. (draft cache %d), gamma %d, accepted %d, committed %d%s",
                    c, d, g, sum(flags), committed, " (+bonus)" if bonus else "")
            c += committed
        if after_last is not None:
            after_last(self.slots.f_hat[S - 1])
        tokens, f_hats = self._outputs()
        if drafted:
            stats = replace(stats, accepted_tokens_S=self.accepted_tokens.clone())
        return replace(state, tokens=tokens, f_hats=f_hats, history=history, stats=stats,
                       epochs=take_over(state.draft, state.target))

    def _round(self, state: SDVARInferenceState, form: DevicePolicy, context: torch.Tensor | None, c: int, d: int,
               g: int) -> tuple[int, bool]:
        """One drafting round; returns ``r`` and whether a bonus stage was drawn. Books caches and passes."""
        draft, target, slots, rng = self.draft, self.target, self.slots, state.rng
        # The eager round's draws, in its order: the draft's (inside its stage program), then the policy's per stage.
        # The draft's program starts before the host queues the policy's draws and looks the other programs up.
        draft._run_stages(c, d, g, state.sampling, slots, rng)
        for si in range(c, c + g):
            for draw in form.draws:
                draw.fill_(self._draw_view(draw, si), rng)
        verify = self._verify_program(c, g, state.sampling)
        accept = self._accept_program(c, g, form, context)
        verify.run()
        accept.run()
        target._count(verify)
        last_verified = min(c + g, self.num_stages - 1)
        target.pass_log.append(_pass_record(target, c, last_verified - c + 1, verify.graphed))
        r = int(self.leading.item())  # the round's one read
        bonus = r == g and c + g < self.num_stages
        if bonus:
            target.run_drawing(self._bonus_program(c + g), rng)
        last = c + (r if r < g else g - 1 + int(bonus))
        target.cache.set_length(target.model.begin_ends[last][1])
        draft.cache.set_length(draft.model.begin_ends[min(last, c + g - 1)][1])
        return r, bonus

    def _target_steps_ahead(self, rule, c: int, d: int, history: RoundHistory) -> int:
        """How many target steps the rule takes in a row from stage ``c`` (it sees what it would see step by step)."""
        k = 1
        while c + k < self.num_stages:
            history = history.add(0, 0)
            if rule.next_gamma(RoundContext(c=c + k, num_stages=self.num_stages, draft_stages_held=d,
                                            history=history)) != 0:
                break
            k += 1
        return k

    def _target_steps(self, state: SDVARInferenceState, c: int, k: int) -> None:
        """Stages ``c .. c + k - 1`` by the target alone: its stage program (the target-alone call's draws), then the
        tokens and ``f_hat`` into the call's slots."""
        target, own = self.target, self.target.slots
        if target.cache.length != target.model.begin_ends[c][0]:
            raise RuntimeError(f"the target cache holds {target.cache.length} positions, stage {c} starts elsewhere")
        target._load_f_hats(own, self.slots.f_hats(), c, c)
        target._run_stages(c, c, k, state.sampling, own, state.rng)
        rows = slice(own.row_begins[c], own.row_begins[c + k])
        self.tokens[rows].copy_(own.idx[rows])
        self.slots.f_hat[c:c + k].copy_(own.f_hat[c:c + k])

    def _outputs(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """The committed tokens and ``f_hat`` maps, copied out of the static buffers (two copies)."""
        tokens, f_hats = self.tokens.clone(), self.slots.f_hat.clone()
        B, begins = self.batch_size, self.slots.row_begins
        return (tuple(tokens[begins[s]:begins[s + 1]].view(B, -1) for s in range(self.num_stages)),
                tuple(f_hats.unbind(0)))

    # ---- precapture ------------------------------------------------------------------------------
    @torch.no_grad()
    def precapture(self, sampling: SamplingConfig, policy, keys) -> int:
        """Build the programs of rounds ``keys`` (``(c, d, g)``) for ``sampling`` and ``policy`` ahead of a call;
        returns how many were new. Leaves both caches empty (call it between calls)."""
        keys = sorted(keys)
        if not keys or self._why_not(sampling, policy) is not None:
            return 0
        self._check_target_buffers()
        form = device_policy(policy)
        context = self._prepared_context(form, policy)
        self._reserve(keys)
        before = self._count_programs()
        for c, d, g in keys:
            self.draft.stage_program(c, d, g, sampling, self.slots)
            self._verify_program(c, g, sampling)
            self._accept_program(c, g, form, context)
            if c + g < self.num_stages:
                self._bonus_program(c + g)
        self.draft.cache.reset()
        self.target.cache.reset()
        return self._count_programs() - before

    @torch.no_grad()
    def price(self, sampling: SamplingConfig, policy, max_gamma: int, max_loss: float | None = None,
              repeats: int = 3) -> ProgramCost | None:
        """The measured cost of every program an adaptive rule with ``max_gamma`` (and loss bound ``max_loss``)
        chooses between, for ``sampling`` and ``policy`` (``None`` where such calls do not run as device rounds).

        Each program is built (:meth:`precapture`), then replayed ``repeats`` times on whatever its buffers hold
        (a program's work does not depend on the values) and timed (:func:`~sdvar_lib.util.timing.median_ms`:
        CUDA events on a GPU, the host clock elsewhere): a target step of every stage (the stage program target
        steps run), the draft's program of a round ``(c, d, g)``, its verify and acceptance programs with the
        host's read of ``r`` (the round's synchronisation), and the bonus stage's program. A round costs its
        draft program, its verify-and-accept and, where a stage is left after it, the bonus program (drawn only
        when every proposal is accepted; priced always). A draft step of stage ``s`` is the draft program
        ``(s, s, 1)``.

        In two steps: the rounds of gamma 1 first. If each of them, rejected, costs more than
        :data:`STOP_MARGIN` times the loss budget (``max_loss`` of the target steps), no round of the rule can
        ever be taken (a round of more proposals, or from a lagging draft, costs at least as much) and the
        table stops there (:attr:`ProgramCost.covers_max_loss`); otherwise every round of :func:`round_keys`
        is built and timed. Leaves both caches empty (call it between calls).
        """
        if self._why_not(sampling, policy) is not None:
            return None
        S = self.num_stages
        form = device_policy(policy)
        context = self._prepared_context(form, policy)
        device, own = self.target.model.device, self.target.slots
        drafts: dict[RoundKey, float] = {}
        checks: dict[tuple[int, int], float] = {}
        bonus: dict[int, float] = {}

        def ms(fn) -> float:
            return float(median_ms(fn, device, repeats, warmup=0))  # built just now: captures warm up

        def verify_and_accept(c: int, g: int) -> None:
            self._verify_program(c, g, sampling).run()
            self._accept_program(c, g, form, context).run()
            int(self.leading.item())

        def timed_rounds(keys: list[RoundKey]) -> dict[RoundKey, float]:
            self.precapture(sampling, policy, keys)
            for c, d, g in keys:
                if (c, d, g) not in drafts:
                    drafts[(c, d, g)] = ms(self.draft.stage_program(c, d, g, sampling, self.slots).run)
                if (c, g) not in checks:
                    checks[(c, g)] = ms(lambda c=c, g=g: verify_and_accept(c, g))
                if c + g < S and c + g not in bonus:
                    bonus[c + g] = ms(self._bonus_program(c + g).run)
            return {(c, d, g): drafts[(c, d, g)] + checks[(c, g)] + (bonus[c + g] if c + g < S else 0.0)
                    for c, d, g in keys}

        self._reserve(round_keys(range(1, max_gamma + 1), S))  # the buffers of the whole table, before any program
        try:
            steps = tuple(ms(self.target.stage_program(s, s, 1, sampling, own).run) for s in range(S))
            rounds = timed_rounds([(c, c, 1) for c in range(S)])
            catch_up = tuple(drafts[(s, s, 1)] for s in range(S))
            if max_loss is not None and all(rounds[(c, c, 1)] - steps[c] > STOP_MARGIN * max_loss * sum(steps)
                                            for c in range(S)):
                return ProgramCost(step_times=steps, round_times=rounds, catch_up_times=catch_up,
                                   covers_max_loss=max_loss)
            rounds = timed_rounds(round_keys(range(1, max_gamma + 1), S))
            return ProgramCost(step_times=steps, round_times=rounds, catch_up_times=catch_up)
        finally:
            self.draft.cache.reset()
            self.target.cache.reset()

    def _reserve(self, keys) -> None:
        """Grow both runs' buffers for the longest chunks of rounds ``keys`` first: buffers grown later would drop
        the programs built before."""
        S, model = self.num_stages, self.target.model
        self.target._ensure_capacity(max(chunk_span(model, c, min(c + g, S - 1) - c + 1)[1] for c, _, g in keys))
        self.draft._ensure_capacity(max(chunk_span(model, d, c - d + 1)[1] for c, d, _ in keys))
        self._check_target_buffers()

    def _count_programs(self) -> int:
        return len(self.draft._stage_programs) + len(self._verify) + len(self._accept) + len(self._bonus)

    # ---- buffers ---------------------------------------------------------------------------------
    def _check_target_buffers(self) -> None:
        """Drop the verify programs when the target's static buffers were reallocated (they read them)."""
        if self.target.buffers_version != self._target_version:
            self._verify.clear()
            self._target_version = self.target.buffers_version

    def _draw_view(self, draw: Draw, si: int) -> torch.Tensor:
        return self._draw_buffer(draw)[1][si]

    def _draw_buffer(self, draw: Draw) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model, B = self.target.model, self.batch_size
        shapes = tuple(tuple(draw.shape(B, pn * pn, model.V)) for pn in model.patch_nums)
        key = (draw.name, draw.kind, shapes)
        if key not in self._draws:
            sizes = [int(torch.Size(s).numel()) for s in shapes]
            flat = torch.ones(sum(sizes), dtype=torch.float32, device=model.device)
            views, offset = [], 0
            for shape, size in zip(shapes, sizes):
                views.append(flat[offset:offset + size].view(shape))
                offset += size
            self._draws[key] = (flat, views)
        return self._draws[key]

    def _static_context(self, form: DevicePolicy, policy, context) -> torch.Tensor | None:
        """A static copy of the call's policy context that programs read (each call copies its own in), or ``None``."""
        context = form.static_context(context)
        if context is None:
            return None
        static = self._contexts.get(policy)
        if static is None or static.shape != context.shape or static.dtype != context.dtype:
            static = context.detach().clone()
            self._contexts[policy] = static
        else:
            static.copy_(context)
        return static

    # ---- the programs ----------------------------------------------------------------------------
    def _verify_program(self, c: int, g: int, sampling: SamplingConfig) -> _Program:
        target, S = self.target, self.num_stages
        stages = list(range(c, min(c + g, S - 1) + 1))
        use_kernel = target._use_fused_sampler(sampling)
        key = (c, g, sampling.cfg, sampling.top_k, sampling.top_p, use_kernel)
        program = self._verify.get(key)
        if program is None:
            position, l = chunk_span(target.model, c, len(stages))
            target._ensure_capacity(l)
            self._check_target_buffers()
            target._chunk_attention(position, l)  # built outside any graph: a constant the graph reads
            program = target._build(self._verify_fn(stages, sampling, use_kernel), f"verify chunk {c}..{stages[-1]}", position)
            self._verify[key] = program
        return program

    def _verify_fn(self, stages: list[int], sampling: SamplingConfig, use_kernel: bool):
        target, slots, model = self.target, self.slots, self.target.model
        position, l = chunk_span(model, stages[0], len(stages))
        f_hats, S, V = slots.f_hats(), model.num_stages, model.V
        parts, offset = [], 0
        for si in stages:
            parts.append((si, offset, model.patch_nums[si] ** 2, self.p[slots.rows(si)]))
            offset += model.patch_nums[si] ** 2

        def verify() -> None:
            target._x_view(l).copy_(target.chunk_input(stages, f_hats))
            target._step(position, l)
            logits = target._out_view(l)
            for si, off, ls, p in parts:
                if use_kernel:  # the fused kernel's distribution, without its draw
                    target._sampler.probs_into(logits, si, sampling, off, p)
                else:  # what SDVAR.verify computes: split, guidance, stage_probs
                    p.copy_(stage_probs(guided_logits(logits[:, off:off + ls], si, S, sampling.cfg), sampling).view(-1, V))
            target.cache.set_length(position)

        return verify

    def _accept_program(self, c: int, g: int, form: DevicePolicy, context: torch.Tensor | None) -> _Program:
        key = (c, g, form.policy)
        program = self._accept.get(key)
        if program is None:
            for si in range(c, c + g):
                form.check_stage(si)
            program = self.target._build(self._accept_fn(c, g, form, context), f"acceptance of stages {c}..{c + g - 1}",
                                         self.target.cache.length)
            self._accept[key] = program
        return program

    def _accept_fn(self, c: int, g: int, form: DevicePolicy, context: torch.Tensor | None):
        slots, model, B = self.slots, self.target.model, self.batch_size
        quant, V, upsample = model.vae.quantize, model.V, self.target.upsample
        f_hats = slots.f_hats()
        stages = []
        for si in range(c, c + g):
            rows = slots.rows(si)
            stages.append(dict(
                si=si, x=slots.tokens(si), q=slots.probs[rows].view(B, -1, V), p=self.p[rows].view(B, -1, V),
                draws={draw.name: self._draw_view(draw, si) for draw in form.draws},
                accepted=self.accepted[rows].view(B, -1), tokens=self.tokens[rows].view(B, -1),
            ))

        def accept() -> None:
            all_ok = []
            for st in stages:
                accepted, stage_ok, tokens = form.verdict(st["si"], st["x"], st["q"], st["p"], st["draws"], context)
                st["accepted"].copy_(accepted)
                st["tokens"].copy_(tokens)
                self.stage_ok[st["si"]].copy_(stage_ok)
                all_ok.append(stage_ok.all())
            r = torch.stack(all_ok).long().cumprod(0).sum()  # leading stages every sample accepted
            self.leading.copy_(r.view(1))
            corrected = []
            for i, st in enumerate(stages):
                si = st["si"]
                st["tokens"].copy_(torch.where(r > i, st["x"], st["tokens"]))  # proposals before r, stage r's verdict
                self.accepted_tokens[si] = torch.where(r >= i, st["accepted"].sum(), 0)
                base = f_hats[si - 1] if si > 0 else None
                corrected.append(quant.f_hat_after(si, base, quant.idx_to_h(si, st["tokens"]), upsample))
            j = r.clamp(max=g - 1).view(1)
            chosen = torch.stack(corrected).index_select(0, j)
            kept = slots.f_hat[c:c + g].index_select(0, j)
            slots.f_hat.index_copy_(0, j + c, torch.where(r < g, chosen, kept))  # f_hat after the corrected stage

        return accept

    def _bonus_program(self, si: int) -> _Program:
        program = self._bonus.get((si,))
        if program is None:
            program = self.target._build(self._bonus_fn(si), f"bonus stage {si}", self.target.cache.length, draws=True)
            self._bonus[(si,)] = program
        return program

    def _bonus_fn(self, si: int):
        slots, quant, B = self.slots, self.target.model.vae.quantize, self.batch_size
        rows, f_hats, upsample = slots.rows(si), slots.f_hats(), self.target.upsample
        p, noise, tokens, rng = self.p[rows], slots.noise[rows], self.tokens[rows], self.target.noise_rng

        def bonus() -> None:  # run with target.run_drawing
            noise.exponential_(generator=rng)
            torch.argmax(p / noise, dim=-1, out=tokens)  # the draw torch.multinomial(p, 1) makes with this noise
            f_hats[si].copy_(quant.f_hat_after(si, f_hats[si - 1], quant.idx_to_h(si, tokens.view(B, -1)),
                                                 upsample))

        return bonus


def _pass_record(run: FastRun, start: int, num_stages: int, graphed: bool) -> PassRecord:
    return PassRecord(*chunk_span(run.model, start, num_stages), graphed=graphed)
