"""Reliability of the library's public entry points: every mistake named up front, nothing silently wrong.

The table-driven part tries bad inputs against every public entry point and asserts the exception
type and that the message names the argument (and, where there is one, what is allowed). The rest
covers the silent wrong results the reliability audit found: seed wrap-around, training mode,
another thread's output, double-counted statistics, non-finite weights, clamped widget values,
a fallback for an invalid depth, and a default that always failed.
"""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass

import pytest
import torch

from sdvar_lib import SDVAR, Method, SamplingConfig, get_method, load_pair, pick_device
from sdvar_lib.compat import SDVAR as ResearchSDVAR
from sdvar_lib.models import (
    CheckpointError,
    NonFiniteDistributionError,
    build_tiny,
    load_bundled,
    load_state_dict_checked,
)
from sdvar_lib.models.checkpoints import BUNDLED_DIR
from sdvar_lib.sdvar import AdaptiveGamma, DraftProposal, baseline, code_handoff, draft_alone, generate_test3, make_policy
from sdvar_lib.util.checks import SEED_LIMIT
from sdvar_lib.viz import make_interactive, run_and_describe


@dataclass(frozen=True)
class Case:
    """One bad call: ``call(env)`` must raise ``error`` with every string of ``names`` in its message."""

    label: str
    call: object
    error: type
    names: tuple[str, ...]


def _sd(env):
    return env["sd"]


