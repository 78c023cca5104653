"""The SDVARParallelV1Tester harness: passes on correct SDVARs, fails (naming the problem) on broken ones."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sdvar_lib import SDVAR
from sdvar_lib.models.checkpoints import load_bundled
from sdvar_lib.models.sampling import guided_logits
from sdvar_lib.sdvar import AcceptanceResult
from sdvar_lib.sdvar.acceptance import StageVerdict
from test_framework import TEST_NAMES, Bound, SDVARParallelV1Tester, TestResult, Tolerances, format_summary, print_summary


def _by_name(results: list[TestResult]) -> dict[str, TestResult]:
    return {r.test_name: r for r in results}


def _assert_all_passed(results: list[TestResult]) -> None:
    failed = [f"{r.test_name}: {r.message}" for r in results if not r.passed]
    assert not failed, "\n".join(failed)


# ---- a correct SDVAR passes ---------------------------------------------------------------------
def test_run_all_tests_passes_on_the_tiny_pair(sd, capsys):
    results = SDVARParallelV1Tester(sd).run_all_tests(B=2, gamma=2)
    assert [r.test_name for r in results] == list(TEST_NAMES)
    _assert_all_passed(results)
    for r in results:
        assert r.details is not None and r.details_dict(), r.test_name
        assert r.duration_s > 0
    out = capsys.readouterr().out
    n = len(TEST_NAMES)
    assert f"{n} tests, {n} passed, 0 failed" in out
    assert out.count("PASS") == n == 11


@pytest.mark.parametrize(("B", "gamma"), [(1, 1), (3, 5)])
def test_run_all_tests_passes_for_other_batch_and_gamma(sd, B, gamma):
    _assert_all_passed(SDVARParallelV1Tester(sd, seed=4).run_all_tests(B=B, gamma=gamma, print_results=False))


@pytest.mark.parametrize("gamma", [1, 3])
def test_run_all_tests_passes_with_a_self_draft(self_sd, gamma):
    """draft == target accepts everything: exercises the bonus-stage path of every test."""
    tester = SDVARParallelV1Tester(self_sd, seed=1)
    results = _by_name(tester.run_all_tests(B=2, gamma=gamma, print_results=False))
    _assert_all_passed(list(results.values()))
    e2e = results["test_end_to_end"].details
    assert e2e.accepted_tokens == e2e.proposed_tokens > 0
    assert max(results["test_state_update"].details.committed_per_round) == gamma + 1


def test_details_measure_the_numbers(sd):
    tester = SDVARParallelV1Tester(sd)
    verify = tester.test_target_verify_batch(B=2, gamma=2)
    assert verify.passed
    d = verify.details
    assert d.target_passes_per_verify == [1] * sd.num_stages
    assert 0 <= d.max_abs_diff <= d.tolerance == pytest.approx(1e-4)
    cache = tester.test_kv_cache_consistency(B=2, gamma=2).details
    assert cache.committed_stages[-1] == sd.num_stages
    assert cache.target_cache_lengths[-1] == sd.target_model.L
    assert len(cache.target_max_abs_diff_per_layer) == sd.target_model.depth


def test_the_tolerance_is_a_parameter(sd):
    tester = SDVARParallelV1Tester(sd)
    tight = tester.test_target_verify_batch(B=2, gamma=2, tolerance=0.0)
    measured = tester.test_target_verify_batch(B=2, gamma=2).details.max_abs_diff
    assert tight.passed is (measured == 0.0)
    if not tight.passed:
        assert "chunked logits differ from sequential ones" in tight.message


def test_run_all_tests_passes_on_the_bundled_pair():
    pair = load_bundled("cpu")
    _assert_all_passed(SDVARParallelV1Tester(SDVAR(pair.draft, pair.target)).run_all_tests(B=2, gamma=2, print_results=False))


def test_run_all_tests_passes_in_bfloat16_on_the_fast_path(tiny_pair):
    from sdvar_lib.fast import FastConfig, FastRunFactory
    _, draft, target = tiny_pair
    d16, t16 = copy.deepcopy(draft).to(torch.bfloat16), copy.deepcopy(target).to(torch.bfloat16)
    d16.vae_proxy = t16.vae_proxy = target.vae_proxy
    sd16 = SDVAR(d16, t16, run_factory=FastRunFactory(FastConfig(use_cuda_graphs=False)))
    tester = SDVARParallelV1Tester(sd16)
    assert tester.tol.logits.abs > Tolerances.for_dtype(torch.float32).logits.abs
    _assert_all_passed(tester.run_all_tests(B=2, gamma=2, print_results=False))


# ---- broken SDVARs fail the relevant test --------------------------------------------------------
class WrongPositionSDVAR(SDVAR):
    """The verify chunk uses the level/position embeddings of the next position (a classic offset bug)."""

    def verify_query(self, state, proposal):
        query = super().verify_query(state, proposal)
        lvl_pos = self.target_model.lvl_pos()
        b, e = query.position, query.position + query.x_2BlC.shape[1]
        shifted = torch.roll(lvl_pos, shifts=-1, dims=1)
        return replace(query, x_2BlC=query.x_2BlC - lvl_pos[:, b:e] + shifted[:, b:e])


class DoubleFhatSDVAR(SDVAR):
    """Commits a round, then adds the first committed stage's contribution to f_hat a second time."""

    def commit(self, state, proposal, acceptance):
        new = super().commit(state, proposal, acceptance)
        c, quant = state.c, self.vae.quantize
        extra = quant.stage_contribution(c, quant.idx_to_h(c, acceptance.committed[0]))
        f_hats = list(new.f_hats)
        for i in range(c, len(f_hats)):
            f_hats[i] = f_hats[i] + extra
        return replace(new, f_hats=tuple(f_hats))


