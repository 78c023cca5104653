"""The `exact` policy reproduces the target's distribution; a lossy policy does not.

A micro VAR (vocabulary 8, patch numbers (1, 2): 5 tokens per image) is sampled many times. The
target's exact probabilities of (stage-0 token) and of (stage-0 token, first and last stage-1
tokens) are computed from the model, and Pearson chi-square tests compare them with the empirical
counts. Cells with an expected count below 5 are merged. Each test runs at level alpha = 5e-4
(two tests: family-wise false-alarm rate <= 1e-3 by Bonferroni); seeds are fixed, so the outcome
is deterministic.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch

from sdvar_lib import SDVAR, VAR, VQVAE, eager_run
from sdvar_lib.models.init import sharpen_random_weights_ as _sharpen_
from sdvar_lib.models.sampling import guided_logits

ALPHA = 5e-4
LABEL = 1
CFG = 1.5
N_CALLS, BATCH = 2000, 8


@dataclass
class ChiSquare:
    statistic: float
    dof: int
    p_value: float


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> ChiSquare:
    """Pearson chi-square of counts against probabilities, merging cells with expected count < 5."""
    n = counts.sum()
    expected = probs.flatten().double() * n
    observed = counts.flatten().double()
    order = torch.argsort(expected)
    small = expected[order] < 5
    obs_cells = list(observed[order][~small])
    exp_cells = list(expected[order][~small])
    if small.any():
        obs_cells.append(observed[order][small].sum())
        exp_cells.append(expected[order][small].sum())
    obs_t, exp_t = torch.stack(obs_cells), torch.stack(exp_cells)
    stat = float(((obs_t - exp_t) ** 2 / exp_t).sum())
    dof = len(obs_cells) - 1
    p = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64)))
    return ChiSquare(stat, dof, p)


@pytest.fixture(scope="module")
def micro_pair():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = VQVAE(vocab_size=8, z_channels=4, ch=32, ch_mult=(1,), v_patch_nums=(1, 2), num_res_blocks=1)
        target = VAR(vae, num_classes=3, depth=1, embed_dim=32, num_heads=1, patch_nums=(1, 2), attn_l2_norm=True).eval()
    _sharpen_(target, 0, 2.0)
    draft = copy.deepcopy(target)
    draft.vae_proxy = target.vae_proxy
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in draft.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.5 * p.std())
    return draft, target


@torch.no_grad()
def target_probabilities(target: VAR) -> tuple[torch.Tensor, torch.Tensor]:
    """``P(x0)`` ``(V,)`` and ``P(x1 | x0)`` ``(V, 4, V)`` of the target's sampling distribution."""
    V = target.V
    sd = SDVAR(target, target)
    labels = torch.full((V,), LABEL)
    run = eager_run(target, labels)
    x0_V1 = torch.arange(V).unsqueeze(1)
    f_hats = sd.f_hats_after([], 0, [x0_V1])
    logits = run.forward(run.chunk_input([0, 1], f_hats))
    p0 = guided_logits(logits[:, :1], 0, 2, CFG).softmax(-1)[0, 0]
    p1 = guided_logits(logits[:, 1:], 1, 2, CFG).softmax(-1)
    return p0, p1


def sample_counts(sd: SDVAR, policy: str, **policy_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    V = sd.target_model.V
    c0 = torch.zeros(V)
    c_joint = torch.zeros(V, V, V)
    for seed in range(N_CALLS):
        out = sd.generate_parallel(BATCH, LABEL, g_seed=seed, cfg=CFG, gamma=1, policy=policy, **policy_kwargs)
        x0 = out.tokens_per_stage[0][:, 0]
        x1 = out.tokens_per_stage[1]
        c0 += torch.bincount(x0, minlength=V)
        c_joint.view(-1).add_(torch.bincount(x0 * V * V + x1[:, 0] * V + x1[:, 3], minlength=V**3).float())
    return c0, c_joint


def _tests(sd: SDVAR, policy: str, **kw) -> tuple[ChiSquare, ChiSquare, float]:
    p0, p1 = target_probabilities(sd.target_model)
    joint = p0[:, None, None] * p1[:, 0, :, None] * p1[:, 3, None, :]
    c0, c_joint = sample_counts(sd, policy, **kw)
    acc = sd.last_output.stats.token_acceptance
    return chi_square(c0, p0), chi_square(c_joint, joint), acc


def test_exact_policy_matches_target_distribution(micro_pair):
    draft, target = micro_pair
    marginal, joint, acceptance = _tests(SDVAR(draft, target), "exact")
    assert acceptance is not None and 0.2 < acceptance < 0.95, "the draft should be neither useless nor perfect"
    assert marginal.p_value > ALPHA, marginal
    assert joint.p_value > ALPHA, joint


def test_top1_match_fails_the_same_test(micro_pair):
    draft, target = micro_pair
    marginal, joint, _ = _tests(SDVAR(draft, target), "top1_match", threshold=0.5)
    assert min(marginal.p_value, joint.p_value) <= ALPHA, (marginal, joint)


def test_chi_square_detects_a_wrong_distribution():
    probs = torch.tensor([0.5, 0.3, 0.2])
    assert chi_square(torch.tensor([500.0, 300.0, 200.0]), probs).p_value > 0.99
    assert chi_square(torch.tensor([600.0, 250.0, 150.0]), probs).p_value < 1e-6