CASES = [
    # the reference sampler
    Case("generate B=0", lambda e: e["target"].generate(0), ValueError, ("B", ">= 1")),
    Case("generate B='2'", lambda e: e["target"].generate("2"), TypeError, ("B",)),
    Case("generate B=10**9", lambda e: e["target"].generate(10**9, 1), ValueError, ("B=1000000000", "GiB")),
    Case("generate seed -1", lambda e: e["target"].generate(1, 1, g_seed=-1), ValueError, ("g_seed", "2**63")),
    Case("generate seed 2**64-1", lambda e: e["target"].generate(1, 1, g_seed=2**64 - 1), ValueError, ("g_seed", "2**63")),
    Case("generate seed 2**63", lambda e: e["target"].generate(1, 1, g_seed=2**63), ValueError, ("g_seed",)),
    Case("generate seed -2**63", lambda e: e["target"].generate(1, 1, g_seed=-(2**63)), ValueError, ("g_seed",)),
    Case("generate seed 2**64", lambda e: e["target"].generate(1, 1, g_seed=2**64), ValueError, ("g_seed",)),
    Case("generate seed 1.5", lambda e: e["target"].generate(1, 1, g_seed=1.5), TypeError, ("g_seed",)),
    Case("reference cfg inf", lambda e: e["target"].autoregressive_infer_cfg(1, 1, cfg=float("inf")), ValueError,
         ("cfg", "finite")),
    Case("reference cfg nan", lambda e: e["target"].autoregressive_infer_cfg(1, 1, cfg=float("nan")), ValueError,
         ("cfg", "finite")),
    Case("reference cfg str", lambda e: e["target"].autoregressive_infer_cfg(1, 1, cfg="1.5"), TypeError, ("cfg",)),
    Case("reference top_k -1", lambda e: e["target"].autoregressive_infer_cfg(1, 1, top_k=-1), ValueError, ("top_k", ">= 0")),
    Case("generate top_k > V", lambda e: e["target"].generate(1, 1, sampling=SamplingConfig(top_k=10**6)), ValueError,
         ("top_k", "vocabulary")),
    Case("reference top_p 1.2", lambda e: e["target"].autoregressive_infer_cfg(1, 1, top_p=1.2), ValueError,
         ("top_p", "[0, 1]")),
    Case("reference top_p nan", lambda e: e["target"].autoregressive_infer_cfg(1, 1, top_p=float("nan")), ValueError,
         ("top_p",)),
    Case("reference more_smooth 1", lambda e: e["target"].autoregressive_infer_cfg(1, 1, more_smooth=1), TypeError,
         ("more_smooth",)),
    Case("generate sampling dict", lambda e: e["target"].generate(1, 1, sampling={"cfg": 1.0}), TypeError,
         ("sampling", "SamplingConfig")),
    Case("generate label 10", lambda e: e["target"].generate(1, 10), ValueError, ("label_B", "[0, 10)")),
    Case("generate labels float", lambda e: e["target"].generate(2, torch.tensor([1.0, 2.0])), TypeError, ("label_B",)),
    Case("generate labels count", lambda e: e["target"].generate(2, [1]), ValueError, ("label_B", "B=2")),
    Case("generate label str", lambda e: e["target"].generate(1, "3"), TypeError, ("label_B",)),
    Case("generate cache type", lambda e: e["target"].generate(1, 1, cache="c"), TypeError, ("cache",)),
    # SDVAR whole calls
    Case("parallel gamma 0", lambda e: _sd(e).generate_parallel(1, 1, gamma=0), ValueError, ("gamma", ">= 1")),
    Case("parallel gamma str", lambda e: _sd(e).generate_parallel(1, 1, gamma="fast"), ValueError, ("gamma", "'adaptive'")),
    Case("parallel gamma bool", lambda e: _sd(e).generate_parallel(1, 1, gamma=True), TypeError, ("gamma",)),
    Case("parallel policy", lambda e: _sd(e).generate_parallel(1, 1, policy="greedy"), ValueError, ("policy", "exact")),
    Case("parallel policy type", lambda e: _sd(e).generate_parallel(1, 1, policy=3), TypeError, ("policy",)),
    Case("parallel exact option", lambda e: _sd(e).generate_parallel(1, 1, threshold=0.5), ValueError, ("exact", "threshold")),
    Case("parallel relaxed option", lambda e: _sd(e).generate_parallel(1, 1, policy="relaxed", budgett=0.1), ValueError,
         ("relaxed", "budgett")),
    Case("parallel relaxed budget", lambda e: _sd(e).generate_parallel(1, 1, policy="relaxed", budget=1.5), ValueError,
         ("budget", "[0, 1]")),
    Case("parallel top1 threshold", lambda e: _sd(e).generate_parallel(1, 1, policy="top1_match", threshold=float("nan")),
         ValueError, ("threshold",)),
    Case("parallel verbose", lambda e: _sd(e).generate_parallel(1, 1, verbose="yes"), TypeError, ("verbose",)),
    Case("parallel seed", lambda e: _sd(e).generate_parallel(1, 1, g_seed=-1), ValueError, ("g_seed",)),
    Case("parallel top_k", lambda e: _sd(e).generate_parallel(1, 1, sampling=SamplingConfig(top_k=10**6)), ValueError,
         ("top_k",)),
    Case("parallel sampling", lambda e: _sd(e).generate_parallel(1, 1, sampling=1.5), TypeError, ("sampling",)),
    Case("parallel B huge", lambda e: _sd(e).generate_parallel(10**9, 1), ValueError, ("B=1000000000",)),
    Case("parallel more_smooth", lambda e: _sd(e).generate_parallel(1, 1, sampling=SamplingConfig(more_smooth=True)),
         ValueError, ("more_smooth",)),
    Case("test3 entry 99", lambda e: generate_test3(_sd(e), 1, 1, entry_num=99), ValueError, ("entry_num", "[0, 4]")),
    Case("test3 entry str", lambda e: generate_test3(_sd(e), 1, 1, entry_num="2"), TypeError, ("entry_num",)),
    Case("test3 sd_mask", lambda e: generate_test3(_sd(e), 1, 1, entry_num=2, sd_mask=7), ValueError, ("sd_mask",)),
    Case("test3 sd_mask bool", lambda e: generate_test3(_sd(e), 1, 1, entry_num=2, sd_mask=True), TypeError, ("sd_mask",)),
    Case("test3 not an SDVAR", lambda e: generate_test3(e["target"], 1, 1), TypeError, ("sd", "SDVAR")),
    Case("code entry -1", lambda e: code_handoff(_sd(e), 1, 1, entry_num=-1), ValueError, ("entry_num",)),
    Case("baseline top_k", lambda e: baseline(_sd(e), 1, 1, sampling=SamplingConfig(top_k=10**6)), ValueError, ("top_k",)),
    Case("draft_alone seed", lambda e: draft_alone(_sd(e), 1, 1, g_seed="0"), TypeError, ("g_seed",)),
    Case("SDVAR models", lambda e: SDVAR("draft", e["target"]), TypeError, ("SDVAR", "VAR")),
    Case("SDVAR run_factory", lambda e: SDVAR(e["draft"], e["target"], run_factory=3), TypeError, ("run_factory",)),
    # the round API
    Case("prepare training", lambda e: _prepare_in_training(e), ValueError, ("training mode", ".eval()")),
    Case("draft gamma 0", lambda e: _sd(e).draft(_sd(e).prepare(1, 1), 0), ValueError, ("gamma",)),
    Case("alias B mismatch", lambda e: e["research"].draft_generate_batch(e["research"].prepare(1, 1), 2), ValueError,
         ("B=2",)),
    Case("stale state", lambda e: _stale_state_step(e), ValueError, ("stale", "newest")),
    # gamma rules and policies
    Case("adaptive max_gamma", lambda e: AdaptiveGamma(max_gamma=0), ValueError, ("max_gamma",)),
    Case("adaptive priors", lambda e: AdaptiveGamma(prior_acceptance=1.5), ValueError, ("prior_acceptance",)),
    Case("make_policy", lambda e: make_policy("relaxed", neighbours=0), ValueError, ("neighbours", ">= 1")),
    Case("sampling config", lambda e: SamplingConfig(top_k=1.5), TypeError, ("top_k",)),
    # the registry
    Case("get_method", lambda e: get_method("exact"), ValueError, ("unknown method 'exact'", "exact_g<N>")),
    Case("Method decoder", lambda e: Method("m", "beam"), ValueError, ("decoder", "target")),
    Case("Method run B", lambda e: get_method("target").run(_sd(e), 0), ValueError, ("B",)),
    # loading
    Case("load_pair choice", lambda e: load_pair("huge"), ValueError, ("model choice", "bundled")),
    Case("load_pair depth 17", lambda e: load_pair("official", draft_depth=17), ValueError, ("draft_depth", "16, 20, 24, 30")),
    Case("load_pair depth no fallback", lambda e: load_pair("official", target_depth=31, fallback=False), ValueError,
         ("target_depth", "16, 20, 24, 30")),
    Case("load_pair depth str", lambda e: load_pair("official", draft_depth="16"), TypeError, ("draft_depth",)),
    Case("load_pair fallback", lambda e: load_pair("official", fallback="no"), TypeError, ("fallback",)),
    Case("pick_device name", lambda e: pick_device("gpu0"), ValueError, ("device", "cpu")),
    Case("pick_device type", lambda e: pick_device(3), TypeError, ("device",)),
    # widgets
    Case("widget gamma > max", lambda e: make_interactive(_sd(e), labels=[1], gamma=99), ValueError, ("gamma", "max_gamma")),
    Case("widget cfg > max", lambda e: make_interactive(_sd(e), labels=[1], cfg=50.0), ValueError, ("cfg", "max_cfg")),
    Case("widget max_gamma 0", lambda e: make_interactive(_sd(e), labels=[1], max_gamma=0), ValueError, ("max_gamma",)),
    Case("widget max_cfg", lambda e: make_interactive(_sd(e), labels=[1], max_cfg=float("nan")), ValueError, ("max_cfg",)),
    Case("widget seed", lambda e: run_and_describe(_sd(e), seed=2**64), ValueError, ("seed",)),
]