class OffByOneSplitSDVAR(SDVAR):
    """Slices every stage after the first one position too early."""

    def split_logits(self, state, proposal, target_logits):
        out, offset = [], 0
        for si in self._verify_stages(state, proposal):
            l = self.patch_nums[si] ** 2
            start = max(offset - 1, 0)
            out.append(guided_logits(target_logits[:, start : start + l], si, self.num_stages, state.sampling.cfg))
            offset += l
        return out


class StaleTargetCacheSDVAR(SDVAR):
    """Forgets to roll the target cache back to the committed stages after a rejection."""

    def commit(self, state, proposal, acceptance):
        length = state.target.cache.length
        new = super().commit(state, proposal, acceptance)
        new.target.cache._length = length  # deliberately broken: keep the rejected stages' inputs
        return new


class AcceptAllSDVAR(SDVAR):
    """Accepts every proposal whatever the target says (lossy)."""

    def accept(self, state, draft_tokens, verify):
        verdicts = [
            StageVerdict(accepted_Bl=torch.ones_like(t, dtype=torch.bool),
                         stage_accepted_B=torch.ones(t.shape[0], dtype=torch.bool, device=t.device), tokens_if_last_Bl=t)
            for t in draft_tokens.tokens
        ]
        committed = list(draft_tokens.tokens)
        bonus = len(verify.stages) > draft_tokens.gamma
        if bonus:
            committed.append(verify.p_probs[-1].argmax(dim=-1))
        return AcceptanceResult(verdicts=verdicts, stage_all_accepted=[True] * len(verdicts), first_rejected=None,
                                committed=committed, bonus=bonus)


class RaisingVerifySDVAR(SDVAR):
    def verify(self, state, proposal):
        raise RuntimeError("injected verify failure")


def _broken(cls, tiny_pair) -> SDVARParallelV1Tester:
    _, draft, target = tiny_pair
    return SDVARParallelV1Tester(cls(draft, target))


def test_wrong_position_offsets_fail_the_combined_query_test(tiny_pair):
    tester = _broken(WrongPositionSDVAR, tiny_pair)
    result = tester.test_build_combined_query(B=2, gamma=2)
    assert result.passed is False
    assert "wrong position offset" in result.message and "shifted by +1" in result.message
    verify = tester.test_target_verify_batch(B=2, gamma=2)
    assert verify.passed is False
    assert "chunked logits differ from sequential ones" in verify.message


def test_double_f_hat_update_fails_the_state_update_test(tiny_pair):
    result = _broken(DoubleFhatSDVAR, tiny_pair).test_state_update(B=2, gamma=2)
    assert result.passed is False
    assert "f_hat after stage 0 differs from the one rebuilt from committed tokens" in result.message
    assert "stage 0's contribution is added twice" in result.message


