"""End to end, with the bonus stage: exact SDVAR draws the target's joint token law; the lossy policies do not.

Micro pair: vocabulary 4, patch numbers ``(1, 2, 3)`` (3 stages, 14 tokens per image), 3 classes, CFG 1.5,
labels cycling over the classes. The *close* draft is the target with its head weights perturbed by
0.25 of their standard deviation, so whole stages are accepted (and bonus stages drawn) often; a *far*
draft (every weight perturbed by 0.5 std) serves the ``relaxed`` policy, whose distortion is at most
``TV(p, q)`` per token and so hides behind a close draft.

The comparison is :func:`sdvar_lib.eval.lossless.lossless_verdict`: the joint law through its chain
rule. For every token the target's conditional distribution given the sample's earlier stages comes
from one teacher-forced pass; per stage the argmax rate and the surprisal are standardised (exact null
means and variances), and "lossless" is rejected when any of the 6 ``|z|`` exceeds 3.76 (family-wise
level ``ALPHA = 1e-3``, two-sided Bonferroni). Seeds are fixed, so the outcome is deterministic.

Measured over 4 seed offsets (``seed0`` 1000, the one used, and 11000, 21000, 31000; close draft; stage
acceptance = proposed stages accepted by every sample of the call; bonus = drafting rounds that accepted
everything and drew the next stage from ``p``; the last column plants a greedy bonus stage):

========  =====  =========================  ============  ===============  ===================
gamma, B  calls  stage acceptance 0/1/2     bonus / call  exact: max |z|   greedy bonus: |z|
========  =====  =========================  ============  ===============  ===================
1, 1      200    0.80-0.82 / 0.76-0.85 /    0.95-0.97     1.4 - 2.1        12.3 - 13.6
                 0.38-0.45
2, 1      200    0.78-0.83 / 0.79-0.82 /    0.61-0.69     1.0 - 2.9        13.4 - 14.9
                 0.44-0.52
3, 1      200    0.78-0.86 / 0.80-0.86 /    0 (no stage   0.8 - 2.1        (no bonus stage)
                 0.39-0.43                  left)
1, 4      100    0.41-0.49 / 0.37-0.59 /    0.67-0.78     0.6 - 2.6        9.8 - 11.8
                 0.01-0.04
2, 4      100    0.38-0.54 / 0.42-0.56 /    0.16-0.27     1.0 - 1.9        4.9 - 8.8
                 0.01-0.08
3, 4      100    0.41-0.54 / 0.39-0.47 /    0             1.3 - 1.7        (no bonus stage)
                 0.01-0.05
========  =====  =========================  ============  ===============  ===================

Power (taking the smallest measured ``|z|`` as the mean of a unit-variance statistic, bound 3.76): a
greedy bonus stage is caught at gamma 1 and 2, batch 1, with power ``> 1 - 1e-9`` (at batch 4, gamma 1 / 2:
~1 / >= 0.87). The lossy policies at gamma 2, batch 8, 60 calls (480 images): ``top1_match`` 0.25 / 0.6 /
1.0 gave ``|z|`` 6.4 - 7.7 / 7.5 - 8.9 / 9.5 - 11.0, ``relaxed(0.3)`` with the far draft 9.9 - 11.4: power
>= 0.995 for each. Under the null the false-alarm rate of each scenario is <= 1e-3.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pytest
import torch

from sdvar_lib import SDVAR
from sdvar_lib.eval.lossless import TokenEvidence, lossless_verdict, normal_two_sided_bound, token_evidence
from sdvar_lib.models import VAR, VQVAE
from sdvar_lib.models.init import sharpen_random_weights_
from sdvar_lib.models.sampling import SamplingConfig

ALPHA = 1e-3
CFG = 1.5
PATCH_NUMS = (1, 2, 3)
SAMPLING = SamplingConfig(cfg=CFG)


@dataclass
class Outcome:
    evidence: TokenEvidence
    calls: int
    bonus_per_call: float
    stage_acceptance: list[float]

    @property
    def verdict(self):
        return lossless_verdict(self.evidence, ALPHA)

    def describe(self) -> str:
        acc = " / ".join(f"{a:.2f}" for a in self.stage_acceptance)
        return f"{self.calls} calls, stage acceptance {acc}, bonus/call {self.bonus_per_call:.2f}; {self.verdict.describe()}"


def _perturbed(target: VAR, scale: float, head_only: bool) -> VAR:
    draft = copy.deepcopy(target)
    draft.vae_proxy = target.vae_proxy
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in draft.named_parameters():
            if (name.startswith("head.") or not head_only) and p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=gen) * scale * p.std())
    return draft


@pytest.fixture(scope="module")
def micro():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = VQVAE(vocab_size=4, z_channels=4, ch=32, ch_mult=(1,), v_patch_nums=PATCH_NUMS, num_res_blocks=1)
        target = VAR(vae, num_classes=3, depth=1, embed_dim=32, num_heads=1, patch_nums=PATCH_NUMS, attn_l2_norm=True).eval()
    sharpen_random_weights_(target, 0, 2.0)
    return target, _perturbed(target, 0.25, head_only=True), _perturbed(target, 0.5, head_only=False)


def run_calls(sd: SDVAR, gamma: int, B: int, calls: int, policy: str = "exact", seed0: int = 1000, **kw) -> Outcome:
    """``calls`` calls of ``generate_parallel`` (labels cycling over the classes, ``g_seed = seed0 + i``)."""
    S = sd.num_stages
    labels, tokens = [], [[] for _ in range(S)]
    bonus, accepted, proposed = 0, [0] * S, [0] * S
    for i in range(calls):
        label_B = torch.arange(i * B, (i + 1) * B) % sd.target_model.num_classes
        out = sd.generate_parallel(B, label_B, seed0 + i, SamplingConfig(cfg=CFG), gamma, policy, **kw)
        labels.append(label_B)
        for s in range(S):
            tokens[s].append(out.tokens_per_stage[s])
        st = out.stats
        bonus += sum(committed == g + 1 for g, committed in zip(st.gamma_per_round, st.stages_committed_per_round))
        for s in range(S):
            accepted[s] += st.accepted_stages_per_stage[s]
            proposed[s] += st.proposed_stages_per_stage[s]
    evidence = token_evidence(sd.target_model, torch.cat(labels), [torch.cat(t) for t in tokens], SAMPLING)
    return Outcome(evidence, calls, bonus / calls, [a / p if p else float("nan") for a, p in zip(accepted, proposed)])


EXACT_SCENARIOS = [(1, 1, 200), (2, 1, 200), (3, 1, 200), (1, 4, 100), (2, 4, 100), (3, 4, 100)]


@pytest.mark.parametrize(("gamma", "B", "calls"), EXACT_SCENARIOS, ids=[f"gamma{g}-B{b}" for g, b, _ in EXACT_SCENARIOS])
def test_exact_sdvar_draws_the_target_law(micro, gamma, B, calls):
    target, close, _ = micro
    outcome = run_calls(SDVAR(close, target), gamma, B, calls)
    print(f"exact gamma {gamma}, B {B}: {outcome.describe()}")
    assert outcome.verdict.lossless, outcome.describe()
    # the draft is close enough that whole stages are accepted, and the bonus stage drawn, often
    assert min(outcome.stage_acceptance[:2]) >= (0.5 if B == 1 else 0.25), outcome.describe()
    if gamma < len(PATCH_NUMS):
        assert outcome.bonus_per_call >= (0.5 if B == 1 else 0.1), outcome.describe()


LOSSY_CALLS = 60
LOSSY = [
    ("top1_match", dict(threshold=0.25), "close"),
    ("top1_match", dict(threshold=0.6), "close"),
    ("top1_match", dict(threshold=1.0), "close"),
    ("relaxed", dict(budget=0.3), "far"),
]


@pytest.mark.parametrize(("policy", "options", "draft"), LOSSY, ids=[f"{p}-{list(o.values())[0]}" for p, o, _ in LOSSY])
def test_lossy_policies_fail_the_same_test(micro, policy, options, draft):
    target, close, far = micro
    outcome = run_calls(SDVAR(close if draft == "close" else far, target), 2, 8, LOSSY_CALLS, policy, **options)
    print(f"{policy} {options}: {outcome.describe()}")
    assert not outcome.verdict.lossless, outcome.describe()


# ---- the criterion itself ------------------------------------------------------------------------------
def _reference_samples(model: VAR, n: int, seed: int, **sampling) -> tuple[torch.Tensor, list[torch.Tensor]]:
    labels = torch.arange(n) % model.num_classes
    out = model.generate(n, labels, g_seed=seed, sampling=SamplingConfig(cfg=CFG, **sampling))
    return labels, out.tokens_per_stage


def test_the_criterion_is_calibrated_on_the_target_alone(micro):
    """The target's own samples: every z is a draw of (approximately) N(0, 1). Over 40 batches of 200
    images, 240 z values: mean within 0.25 of 0 and standard deviation in [0.8, 1.2] (a miscalibration of
    20 % in scale, or a bias of a quarter standard deviation, would fail this); no batch is rejected at ``ALPHA``
    (false alarms expected in 40 x 1e-3 = 0.04 batches)."""
    target, _, _ = micro
    zs = []
    for seed in range(40):
        labels, tokens = _reference_samples(target, 200, seed)
        verdict = lossless_verdict(token_evidence(target, labels, tokens, SAMPLING), ALPHA)
        assert verdict.lossless, verdict.describe()
        zs += list(verdict.z_argmax + verdict.z_surprisal)
    z = torch.tensor(zs, dtype=torch.float64)
    assert abs(float(z.mean())) < 0.25 and 0.8 < float(z.std()) < 1.2, (float(z.mean()), float(z.std()))


def test_the_criterion_rejects_the_draft_alone_and_tokens_outside_the_support(micro):
    target, close, far = micro
    labels, tokens = _reference_samples(far, 400, 0)
    verdict = lossless_verdict(token_evidence(target, labels, tokens, SAMPLING))
    assert not verdict.lossless and verdict.impossible_tokens == 0
    # with top-k 2, the target's samples are within its support; the far draft's are not always
    truncated = SamplingConfig(cfg=CFG, top_k=2)
    labels, tokens = _reference_samples(target, 200, 1, top_k=2)
    assert lossless_verdict(token_evidence(target, labels, tokens, truncated)).lossless
    labels, tokens = _reference_samples(far, 200, 1, top_k=2)
    verdict = lossless_verdict(token_evidence(target, labels, tokens, truncated))
    assert verdict.impossible_tokens > 0 and not verdict.lossless
    assert "outside the target's support" in verdict.describe()


def test_evidence_adds_up_and_checks_its_input(micro):
    target, _, _ = micro
    labels, tokens = _reference_samples(target, 60, 3)
    whole = token_evidence(target, labels, tokens, SAMPLING)
    halves = [token_evidence(target, labels[i : i + 30], [t[i : i + 30] for t in tokens], SAMPLING) for i in (0, 30)]
    parts = TokenEvidence.empty(3) + halves[0] + halves[1]
    assert parts.tokens_per_stage == whole.tokens_per_stage == (60, 240, 540)
    for a, b in zip(parts.surprisal_excess + parts.argmax_variance, whole.surprisal_excess + whole.argmax_variance):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9)
    assert normal_two_sided_bound(ALPHA / 6) == pytest.approx(3.764, abs=1e-3)
    assert lossless_verdict(whole).bound == pytest.approx(normal_two_sided_bound(ALPHA / 6))
    assert math.isclose(normal_two_sided_bound(0.05), 1.95996, abs_tol=1e-4)
    with pytest.raises(ValueError, match="need the tokens of all 3 stages"):
        token_evidence(target, labels, tokens[:2], SAMPLING)
    with pytest.raises(ValueError, match="stage 1 tokens have shape"):
        token_evidence(target, labels, [tokens[0], tokens[1][:5], tokens[2]], SAMPLING)
    with pytest.raises(TypeError, match="sampling must be a SamplingConfig"):
        token_evidence(target, labels, tokens, {"cfg": CFG})
    with pytest.raises(ValueError, match="cannot add evidence of 2 stages"):
        whole + TokenEvidence.empty(2)
    with pytest.raises(ValueError, match="no tokens"):
        lossless_verdict(TokenEvidence.empty(3))
    with pytest.raises(ValueError, match="alpha"):
        normal_two_sided_bound(0.0)