def _stale_state_step(env):
    sd = _sd(env)
    state = sd.prepare(1, 1, g_seed=0, gamma=1)
    sd.target_step(state)  # a newer state took the caches over
    return sd.draft(state)


def _prepare_in_training(env):
    target = env["target"]
    target.train()
    try:
        return _sd(env).prepare(1, 1)
    finally:
        target.eval()


@pytest.fixture(scope="module")
def env(tiny_pair):
    _, draft, target = tiny_pair
    return {"draft": draft, "target": target, "sd": SDVAR(draft, target), "research": ResearchSDVAR(draft, target)}


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_bad_input_is_named(env, case):
    with pytest.raises(case.error) as info:
        case.call(env)
    message = str(info.value)
    for name in case.names:
        assert name in message, f"{case.label}: {name!r} not in {message!r}"


@pytest.mark.no_cuda
def test_no_cuda_device_is_named():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available here; use device='cpu'"):
        pick_device("cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_pair("bundled", device="cuda")


# ---- silently wrong results, now refused or right -----------------------------------------------
def test_seeds_near_the_64_bit_edges_do_not_wrap(env):
    target = env["target"]
    a = target.generate(1, 1, g_seed=0).images_B3HW
    b = target.generate(1, 1, g_seed=SEED_LIMIT - 1).images_B3HW  # the largest seed allowed
    assert not torch.equal(a, b)


def test_models_left_in_training_mode_give_the_eval_images_and_keep_their_mode():
    pair = load_pair("bundled")  # its target has dropout (drop_rate 0.1): training mode would change the samples
    draft, target = pair.draft, pair.target
    sd = SDVAR(draft, target)
    want = sd.generate_parallel(2, [1, 2], g_seed=3, gamma=2)
    want_ref = target.generate(2, [1, 2], g_seed=3)
    draft.train()
    target.train()
    try:
        got = sd.generate_parallel(2, [1, 2], g_seed=3, gamma=2)
        got_ref = target.generate(2, [1, 2], g_seed=3)
        got_base = baseline(sd, 2, [1, 2], g_seed=3)
        assert draft.training and target.training and all(m.training for m in target.blocks)
    finally:
        draft.eval()
        target.eval()
    assert torch.equal(got.images_B3HW, want.images_B3HW)
    assert torch.equal(got_ref.images_B3HW, want_ref.images_B3HW)
    assert torch.equal(got_base.images_B3HW, want_ref.images_B3HW)


def test_last_output_belongs_to_the_calling_thread(env):
    sd = ResearchSDVAR(env["draft"], env["target"])
    seen: dict[str, list[int]] = {}
    barrier = threading.Barrier(2)

    def worker(name: str, label: int) -> None:
        barrier.wait()
        for _ in range(3):
            sd.sdvar_autoregressive_infer_cfg_parallel_v1(1, label, g_seed=label, gamma=1)
            seen.setdefault(name, []).append(int(sd.last_output.label_B[0]))

    threads = [threading.Thread(target=worker, args=(n, lab)) for n, lab in (("a", 2), ("b", 7))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": [2, 2, 2], "b": [7, 7, 7]}
    assert sd.last_output is None  # this thread made no call on this SDVAR


def test_a_commit_counts_its_round_once_and_leaves_the_old_state_stale(env):
    sd = env["sd"]
    state = sd.prepare(2, [1, 2], g_seed=0, gamma=2)
    proposal = sd.draft(state)
    verify = sd.verify(state, proposal)
    acceptance = sd.accept(state, proposal, verify)
    new = sd.commit(state, proposal, acceptance)
    assert new.stats.rounds == 1 and new.stats.target_passes == 1 and new.stats.draft_passes == proposal.gamma
    assert sum(new.stats.proposed_stages_per_stage) == len(acceptance.verdicts)
    assert state.stats.rounds == 0 and state.stats.target_passes == 0 and state.stats.accepted_tokens_S is None
    with pytest.raises(ValueError, match="stale"):  # the caches now hold the new state's stages
        env["research"].update_state_with_accepted_tokens(state, proposal, acceptance)
    new.check_current()


def test_rounds_from_an_older_state_are_refused_before_any_model_call(env, monkeypatch):
    """Two states committed from one share their KV caches: the older one is refused, nothing runs, nothing changes."""
    sd = env["sd"]
    state = sd.prepare(2, [1, 2], g_seed=0, gamma=1)
    first = sd.run_round(state).state
    second = sd.run_round(first).state  # the caches now hold second's stages
    lengths = (second.target.cache.length, second.draft.cache.length)
    passes = []
    monkeypatch.setattr(type(sd.target_model), "forward_cached", lambda *a, **k: passes.append(1))
    for stale in (state, first):
        for step in (lambda s: sd.run_round(s), lambda s: list(sd.iter_rounds(s)), sd.draft, sd.target_step):
            with pytest.raises(ValueError, match="stale.*newest state"):
                step(stale)
        with pytest.raises(ValueError, match="stale"):
            sd.verify(stale, DraftProposal(start=stale.c, tokens=[], q_probs=[], f_hats=[], draft_cache_before=0))
    assert passes == [] and (second.target.cache.length, second.draft.cache.length) == lengths
    monkeypatch.undo()
    assert sd.run_round(second).state.c > second.c  # the newest state runs on


def test_a_new_call_on_reused_runs_makes_the_old_state_stale(tiny_pair):
    """The fast path reuses its runs between calls: a state of an earlier call is refused once a new call began."""
    from sdvar_lib.fast import FastConfig, FastRunFactory

    _, draft, target = tiny_pair
    sd = SDVAR(draft, target, run_factory=FastRunFactory(FastConfig(use_cuda_graphs=False)))
    old = sd.prepare(1, [1], g_seed=0, gamma=1)
    baseline(sd, 1, [2], g_seed=1)  # takes the old state's target run over (no SDVAR state of its own)
    with pytest.raises(ValueError, match="stale"):
        sd.run_round(old)
    sd.generate_parallel(1, [2], g_seed=1, gamma=1)
    with pytest.raises(ValueError, match="stale"):
        sd.run_round(old)


def test_non_finite_weights_are_refused_with_the_key(tmp_path):
    vae, var = build_tiny(seed=0)
    bad = {k: v.clone() for k, v in var.state_dict().items()}
    bad["blocks.1.ffn.fc2.weight"][0, 0] = float("nan")
    fresh = build_tiny(seed=0, vae=vae)[1]
    with pytest.raises(CheckpointError, match=r"blocks\.1\.ffn\.fc2\.weight.*non-finite"):
        load_state_dict_checked(fresh, bad, "var.pth")
    assert torch.equal(fresh.blocks[1].ffn.fc2.weight, var.blocks[1].ffn.fc2.weight)  # nothing was loaded
    bad_vae = {k: v.clone() for k, v in vae.state_dict().items()}
    key = next(k for k in bad_vae if k.startswith("decoder.") and k.endswith("weight"))
    bad_vae[key].view(-1)[0] = float("inf")
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_state_dict_checked(build_tiny(seed=0)[0], bad_vae, "vae.pth")


def test_non_finite_logits_are_named(env):
    _, target = build_tiny(seed=0)
    with torch.no_grad():
        target.head.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteDistributionError, match="non-finite logits"):
        target.generate(1, 1, g_seed=0)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda p: p.write_text("{ not json"), r"config\.json is not valid JSON"),
        (lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "draft"})),
         r"config\.json has no 'draft' entry"),
        (lambda p: p.write_text(json.dumps(dict(json.loads(p.read_text()), target={"depth": -1}))),
         r"config\.json 'target': cannot build a VAR"),
        (lambda p: p.unlink(), r"config\.json is missing"),
    ],
)
def test_a_broken_bundle_config_names_the_file(tmp_path, edit, match):
    folder = tmp_path / "bundle"
    shutil.copytree(BUNDLED_DIR, folder)
    edit(folder / "config.json")
    with pytest.raises(CheckpointError, match=match):
        load_bundled(folder=folder)


def test_the_research_test3_default_runs_on_the_bundled_pair():
    pair = load_pair("bundled")
    sd = ResearchSDVAR(pair.draft, pair.target)
    images = sd.sdvar_autoregressive_infer_cfg_sd_test3(1, 3, g_seed=0)  # default entry_num: every stage by the draft
    assert images.shape[0] == 1 and sd.last_output.stats.draft_passes == pair.target.num_stages


def test_an_invalid_depth_never_falls_back():
    with pytest.raises(ValueError, match="draft_depth"):
        load_pair("official", draft_depth=17, fallback=True, download=False)


def test_a_fallback_for_missing_files_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("SDVAR_CKPT_DIR", str(tmp_path))
    pair = load_pair("official", download=False)
    assert pair.fallback_reason is not None and "checkpoints unavailable" in pair.fallback_reason
    assert "FALLBACK" in pair.description
    with pytest.raises(FileNotFoundError):
        load_pair("official", download=False, fallback=False)


def test_the_table_is_large(env):
    assert len(CASES) >= 60