def test_off_by_one_split_fails_the_split_test(tiny_pair):
    result = _broken(OffByOneSplitSDVAR, tiny_pair).test_split_logits_by_stage(B=2, gamma=2)
    assert result.passed is False
    assert "differ from the reference split" in result.message and "off by -1, it is the slice at offset" in result.message


def test_a_stale_target_cache_fails_the_cache_tests(tiny_pair):
    tester = _broken(StaleTargetCacheSDVAR, tiny_pair)
    update = tester.test_state_update(B=2, gamma=2)
    assert update.passed is False
    assert "target cache length" in update.message
    cache = tester.test_kv_cache_consistency(B=2, gamma=2)
    assert cache.passed is False
    assert "target cache" in cache.message


def test_lossy_acceptance_fails_the_greedy_tests(tiny_pair):
    tester = _broken(AcceptAllSDVAR, tiny_pair)
    greedy = tester.test_greedy_identity(B=2, gamma=2)
    assert greedy.passed is False
    assert "not the target's greedy tokens" in greedy.message and "NOT greedy" in greedy.message
    baseline = tester.test_compare_with_baseline(B=2, gamma=2)
    assert baseline.passed is False and "not both greedy" in baseline.message


def test_a_raising_sdvar_fails_with_the_exception_named(tiny_pair, capsys):
    results = _by_name(_broken(RaisingVerifySDVAR, tiny_pair).run_all_tests(B=2, gamma=2))
    assert results["test_target_verify_batch"].passed is False
    assert results["test_target_verify_batch"].message == "raised RuntimeError: injected verify failure"
    assert results["test_target_verify_batch"].details is None
    assert results["test_build_combined_query"].passed  # steps that do not verify are unaffected
    out = capsys.readouterr().out
    assert "FAIL  test_target_verify_batch" in out and "failed: " in out


# ---- bad input, tolerances, summary --------------------------------------------------------------
def test_bad_input_is_rejected(sd):
    with pytest.raises(TypeError, match="needs an sdvar_lib.SDVAR"):
        SDVARParallelV1Tester("not a model")
    with pytest.raises(TypeError, match="tolerances must be a Tolerances"):
        SDVARParallelV1Tester(sd, tolerances=1e-4)
    tester = SDVARParallelV1Tester(sd)
    with pytest.raises(ValueError, match="B must be an int >= 1"):
        tester.run_all_tests(B=0, gamma=2)
    with pytest.raises(TypeError, match="gamma must be an int"):
        tester.test_state_update(B=2, gamma=True)
    with pytest.raises(ValueError, match=r"tolerance \(None: the dtype's default\) must be a finite number >= 0"):
        tester.test_target_verify_batch(B=2, gamma=2, tolerance=-1.0)
    with pytest.raises(ValueError, match=r"every value of entry_nums must be an int in \[0, 4\]"):
        tester.test_compare_with_test3(B=2, entry_nums=[5])
    for cfg in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="cfg must be a finite number >= 0"):
            SDVARParallelV1Tester(sd, cfg=cfg)
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*63\)"):
        SDVARParallelV1Tester(sd, seed=-1)


def test_tolerances_follow_the_dtype_and_device():
    f32 = Tolerances.for_dtype(torch.float32, "cpu")
    bf16 = Tolerances.for_dtype(torch.bfloat16, "cuda")
    assert f32.logits == Bound(1e-4)
    assert bf16.logits.abs > f32.logits.abs
    # float32 caches: a fixed bound; half precision: derived from the measured drift (no fixed slack on top)
    assert f32.cache == Bound(1e-5, 1e-6) and not f32.derived_cache
    assert bf16.derived_cache and bf16.cache == Bound(0.0) and bf16.mantissa_bits == 8
    assert Tolerances.for_dtype(torch.float16, "cuda").mantissa_bits == 11
    assert Tolerances.for_dtype(torch.float32, "cuda").logits.rel > 0
    assert Bound(0.1, 0.5).allowed(torch.tensor([-4.0, 2.0])) == pytest.approx(2.1)
    with pytest.raises(ValueError, match="no default tolerances"):
        Tolerances.for_dtype(torch.int64)
    with pytest.raises(TypeError, match="dtype must be a torch.dtype"):
        Tolerances.for_dtype("float32")
    with pytest.raises(ValueError, match="must be >= 0"):
        Bound(-1.0)


