"""Bad input at every public entry point of the library, one table row each.

A row is the entry point, the bad call, the exception type it must raise and the strings its message
must hold (the argument's name, and where there is one, what is allowed). Every row also asserts
that nothing ran or was written before the refusal: no model pass, no VQVAE decode, no file in the
working folder. Rows of the round API build what they misuse in a ``setup`` (which may run passes)
before the counting starts.

The classes of mistakes (found by trying every entry point as a hostile tester would): wrong types
(a string, a float, a bool, bytes, a base class that implements nothing), numbers that make no sense
(negative, NaN, inf, beyond 64 bits, beyond what float32 holds), empty or mis-shaped sequences,
rules and tables that cannot serve the pair, and objects of the round API that do not belong
together (another pair, another state, another proposal, a step twice or out of order).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
import torch

from sdvar_lib import SDVAR, Method, ModelPair, SamplingConfig, get_method, load_pair, make_pair_sdvar
from sdvar_lib.compat import SDVAR as ForkSDVAR
from sdvar_lib.models import CFG_LIMIT, VAR, VQVAE, build_tiny
from sdvar_lib.models.presets import TINY_CONFIG
from sdvar_lib.samples.sampler import BatchSampler
from sdvar_lib.sdvar import (
    AcceptancePolicy,
    AcceptanceResult,
    AdaptiveGamma,
    DraftProposal,
    ExactPolicy,
    FixedGamma,
    GammaRule,
    GammaSchedule,
    RelaxedPolicy,
    TableCost,
    Top1MatchPolicy,
    UniformCost,
    VerifyResult,
    baseline,
    check_compatible,
    code_handoff,
    draft_alone,
    generate_test3,
    make_gamma_rule,
    make_policy,
    methods_for,
    pool_stats,
    prefill_mask,
    register,
)
from sdvar_lib.sdvar.gamma import CostModel
from sdvar_lib.sdvar.handoff import decode_handoff
from sdvar_lib.sdvar.registry import stage_chunks
from sdvar_lib.viz import run_and_describe, run_comparison
from test_framework import SDVARParallelV1Tester, greedy_agreement

INF, NAN = float("inf"), float("nan")


@dataclass(frozen=True)
class Row:
    """``call(env, ctx)`` must raise ``error`` whose message holds every string of ``names``."""

    entry: str
    label: str
    call: Callable[[dict, object], object]
    error: type
    names: tuple[str, ...]
    setup: Callable[[dict], object] | None = None
    """Builds what the call misuses (it may run model passes; the counting starts after it)."""


def _sd(env) -> SDVAR:
    return env["sd"]


def gp(**kwargs):
    """A ``generate_parallel`` call with good arguments but ``kwargs``."""
    args = dict(B=2, label_B=[1, 2], g_seed=0)
    args.update(kwargs)
    return lambda env, ctx: _sd(env).generate_parallel(**args)


def prep(**kwargs):
    args = dict(B=2, label_B=[1, 2], g_seed=0)
    args.update(kwargs)
    return lambda env, ctx: _sd(env).prepare(**args)


# ---- round API set-ups: each returns what the call misuses ---------------------------------------------
def _state(env, B: int = 1, gamma=1, sd_key: str = "sd"):
    return env[sd_key].prepare(B, [1] * B, g_seed=0, gamma=gamma)


def _proposed(env, **kw):
    state = _state(env, **kw)
    return state, _sd(env).draft(state)


def _verified(env, **kw):
    state, proposal = _proposed(env, **kw)
    return state, proposal, _sd(env).verify(state, proposal)


def _accepted(env, **kw):
    state, proposal, verify = _verified(env, **kw)
    return state, proposal, verify, _sd(env).accept(state, proposal, verify)


def _committed(env):
    """After one round: (old state, its proposal, verify, acceptance, new state)."""
    state, proposal, verify, acc = _accepted(env)
    return state, proposal, verify, acc, _sd(env).commit(state, proposal, acc)


def _two_calls(env):
    """Two calls that reached the verify step, the second with gamma 2: (state, proposal, verify) each."""
    return _verified(env), _verified(env, gamma=2)


def _hand_acceptance(state, proposal, n: int = 1) -> AcceptanceResult:
    """An acceptance made by hand (no links) that commits ``n`` stages of ``proposal``."""
    committed = [torch.zeros(state.B, p * p, dtype=torch.long) for p in (1, 2, 3, 4)[state.c: state.c + n]]
    return AcceptanceResult(verdicts=[], stage_all_accepted=[], first_rejected=None, committed=committed, bonus=False)


class _Returns(GammaRule):
    """A custom rule returning a fixed value (which may be anything)."""

    def __init__(self, value):
        self.value = value

    def next_gamma(self, ctx):
        return self.value


def _full_table(S: int = 4) -> dict:
    return {k: 1.0 for k in stage_chunks(S, S)}


ROWS = [
    # ---- load_pair ------------------------------------------------------------------------------------
    Row("load_pair", "choice None", lambda e, c: load_pair(None), ValueError, ("model choice", "bundled")),
    Row("load_pair", "another spelling", lambda e, c: load_pair("official-random"), ValueError, ("random-official",)),
    Row("load_pair", "depth 17", lambda e, c: load_pair("random-official", draft_depth=17), ValueError,
        ("draft_depth", "16, 20, 24, 30")),
    Row("load_pair", "depth str", lambda e, c: load_pair("official", target_depth="30"), TypeError, ("target_depth",)),
    Row("load_pair", "download str", lambda e, c: load_pair("official", download="yes"), TypeError, ("download",)),
    Row("load_pair", "fallback str", lambda e, c: load_pair("official", fallback="no"), TypeError, ("fallback",)),
    Row("load_pair", "ckpt_dir int", lambda e, c: load_pair("official", ckpt_dir=5), TypeError, ("ckpt_dir", "path")),
    Row("load_pair", "ckpt_dir empty", lambda e, c: load_pair("official", ckpt_dir=""), ValueError, ("ckpt_dir",)),
    Row("load_pair", "device int", lambda e, c: load_pair("bundled", device=3), TypeError, ("device",)),
    Row("load_pair", "device name", lambda e, c: load_pair("bundled", device="gpu0"), ValueError, ("device", "cpu")),
    # ---- make_pair_sdvar ------------------------------------------------------------------------------
    Row("make_pair_sdvar", "pair str", lambda e, c: make_pair_sdvar("bundled"), TypeError, ("pair", "ModelPair")),
    Row("make_pair_sdvar", "fast str", lambda e, c: make_pair_sdvar(e["pair"], fast="yes"), TypeError, ("fast",)),
    Row("make_pair_sdvar", "config int", lambda e, c: make_pair_sdvar(e["pair"], fast=True, config=3), TypeError,
        ("config", "FastConfig")),
    Row("make_pair_sdvar", "eager float16", lambda e, c: make_pair_sdvar(e["pair"], fast=False, dtype=torch.float16),
        ValueError, ("dtype", "float32")),
    # ---- SDVAR(...) -----------------------------------------------------------------------------------
    Row("SDVAR", "draft str", lambda e, c: SDVAR("draft", e["target"]), TypeError, ("SDVAR", "VAR")),
    Row("SDVAR", "run_factory int", lambda e, c: SDVAR(e["draft"], e["target"], run_factory=3), TypeError,
        ("run_factory",)),
    Row("SDVAR", "other vocabulary", lambda e, c: SDVAR(VAR(VQVAE(**dict(TINY_CONFIG["vae"], vocab_size=32)),
                                                            **TINY_CONFIG["var"]), e["target"]),
        ValueError, ("vocabulary sizes differ",)),
    Row("SDVAR", "run_factory returns str",
        lambda e, c: SDVAR(e["draft"], e["target"], run_factory=lambda m, labels: "run").generate_parallel(1, 1),
        TypeError, ("run_factory", "ModelRun")),
    # ---- generate_parallel ----------------------------------------------------------------------------
    Row("generate_parallel", "B 0", gp(B=0, label_B=None), ValueError, ("B", ">= 1")),
    Row("generate_parallel", "B str", gp(B="2"), TypeError, ("B",)),
    Row("generate_parallel", "B bool", gp(B=True, label_B=None), TypeError, ("B",)),
    Row("generate_parallel", "B 2**70", gp(B=2**70, label_B=1), ValueError, ("B=", "GiB")),
    Row("generate_parallel", "label 10", gp(label_B=10), ValueError, ("label_B", "[0, 10)")),
    Row("generate_parallel", "label 2**70", gp(label_B=2**70), ValueError, ("label_B", "[0, 10)")),
    Row("generate_parallel", "label -2**70", gp(label_B=-(2**70)), ValueError, ("label_B", "-2**63")),
    Row("generate_parallel", "labels [1, 2**70]", gp(label_B=[1, 2**70]), ValueError, ("label_B", "[0, 10)")),
    Row("generate_parallel", "labels [1, 2**63]", gp(label_B=[1, 2**63]), ValueError, ("label_B",)),
    Row("generate_parallel", "labels [1, -2**70]", gp(label_B=[1, -(2**70)]), ValueError, ("label_B", "-2**63")),
    Row("generate_parallel", "labels count", gp(label_B=[1]), ValueError, ("label_B", "B=2")),
    Row("generate_parallel", "label str", gp(label_B="12"), TypeError, ("label_B",)),
    Row("generate_parallel", "labels float", gp(label_B=[1.0, 2.0]), TypeError, ("label_B",)),
    Row("generate_parallel", "labels float tensor", gp(label_B=torch.tensor([1.0, 2.0])), TypeError, ("label_B",)),
    Row("generate_parallel", "seed -1", gp(g_seed=-1), ValueError, ("g_seed", "2**63")),
    Row("generate_parallel", "seed 2**64", gp(g_seed=2**64), ValueError, ("g_seed", "2**63")),
    Row("generate_parallel", "seed float", gp(g_seed=1.5), TypeError, ("g_seed",)),
    Row("generate_parallel", "sampling dict", gp(sampling={"cfg": 1.0}), TypeError, ("sampling", "SamplingConfig")),
    Row("generate_parallel", "top_k > V", gp(sampling=SamplingConfig(top_k=10**6)), ValueError, ("top_k", "vocabulary")),
    Row("generate_parallel", "gamma 0", gp(gamma=0), ValueError, ("gamma", ">= 1")),
    Row("generate_parallel", "gamma float", gp(gamma=1.5), TypeError, ("gamma", "'adaptive'")),
    Row("generate_parallel", "gamma bool", gp(gamma=True), TypeError, ("gamma",)),
    Row("generate_parallel", "gamma bytes", gp(gamma=b"\x01\x02"), TypeError, ("gamma", "schedule")),
    Row("generate_parallel", "gamma bytearray", gp(gamma=bytearray(b"\x01")), TypeError, ("gamma", "schedule")),
    Row("generate_parallel", "gamma tensor", gp(gamma=torch.tensor(2)), TypeError, ("gamma",)),
    Row("generate_parallel", "gamma str", gp(gamma="fast"), ValueError, ("gamma", "'adaptive'")),
    Row("generate_parallel", "gamma zeros", gp(gamma=(0, 0)), ValueError, ("only zeros",)),
    Row("generate_parallel", "gamma empty", gp(gamma=()), ValueError, ("gamma schedule", "empty")),
    Row("generate_parallel", "gamma (1, -1)", gp(gamma=(1, -1)), ValueError, ("gamma schedule", ">= 0")),
    Row("generate_parallel", "gamma base rule", gp(gamma=GammaRule()), TypeError, ("GammaRule", "next_gamma")),
    Row("generate_parallel", "gamma short priors", gp(gamma=AdaptiveGamma(prior_acceptance=(0.9, 0.9))), ValueError,
        ("prior_acceptance", "2 values", "4 stages")),
    Row("generate_parallel", "gamma table misses chunks",
        gp(gamma=AdaptiveGamma(costs=TableCost({(0, 1): 1.0}, {(0, 1): 0.1}))), ValueError,
        ("cost table", "no measured time", "target (0, 2)")),
    Row("generate_parallel", "custom rule returns -1", gp(gamma=_Returns(-1)), ValueError, ("_Returns", "next_gamma", "-1")),
    Row("generate_parallel", "custom rule returns 1.5", gp(gamma=_Returns(1.5)), TypeError, ("_Returns", "next_gamma")),
    Row("generate_parallel", "policy name", gp(policy="greedy"), ValueError, ("policy", "exact")),
    Row("generate_parallel", "policy int", gp(policy=3), TypeError, ("policy",)),
    Row("generate_parallel", "policy class", gp(policy=ExactPolicy), TypeError, ("policy",)),
    Row("generate_parallel", "policy base", gp(policy=AcceptancePolicy()), TypeError, ("AcceptancePolicy", "verify_stage")),
    Row("generate_parallel", "exact option", gp(threshold=0.5), ValueError, ("exact", "threshold")),
    Row("generate_parallel", "verbose int", gp(verbose=1), TypeError, ("verbose",)),
    Row("generate_parallel", "more_smooth exact", gp(sampling=SamplingConfig(more_smooth=True)), ValueError,
        ("more_smooth",)),
    Row("generate_parallel", "models on meta", lambda e, c: c.generate_parallel(1, 1), ValueError, ("meta",),
        setup=lambda e: SDVAR(*[build_tiny(seed=0, device="meta")[1]] * 2)),
    # ---- prepare --------------------------------------------------------------------------------------
    Row("prepare", "B 0", prep(B=0, label_B=None), ValueError, ("B", ">= 1")),
    Row("prepare", "gamma base rule", prep(gamma=GammaRule()), TypeError, ("GammaRule", "next_gamma")),
    Row("prepare", "gamma short priors", prep(gamma=AdaptiveGamma(prior_acceptance=(0.9,))), ValueError,
        ("prior_acceptance", "4 stages")),
    Row("prepare", "policy base", prep(policy=AcceptancePolicy()), TypeError, ("verify_stage",)),
    Row("prepare", "label 99", prep(label_B=[1, 99]), ValueError, ("label_B", "[0, 10)")),
    Row("prepare", "training mode", lambda e, c: _sd(e).prepare(1, 1), ValueError, ("training mode", ".eval()"),
        setup=lambda e: e["target"].train()),
    # ---- the round steps ------------------------------------------------------------------------------
    Row("draft", "state str", lambda e, c: _sd(e).draft("state"), TypeError, ("state", "SDVARInferenceState")),
    Row("draft", "gamma 0", lambda e, c: _sd(e).draft(c, 0), ValueError, ("gamma", ">= 1"), setup=_state),
    Row("draft", "gamma str", lambda e, c: _sd(e).draft(c, "2"), TypeError, ("gamma",), setup=_state),
    Row("draft", "state of another pair", lambda e, c: _sd(e).draft(c), ValueError, ("another SDVAR pair",),
        setup=lambda e: _state(e, sd_key="other_sd")),
    Row("draft", "stale state", lambda e, c: _sd(e).draft(c[0]), ValueError, ("stale", "newest"), setup=_committed),
    Row("draft", "twice", lambda e, c: _sd(e).draft(c[0]), ValueError, ("draft() ran",), setup=_proposed),
    Row("draft", "state with another B", lambda e, c: _sd(e).draft(replace(c, B=1)), ValueError, ("B=1", "caches"),
        setup=lambda e: _state(e, B=2)),
    Row("verify", "proposal str", lambda e, c: _sd(e).verify(c, "proposal"), TypeError, ("proposal", "DraftProposal"),
        setup=_state),
    Row("verify", "proposal of an older state", lambda e, c: _sd(e).verify(c[4], c[1]), ValueError,
        ("proposal", "another state"), setup=_committed),
    Row("verify", "proposal of another call", lambda e, c: _sd(e).verify(c[1][0], c[0][1]), ValueError,
        ("proposal", "another state"), setup=lambda e: (_proposed(e), _proposed(e))),
    Row("verify", "proposal of another batch", lambda e, c: _sd(e).verify(c[1], c[0][1]), ValueError,
        ("proposal", "another state"), setup=lambda e: (_proposed(e, B=2), _state(e, B=1))),
    Row("verify", "twice", lambda e, c: _sd(e).verify(c[0], c[1]), ValueError, ("verify() already ran",),
        setup=_verified),
    Row("verify", "hand-made proposal of another batch",
        lambda e, c: _sd(e).verify(c, DraftProposal(start=0, tokens=[torch.zeros(3, 1, dtype=torch.long)], q_probs=[None],
                                                    f_hats=[torch.zeros(3, 8, 4, 4)], draft_cache_before=0)),
        ValueError, ("batch 1",), setup=_state),
    Row("verify", "stale state", lambda e, c: _sd(e).verify(c[0], c[1]), ValueError, ("stale",), setup=_committed),
    Row("accept", "verify str", lambda e, c: _sd(e).accept(c[0], c[1], "verify"), TypeError, ("verify", "VerifyResult"),
        setup=_verified),
    Row("accept", "verify of another proposal", lambda e, c: _sd(e).accept(c[0][0], c[0][1], c[1][2]), ValueError,
        ("verify result", "another proposal"), setup=_two_calls),
    Row("accept", "verify of the previous round", lambda e, c: _sd(e).accept(c[0], c[1], c[2]), ValueError,
        ("verify result", "another proposal"),
        setup=lambda e: (lambda s: (s[4], _sd(e).draft(s[4]), s[2]))(_committed(e))),
    Row("accept", "hand-made verify of other stages",
        lambda e, c: _sd(e).accept(c[0], c[1], VerifyResult(stages=[2], logits=[], p_probs=[c[2].p_probs[0]])),
        ValueError, ("stages [2]", "proposal stages [0]"), setup=_verified),
    Row("commit", "acceptance str", lambda e, c: _sd(e).commit(c[0], c[1], "acceptance"), TypeError,
        ("acceptance", "AcceptanceResult"), setup=_accepted),
    Row("commit", "acceptance of another proposal", lambda e, c: _sd(e).commit(c[0][0], c[0][1], c[1][3]), ValueError,
        ("acceptance", "another proposal"), setup=lambda e: (_accepted(e), _accepted(e, gamma=2))),
    Row("commit", "acceptance of the previous round", lambda e, c: _sd(e).commit(c[0], c[1], c[2]), ValueError,
        ("acceptance", "another proposal"),
        setup=lambda e: (lambda s: (s[4], _sd(e).draft(s[4]), s[3]))(_committed(e))),
    Row("commit", "before verify", lambda e, c: _sd(e).commit(c[0], c[1], _hand_acceptance(c[0], c[1])), ValueError,
        ("verify()", "first"), setup=_proposed),
    Row("commit", "twice", lambda e, c: _sd(e).commit(c[0], c[1], c[3]), ValueError, ("stale",), setup=_committed),
    Row("commit", "tokens of another batch",
        lambda e, c: _sd(e).commit(c[0], c[1], replace(c[3], committed=[torch.zeros(5, 1, dtype=torch.long)])),
        ValueError, ("shape", "(1, 1)"), setup=_accepted),
    Row("target_step", "state None", lambda e, c: _sd(e).target_step(None), TypeError, ("state",)),
    Row("target_step", "after draft", lambda e, c: _sd(e).target_step(c[0]), ValueError,
        ("target_step", "in progress", "draft()"), setup=lambda e: _proposed(e, gamma=2)),
    Row("target_step", "after verify", lambda e, c: _sd(e).target_step(c[0]), ValueError,
        ("target_step", "in progress", "verify()"), setup=_verified),
    Row("run_round", "state int", lambda e, c: _sd(e).run_round(1), TypeError, ("state",)),
    Row("run_round", "index -1", lambda e, c: _sd(e).run_round(c, -1), ValueError, ("index",), setup=_state),
    Row("run_round", "index str", lambda e, c: _sd(e).run_round(c, "0"), TypeError, ("index",), setup=_state),
    Row("run_round", "after a draft", lambda e, c: _sd(e).run_round(c[0]), ValueError, ("draft() ran",), setup=_proposed),
    Row("run_round", "rule returns -1", lambda e, c: _sd(e).run_round(c), ValueError, ("_Returns", "-1"),
        setup=lambda e: _sd(e).prepare(1, 1, gamma=_Returns(-1))),
    Row("iter_rounds", "state str", lambda e, c: list(_sd(e).iter_rounds("state")), TypeError, ("state",)),
    Row("split_logits", "logits list", lambda e, c: _sd(e).split_logits(c[0], c[1], [1.0]), TypeError, ("logits_2BlV",),
        setup=_proposed),
    Row("verify_mask", "query str", lambda e, c: _sd(e).verify_mask(c, "query"), TypeError, ("query", "CombinedQuery"),
        setup=_state),
    Row("f_hats_after", "start -1", lambda e, c: _sd(e).f_hats_after([], -1, []), ValueError, ("start", "[0, 4]")),
    Row("f_hats_after", "tokens of another stage", lambda e, c: _sd(e).f_hats_after([], 0, [torch.zeros(1, 4, dtype=torch.long)]),
        ValueError, ("stage 0", "(B, 1)")),
    Row("check_compatible", "draft str", lambda e, c: check_compatible("draft", e["target"]), TypeError, ("draft", "VAR")),
    Row("pool_stats", "str", lambda e, c: pool_stats("stats"), TypeError, ("stats", "SDVARStats")),
    Row("prefill_mask", "ids str", lambda e, c: prefill_mask("ids", 0), TypeError, ("stage_ids_l",)),
    Row("generate_parallel", "labels on meta", gp(label_B=torch.tensor([1, 2], device="meta")), ValueError,
        ("label_B", "meta")),
    # ---- the hand-off functions ------------------------------------------------------------------------
    Row("baseline", "sd str", lambda e, c: baseline("sd", 1), TypeError, ("sd", "SDVAR")),
    Row("baseline", "B 0", lambda e, c: baseline(_sd(e), 0), ValueError, ("B",)),
    Row("baseline", "cfg str", lambda e, c: baseline(_sd(e), 1, 1, sampling=SamplingConfig(cfg="1")), TypeError, ("cfg",)),
    Row("draft_alone", "seed str", lambda e, c: draft_alone(_sd(e), 1, 1, g_seed="0"), TypeError, ("g_seed",)),
    Row("generate_test3", "entry 99", lambda e, c: generate_test3(_sd(e), 1, 1, entry_num=99), ValueError,
        ("entry_num", "[0, 4]")),
    Row("generate_test3", "entry bool", lambda e, c: generate_test3(_sd(e), 1, 1, entry_num=True), TypeError,
        ("entry_num",)),
    Row("generate_test3", "sd_mask 7", lambda e, c: generate_test3(_sd(e), 1, 1, entry_num=2, sd_mask=7), ValueError,
        ("sd_mask",)),
    Row("code_handoff", "entry None", lambda e, c: code_handoff(_sd(e), 1, 1, entry_num=None), TypeError, ("entry_num",)),
    Row("code_handoff", "entry -1", lambda e, c: code_handoff(_sd(e), 1, 1, entry_num=-1), ValueError, ("entry_num",)),
    Row("decode_handoff", "entry 9", lambda e, c: decode_handoff(_sd(e), True, torch.tensor([1]), SamplingConfig(), None, 9),
        ValueError, ("entry_num", "[0, 4]")),
    Row("code_handoff", "entry 6 > S", lambda e, c: code_handoff(_sd(e), 1, 1), ValueError, ("entry_num", "[0, 4]")),
    # ---- the registry ---------------------------------------------------------------------------------
    Row("get_method", "None", lambda e, c: get_method(None), TypeError, ("method name",)),
    Row("get_method", "unknown", lambda e, c: get_method("exact"), ValueError, ("unknown method 'exact'", "exact_g<N>")),
    Row("get_method", "gamma 0", lambda e, c: get_method("exact_g0"), ValueError, ("gamma", ">= 1")),
    Row("get_method", "threshold 5", lambda e, c: get_method("top1_5_g2"), ValueError, ("threshold", "(0, 1]")),
    Row("Method", "name int", lambda e, c: Method(3, "target"), TypeError, ("name",)),
    Row("Method", "name blank", lambda e, c: Method(" ", "target"), ValueError, ("name", "non-empty")),
    Row("Method", "decoder list", lambda e, c: Method("m", ["sdvar"]), TypeError, ("decoder",)),
    Row("Method", "decoder unknown", lambda e, c: Method("m", "beam"), ValueError, ("decoder", "target")),
    Row("Method", "notes int", lambda e, c: Method("m", "target", notes=3), TypeError, ("notes",)),
    Row("Method", "gamma bytes", lambda e, c: Method("m", "sdvar", policy="exact", gamma=b"\x02"), TypeError, ("gamma",)),
    Row("Method", "entry float", lambda e, c: Method("m", "test3", entry_num=2.0), TypeError, ("entry_num",)),
    Row("Method.run", "sd str", lambda e, c: get_method("target").run("sd", 1), TypeError, ("sd", "SDVAR")),
    Row("Method.run", "B str", lambda e, c: get_method("exact_g2").run(_sd(e), "1"), TypeError, ("B",)),
    Row("Method.run", "sampling dict", lambda e, c: get_method("draft").run(_sd(e), 1, sampling={}), TypeError,
        ("sampling",)),
    Row("Method.run", "verbose int", lambda e, c: get_method("exact_g1").run(_sd(e), 1, verbose=1), TypeError,
        ("verbose",)),
    Row("Method.run", "entry > S", lambda e, c: get_method("test3_e9").run(_sd(e), 1, 1), ValueError,
        ("entry_num 9", "4 stages")),
    Row("Method.run", "priors short for the pair",
        lambda e, c: get_method("exact_adaptive").with_gamma(AdaptiveGamma(prior_acceptance=(0.5,) * 3)).run(_sd(e), 1),
        ValueError, ("prior_acceptance", "4 stages")),
    Row("Method.with_gamma", "gamma 0", lambda e, c: get_method("exact_g2").with_gamma(0), ValueError, ("gamma",)),
    Row("Method.with_policy", "policy int", lambda e, c: get_method("exact_g2").with_policy(3), TypeError, ("policy",)),
    Row("Method.chunks", "num_stages str", lambda e, c: get_method("exact_g2").chunks("4"), TypeError, ("num_stages",)),
    Row("register", "not a Method", lambda e, c: register("target"), TypeError, ("Method",)),
    Row("register", "replace_existing str", lambda e, c: register(get_method("exact_g2"), replace_existing="no"),
        TypeError, ("replace_existing",)),
    Row("methods_for", "names str", lambda e, c: methods_for(4, "target"), TypeError, ("names", "sequence")),
    Row("methods_for", "names repeat", lambda e, c: methods_for(4, ["target", "target"]), ValueError, ("repeat",)),
    Row("methods_for", "num_stages float", lambda e, c: methods_for(4.0), TypeError, ("num_stages",)),
    Row("stage_chunks", "num_stages str", lambda e, c: stage_chunks("4", 2), TypeError, ("num_stages",)),
    # ---- SamplingConfig -------------------------------------------------------------------------------
    Row("SamplingConfig", "cfg 1e300", lambda e, c: SamplingConfig(cfg=1e300), ValueError, ("cfg", "at most 1e+06")),
    Row("SamplingConfig", "cfg -1", lambda e, c: SamplingConfig(cfg=-1.0), ValueError, ("cfg", ">= 0")),
    Row("SamplingConfig", "cfg nan", lambda e, c: SamplingConfig(cfg=NAN), ValueError, ("cfg", "finite")),
    Row("SamplingConfig", "cfg str", lambda e, c: SamplingConfig(cfg="1.5"), TypeError, ("cfg",)),
    Row("SamplingConfig", "top_k float", lambda e, c: SamplingConfig(top_k=1.5), TypeError, ("top_k",)),
    Row("SamplingConfig", "top_k -1", lambda e, c: SamplingConfig(top_k=-1), ValueError, ("top_k", ">= 0")),
    Row("SamplingConfig", "top_p 1.5", lambda e, c: SamplingConfig(top_p=1.5), ValueError, ("top_p", "[0, 1]")),
    Row("SamplingConfig", "more_smooth int", lambda e, c: SamplingConfig(more_smooth=1), TypeError, ("more_smooth",)),
    Row("BatchSampler.resolve", "eager bfloat16",
        lambda e, c: BatchSampler.resolve("eager", "bfloat16", torch.device("cpu")), ValueError,
        ("dtype bfloat16", "engine fast")),
    Row("BatchSampler.resolve", "flags named",
        lambda e, c: BatchSampler.resolve("eager", "float16", torch.device("cpu"), names=("--engine", "--dtype")),
        ValueError, ("--dtype float16", "--engine fast")),
    # ---- gamma rules and cost models ------------------------------------------------------------------
    Row("make_gamma_rule", "float", lambda e, c: make_gamma_rule(3.0), TypeError, ("gamma",)),
    Row("FixedGamma", "0", lambda e, c: FixedGamma(0), ValueError, ("gamma", ">= 1")),
    Row("FixedGamma", "bool", lambda e, c: FixedGamma(True), TypeError, ("gamma",)),
    Row("GammaSchedule", "str", lambda e, c: GammaSchedule("12"), TypeError, ("gamma schedule", "sequence")),
    Row("GammaSchedule", "bytes", lambda e, c: GammaSchedule(b"\x01"), TypeError, ("gamma schedule", "sequence")),
    Row("GammaSchedule", "empty", lambda e, c: GammaSchedule(()), ValueError, ("gamma schedule", "empty")),
    Row("GammaSchedule", "floats", lambda e, c: GammaSchedule((1.0, 2.0)), TypeError, ("gamma schedule", "int")),
    Row("AdaptiveGamma", "prior_weight inf", lambda e, c: AdaptiveGamma(prior_weight=INF), ValueError,
        ("prior_weight", "finite", "> 0")),
    Row("AdaptiveGamma", "prior_weight nan", lambda e, c: AdaptiveGamma(prior_weight=NAN), ValueError, ("prior_weight",)),
    Row("AdaptiveGamma", "prior_weight str", lambda e, c: AdaptiveGamma(prior_weight="2"), TypeError, ("prior_weight",)),
    Row("AdaptiveGamma", "prior str", lambda e, c: AdaptiveGamma(prior_acceptance="0.8"), TypeError,
        ("prior_acceptance", "[0, 1]")),
    Row("AdaptiveGamma", "prior tuple of str", lambda e, c: AdaptiveGamma(prior_acceptance=("0.8",)), TypeError,
        ("prior_acceptance",)),
    Row("AdaptiveGamma", "prior bool", lambda e, c: AdaptiveGamma(prior_acceptance=True), TypeError, ("prior_acceptance",)),
    Row("AdaptiveGamma", "prior empty", lambda e, c: AdaptiveGamma(prior_acceptance=()), ValueError,
        ("prior_acceptance", "empty")),
    Row("AdaptiveGamma", "prior 1.5", lambda e, c: AdaptiveGamma(prior_acceptance=1.5), ValueError,
        ("prior_acceptance", "[0, 1]")),
    Row("AdaptiveGamma", "prior list", lambda e, c: AdaptiveGamma(prior_acceptance=[0.5]), TypeError,
        ("prior_acceptance", "tuple")),
    Row("AdaptiveGamma", "max_gamma 0", lambda e, c: AdaptiveGamma(max_gamma=0), ValueError, ("max_gamma", ">= 1")),
    Row("AdaptiveGamma", "costs None", lambda e, c: AdaptiveGamma(costs=None), TypeError, ("costs", "CostModel")),
    Row("AdaptiveGamma", "costs base", lambda e, c: AdaptiveGamma(costs=CostModel()), TypeError, ("costs", "implement")),
    Row("UniformCost", "nan", lambda e, c: UniformCost(draft_cost=NAN), ValueError, ("draft_cost", "finite")),
    Row("UniformCost", "inf", lambda e, c: UniformCost(draft_cost=INF), ValueError, ("draft_cost", "finite")),
    Row("UniformCost", "str", lambda e, c: UniformCost(draft_cost="0.5"), TypeError, ("draft_cost",)),
    Row("UniformCost", "overhead -1", lambda e, c: UniformCost(round_overhead=-1.0), ValueError, ("round_overhead", ">= 0")),
    Row("TableCost", "nan time", lambda e, c: TableCost({**_full_table(), (0, 1): NAN}, _full_table()), ValueError,
        ("target_times[(0, 1)]", "finite")),
    Row("TableCost", "negative time", lambda e, c: TableCost(_full_table(), {**_full_table(), (2, 1): -1.0}), ValueError,
        ("draft_times[(2, 1)]", ">= 0")),
    Row("TableCost", "not a mapping", lambda e, c: TableCost([1.0], _full_table()), TypeError, ("target_times", "mapping")),
    Row("TableCost", "key str", lambda e, c: TableCost({"a": 1.0}, _full_table()), TypeError, ("target_times", "tuple")),
    Row("TableCost", "key of 0 stages", lambda e, c: TableCost({(0, 0): 1.0}, _full_table()), ValueError,
        ("target_times", "number of stages")),
    Row("TableCost", "overhead nan", lambda e, c: TableCost(_full_table(), _full_table(), round_overhead=NAN), ValueError,
        ("round_overhead",)),
    # ---- policies -------------------------------------------------------------------------------------
    Row("make_policy", "neighbours 0", lambda e, c: make_policy("relaxed", neighbours=0), ValueError, ("neighbours", ">= 1")),
    Row("make_policy", "budget 1.5", lambda e, c: make_policy("relaxed", budget=1.5), ValueError, ("budget", "[0, 1]")),
    Row("make_policy", "threshold 0", lambda e, c: make_policy("top1_match", threshold=0.0), ValueError,
        ("threshold", "(0, 1]")),
    Row("make_policy", "threshold str", lambda e, c: make_policy("top1_match", threshold="0.5"), TypeError, ("threshold",)),
    Row("make_policy", "instance with options", lambda e, c: make_policy(ExactPolicy(), budget=0.1), ValueError,
        ("options", "policy name")),
    Row("make_policy", "unknown option", lambda e, c: make_policy("relaxed", budgett=0.1), ValueError, ("budgett",)),
    Row("make_policy", "base instance", lambda e, c: make_policy(AcceptancePolicy()), TypeError, ("verify_stage",)),
    Row("make_policy", "None", lambda e, c: make_policy(None), TypeError, ("policy",)),
    Row("RelaxedPolicy", "neighbours float", lambda e, c: RelaxedPolicy(neighbours=2.0), TypeError, ("neighbours",)),
    Row("Top1MatchPolicy", "threshold nan", lambda e, c: Top1MatchPolicy(threshold=NAN), ValueError, ("threshold",)),
    # ---- the harness ----------------------------------------------------------------------------------
    Row("SDVARParallelV1Tester", "sd str", lambda e, c: SDVARParallelV1Tester("sd"), TypeError, ("SDVAR",)),
    Row("SDVARParallelV1Tester", "tolerances float", lambda e, c: SDVARParallelV1Tester(_sd(e), tolerances=1e-4),
        TypeError, ("tolerances", "Tolerances")),
    Row("SDVARParallelV1Tester", "cfg 1e300", lambda e, c: SDVARParallelV1Tester(_sd(e), cfg=1e300), ValueError,
        ("cfg", "at most")),
    Row("SDVARParallelV1Tester", "cfg nan", lambda e, c: SDVARParallelV1Tester(_sd(e), cfg=NAN), ValueError, ("cfg",)),
    Row("SDVARParallelV1Tester", "cfg 2 x CFG_LIMIT", lambda e, c: SDVARParallelV1Tester(_sd(e), cfg=2 * CFG_LIMIT),
        ValueError, ("cfg", "at most 1e+06")),
    Row("greedy_agreement", "cfg 2 x CFG_LIMIT", lambda e, c: greedy_agreement(e["target"], c, c, cfg=2 * CFG_LIMIT),
        ValueError, ("cfg", "at most 1e+06"), setup=lambda e: _sd(e).generate_parallel(1, [1], 0)),
    Row("greedy_agreement", "cfg nan", lambda e, c: greedy_agreement(e["target"], c, c, cfg=NAN), ValueError,
        ("cfg", "finite"), setup=lambda e: _sd(e).generate_parallel(1, [1], 0)),
    Row("SDVARParallelV1Tester", "seed -1", lambda e, c: SDVARParallelV1Tester(_sd(e), seed=-1), ValueError, ("seed",)),
    Row("SDVARParallelV1Tester", "top_k > V", lambda e, c: SDVARParallelV1Tester(_sd(e), top_k=65), ValueError,
        ("top_k", "64")),
    Row("SDVARParallelV1Tester", "top_p str", lambda e, c: SDVARParallelV1Tester(_sd(e), top_p="0"), TypeError, ("top_p",)),
    Row("tester.run_all_tests", "B 0", lambda e, c: SDVARParallelV1Tester(_sd(e)).run_all_tests(B=0), ValueError, ("B",)),
    Row("tester.run_all_tests", "gamma bool", lambda e, c: SDVARParallelV1Tester(_sd(e)).run_all_tests(gamma=True),
        TypeError, ("gamma",)),
    Row("tester.run_all_tests", "print_results str",
        lambda e, c: SDVARParallelV1Tester(_sd(e)).run_all_tests(print_results="no"), TypeError, ("print_results",)),
    Row("tester.test_compare_with_test3", "entry_nums empty",
        lambda e, c: SDVARParallelV1Tester(_sd(e)).test_compare_with_test3(entry_nums=[]), ValueError,
        ("entry_nums", "empty")),
    Row("tester.test_compare_with_test3", "entry_nums str",
        lambda e, c: SDVARParallelV1Tester(_sd(e)).test_compare_with_test3(entry_nums="2"), TypeError, ("entry_nums",)),
    Row("tester.test_compare_with_test3", "entry 5",
        lambda e, c: SDVARParallelV1Tester(_sd(e)).test_compare_with_test3(entry_nums=[5]), ValueError,
        ("entry_nums", "[0, 4]")),
    Row("tester.test_target_verify_batch", "tolerance -1",
        lambda e, c: SDVARParallelV1Tester(_sd(e)).test_target_verify_batch(tolerance=-1.0), ValueError, ("tolerance",)),
    Row("tester.test_sampled_distribution", "draws 0",
        lambda e, c: SDVARParallelV1Tester(_sd(e)).test_sampled_distribution(draws=0), ValueError, ("draws",)),
    Row("tester.test_sampled_distribution", "alpha 1",
        lambda e, c: SDVARParallelV1Tester(_sd(e)).test_sampled_distribution(alpha=1.0), ValueError, ("alpha",)),
    Row("tester.test_state_update", "gamma 0", lambda e, c: SDVARParallelV1Tester(_sd(e)).test_state_update(gamma=0),
        ValueError, ("gamma",)),
    # ---- the research fork's round-step aliases (sdvar_lib.compat) ---------------------------------------
    Row("compat.SDVAR.draft_generate_batch", "state str",
        lambda e, c: ForkSDVAR(e["draft"], e["target"]).draft_generate_batch("state", 1), TypeError,
        ("state", "SDVARInferenceState")),
    Row("compat.SDVAR.draft_generate_batch", "state of another pair",
        lambda e, c: ForkSDVAR(e["draft"], e["target"]).draft_generate_batch(c, 1), ValueError,
        ("another SDVAR pair",), setup=lambda e: _state(e, sd_key="other_sd")),
    Row("compat.SDVAR.draft_generate_batch", "B of another batch",
        lambda e, c: ForkSDVAR(e["draft"], e["target"]).draft_generate_batch(c, 2), ValueError, ("B=2", "batch size 1"),
        setup=lambda e: _state(e)),
    Row("compat.SDVAR._build_combined_query", "state None",
        lambda e, c: ForkSDVAR(e["draft"], e["target"])._build_combined_query(None, None, 1), TypeError,
        ("state", "SDVARInferenceState")),
    Row("compat.SDVAR.target_verify_batch", "state dict",
        lambda e, c: ForkSDVAR(e["draft"], e["target"]).target_verify_batch(None, {"B": 1}, 1), TypeError,
        ("state", "SDVARInferenceState")),
    Row("compat.SDVAR._split_logits_by_stage", "state str",
        lambda e, c: ForkSDVAR(e["draft"], e["target"])._split_logits_by_stage(None, None, 1, "state"), TypeError,
        ("state", "SDVARInferenceState")),
    # ---- the widgets' callbacks -----------------------------------------------------------------------
    Row("run_and_describe", "sdvar str", lambda e, c: run_and_describe("sd"), TypeError, ("sdvar", "SDVAR")),
    Row("run_and_describe", "labels empty", lambda e, c: run_and_describe(_sd(e), labels=[]), ValueError,
        ("labels", "empty")),
    Row("run_and_describe", "labels str", lambda e, c: run_and_describe(_sd(e), labels="12"), TypeError, ("labels",)),
    Row("run_and_describe", "label 99", lambda e, c: run_and_describe(_sd(e), labels=[99]), ValueError,
        ("labels", "[0, 10)")),
    Row("run_and_describe", "label 2**70", lambda e, c: run_and_describe(_sd(e), labels=[2**70]), ValueError,
        ("labels", "[0, 10)")),
    Row("run_and_describe", "cfg 1e300", lambda e, c: run_and_describe(_sd(e), labels=[1], cfg=1e300), ValueError,
        ("cfg", "at most")),
    Row("run_and_describe", "gamma 0", lambda e, c: run_and_describe(_sd(e), labels=[1], gamma=0), ValueError, ("gamma",)),
    Row("run_and_describe", "policy", lambda e, c: run_and_describe(_sd(e), labels=[1], policy="x"), ValueError,
        ("policy", "exact")),
    Row("run_and_describe", "seed 2**64", lambda e, c: run_and_describe(_sd(e), labels=[1], seed=2**64), ValueError,
        ("seed",)),
    Row("run_and_describe", "with_figure str", lambda e, c: run_and_describe(_sd(e), labels=[1], with_figure="no"),
        TypeError, ("with_figure",)),
    Row("run_comparison", "entry 9", lambda e, c: run_comparison(_sd(e), labels=[1], entry=9), ValueError,
        ("entry", "[0, 4]")),
    Row("run_comparison", "label 99", lambda e, c: run_comparison(_sd(e), labels=[99]), ValueError, ("labels", "[0, 10)")),
    Row("run_comparison", "top_k -1", lambda e, c: run_comparison(_sd(e), labels=[1], top_k=-1), ValueError, ("top_k",)),
    Row("run_comparison", "with_figure str", lambda e, c: run_comparison(_sd(e), labels=[1], with_figure="no"), TypeError,
        ("with_figure",)),
]


@pytest.fixture(scope="module")
def env(tiny_pair):
    vae, draft, target = tiny_pair
    _, other_target = build_tiny(seed=3, vae=vae)
    _, other_draft = build_tiny(seed=4, depth=1, vae=vae)
    return {"draft": draft, "target": target, "sd": SDVAR(draft, target), "other_sd": SDVAR(other_draft, other_target),
            "pair": ModelPair(vae=vae, draft=draft, target=target, description="tiny random pair")}


@pytest.fixture
def model_calls(monkeypatch):
    """Counts every model pass and VQVAE decode from here on."""
    calls = []
    for name in ("forward_cached", "images_from_f_hat"):
        real = getattr(VAR, name)

        def counting(self, *args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(VAR, name, counting)
    return calls


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.entry}: {r.label}" for r in ROWS])
def test_a_bad_call_is_refused_naming_the_argument_before_anything_runs(env, row, request, tmp_path, monkeypatch):
    ctx = row.setup(env) if row.setup is not None else None
    monkeypatch.chdir(tmp_path)
    calls = request.getfixturevalue("model_calls")
    try:
        with pytest.raises(row.error) as info:
            row.call(env, ctx)
    finally:
        env["target"].eval()  # the training-mode row's set-up
    message = str(info.value)
    missing = [name for name in row.names if name not in message]
    assert not missing, f"{row.entry} ({row.label}): the message does not name {missing}: {message}"
    assert calls == [], f"{row.entry} ({row.label}): {len(calls)} model call(s) ran before the refusal: {calls}"
    assert list(tmp_path.iterdir()) == [], f"{row.entry} ({row.label}) wrote {list(tmp_path.iterdir())}"


def test_every_public_entry_point_has_rows():
    """The table covers each entry point the library offers a user (a new one needs its rows)."""
    entries = {r.entry for r in ROWS}
    wanted = {
        "load_pair", "make_pair_sdvar", "SDVAR", "generate_parallel", "prepare", "draft", "verify", "accept", "commit",
        "target_step", "run_round", "iter_rounds", "baseline", "draft_alone", "generate_test3", "code_handoff",
        "get_method", "Method", "Method.run", "SamplingConfig", "AdaptiveGamma", "GammaSchedule", "UniformCost",
        "TableCost", "make_policy", "SDVARParallelV1Tester", "tester.run_all_tests", "run_and_describe",
        "run_comparison", "greedy_agreement", "compat.SDVAR.draft_generate_batch", "compat.SDVAR.target_verify_batch",
        "compat.SDVAR._build_combined_query", "compat.SDVAR._split_logits_by_stage",
    }
    assert wanted <= entries, sorted(wanted - entries)