def test_ulp_and_the_derived_bound():
    from test_framework.tolerances import DRIFT_FACTOR, derived_allowed, ulp

    assert ulp(3.03, 8) == 2.0**-6 and ulp(4.0, 8) == 2.0**-5 and ulp(0.494, 8) == 2.0**-9  # bf16: 8 significand bits
    assert ulp(1.0, 11) == 2.0**-10 and ulp(1.0, 24) == 2.0**-23  # fp16, float32
    assert ulp(0.0, 8) == 0.0 and ulp(float("nan"), 8) == 0.0
    assert derived_allowed(3.03, 0.01, 8) == pytest.approx(2.0**-6 + DRIFT_FACTOR * 0.01)
    with pytest.raises(ValueError, match="mantissa_bits must be an int in"):
        Tolerances.for_dtype(torch.float32).__class__(**{**Tolerances.for_dtype(torch.float32).__dict__, "mantissa_bits": 1})


def test_the_filtered_probs_bound_allows_rounding_at_the_cut_only():
    from test_framework.tolerances import filtered_probs_bound

    logits = torch.tensor([[3.0, 2.99, 0.0, -1.0]])
    want = torch.tensor([[1.0, 0.0, 0.0, 0.0]])  # top-k 1 keeps token 0
    swapped = torch.tensor([[0.0, 1.0, 0.0, 0.0]])  # a near tie resolved the other way
    near = filtered_probs_bound(swapped, want, logits, logits_diff=0.01, abs_tol=0.0)
    assert near.far_flips == 0 and near.flipped_mass == 1.0 and near.allowed >= 1.0
    two = torch.tensor([[0.5, 0.0, 0.5, 0.0]])  # token 2 kept although its logit is 3 below the cut
    far = filtered_probs_bound(two, want, logits, logits_diff=0.01, abs_tol=0.0)
    assert far.far_flips == 1
    same = filtered_probs_bound(want, want, logits, logits_diff=0.01, abs_tol=0.02)
    assert same.far_flips == 0 and same.allowed == pytest.approx(0.02 + math.expm1(0.02))


def test_exact_cache_is_the_sequential_cache_in_float32_and_bounds_the_half_precision_drift(tiny_pair):
    """The derived cache bound's two references: in float32 the exact one-pass cache equals the sequential one
    (same numbers, other kernels); in bf16 the sequential cache drifts from it by more than rounding alone."""
    from test_framework.reference import cache_drift, exact_cache, random_tokens, sequential_cache

    _, _, target = tiny_pair
    labels = torch.tensor([1, 2])
    tokens = random_tokens(target, 2, 7)
    S = target.num_stages
    seq, exact = sequential_cache(target, labels, tokens, S), exact_cache(target, labels, tokens, S)
    drift = cache_drift(seq, exact)
    assert max(drift.keys + drift.values) < 1e-5
    assert drift.keys == sorted(drift.keys) and drift.values == sorted(drift.values)  # envelopes over depth
    t16 = copy.deepcopy(target).to(torch.bfloat16)
    t16.vae_proxy = target.vae_proxy
    drift16 = cache_drift(sequential_cache(t16, labels, tokens, S), exact_cache(t16, labels, tokens, S))
    assert 1e-4 < max(drift16.values) < 0.1
    assert exact_cache(t16, labels, tokens, S).keys(0).dtype == torch.float32 and t16.pos_1LC.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_cache_check_catches_a_perturbation_of_a_few_ulps(tiny_pair, dtype, monkeypatch):
    """The derived bound is not wide: values stored 16 units of rounding (2**-p) too large are reported, while
    the unperturbed fast path passes."""
    from sdvar_lib.fast import FastConfig, FastRunFactory
    from sdvar_lib.fast.run import FastRun

    _, draft, target = tiny_pair
    d16, t16 = copy.deepcopy(draft).to(dtype), copy.deepcopy(target).to(dtype)
    d16.vae_proxy = t16.vae_proxy = target.vae_proxy
    tester = SDVARParallelV1Tester(SDVAR(d16, t16, run_factory=FastRunFactory(FastConfig(use_cuda_graphs=False))))
    assert tester.test_kv_cache_consistency(B=2, gamma=2).passed
    factor = 1 + 16 * 2.0 ** -tester.tol.mantissa_bits
    forward = FastRun.forward

    def perturbed(self, x_2BlC, attn_mask=None):
        position = self.cache.length
        logits = forward(self, x_2BlC, attn_mask)
        self.cache.v_NBHLc[:, :, :, position : position + x_2BlC.shape[1]] *= factor
        return logits

    monkeypatch.setattr(FastRun, "forward", perturbed)
    result = tester.test_kv_cache_consistency(B=2, gamma=2)
    assert not result.passed and "cache values of layer 0 differ from a sequential prefill" in result.message
    assert "drift" in result.message and "ulp" in result.message


def test_summary_formatting(capsys):
    results = [
        TestResult("test_a", True, "fine", None, 0.5),
        TestResult("test_b", False, "stage 2 broken", None, 0.25),
    ]
    summary = print_summary(results, show_times=False)
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "SDVARParallelV1Tester: 2 tests, 1 passed, 1 failed"
    assert "FAIL  test_b  stage 2 broken" in out and "failed: test_b" in out
    assert summary.failed == ["test_b"] and not summary.all_passed
    assert "(0.75 s)" in format_summary(results)


# ---- the notebooks that use the harness ----------------------------------------------------------
NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = ["00_setup", "01_draft_generation", "02_parallel_verify", "03_var_baseline_comparison",
             "04_kv_cache_diagnostics"]
REPO_URL = "https://github.com/sdvar-workbench/sdvar-workbench"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_share_one_setup_and_store_their_outputs(name):
    import nbformat

    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    setup = next(c for c in nb.cells if c.cell_type == "code").source
    for line in (f'REPO_URL = "{REPO_URL}"', 'MODELS = "bundled"', "DRAFT_DEPTH, TARGET_DEPTH = 16, 30",
                 '"google.colab" in sys.modules', "pick_device()", "load_pair(MODELS, DRAFT_DEPTH, TARGET_DEPTH",
                 "print(pair.description)"):
        assert line in setup, f"{name}: the setup cell lacks {line!r}"
    colab = f"https://colab.research.google.com/github/{REPO_URL.removeprefix('https://github.com/')}/blob/main/notebooks/"
    assert f"{colab}{name}.ipynb" in nb.cells[0].source
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{name} is stored without executed outputs"
    assert not any(o.output_type == "error" for c in code for o in c.outputs), f"{name} stores an error"


def test_the_notebook_docs_link_every_notebook_with_the_same_repository():
    docs = (NOTEBOOK_DIR.parent / "docs" / "NOTEBOOKS.md").read_text()
    repo = REPO_URL.removeprefix("https://github.com/")
    for name in NOTEBOOKS:
        assert f"https://colab.research.google.com/github/{repo}/blob/main/notebooks/{name}.ipynb" in docs
    assert f'REPO_URL = "{REPO_URL}"' in docs


@pytest.mark.parametrize("num_stages", [4, 7, 10])
def test_the_phi_rule_breaks_ties_as_the_release_does(num_stages):
    """At 10 stages, stage 7 (7/9) lies halfway between the last two ticks: the release's numpy float64
    ``argmin(|linspace(...) - s/(S-1)|)`` picks the last conv. The library and the harness's reference must
    both pick what the release picks (an own tick computation that rounds differently picked the third)."""
    import numpy as np

    from sdvar_lib.models.quant import phi_index, phi_ticks
    from test_framework.reference import reference_phi_index

    release_ticks = np.linspace(1 / 3 / 4, 1 - 1 / 3 / 4, 4)
    release = [int(np.argmin(np.abs(release_ticks - s / (num_stages - 1)))) for s in range(num_stages)]
    assert [phi_index(phi_ticks(4), s / (num_stages - 1)) for s in range(num_stages)] == release
    assert [reference_phi_index(4, s, num_stages) for s in range(num_stages)] == release
    if num_stages == 10:
        assert release == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
