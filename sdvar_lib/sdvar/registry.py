"""The decoder registry: every way the workbench can decode, as frozen specs with one way to run them.

Two tables:

- :data:`DECODERS`: the decoder *kinds* (``target``, ``draft``, ``sdvar``, ``test3``,
  ``code_handoff``). A :class:`DecoderKind` says which options it takes, how one call runs on an
  :class:`~sdvar_lib.sdvar.decoder.SDVAR` (:meth:`SDVAR.generate_parallel
  <sdvar_lib.sdvar.decoder.SDVAR.generate_parallel>` or a function of :mod:`sdvar_lib.sdvar.handoff`),
  how a method of it describes itself and which chunk shapes each model's passes use (what the fast
  path captures ahead of time). Adding a decoder is one :class:`DecoderKind` entry.
- :data:`METHODS`: named, ready-to-run :class:`Method` specs (``"exact_adaptive"``,
  ``"relaxed_0.1_g2"``, ``"code_e6"``, ...). Adding a method is one :func:`register` call.
  :func:`get_method` also builds unregistered names that follow the naming scheme
  (``exact_g3``, ``top1_0.7_g2``, ``relaxed_0.2_g3``, ``test3_e4``, ``code_e7``).

The main job, the evaluation, the benchmark (its eager reference row aside) and the sampler run
every decoder through :meth:`Method.run` (``B``, labels, ``g_seed`` and one
:class:`~sdvar_lib.models.sampling.SamplingConfig`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.sdvar.acceptance import AcceptancePolicy, ExactPolicy, RelaxedPolicy, Top1MatchPolicy, make_policy
from sdvar_lib.sdvar.decoder import SDVAR
from sdvar_lib.sdvar.gamma import AdaptiveGamma, FixedGamma, GammaRule, GammaSchedule, make_gamma_rule
from sdvar_lib.sdvar.handoff import baseline, code_handoff, draft_alone, generate_test3
from sdvar_lib.sdvar.masks import check_sd_mask
from sdvar_lib.sdvar.stats import SDVAROutput
from sdvar_lib.util.checks import check_bool, check_int, check_sequence, check_str

__all__ = [
    "DecoderKind",
    "DECODERS",
    "Method",
    "METHODS",
    "register",
    "get_method",
    "method_names",
    "methods_for",
    "stage_chunks",
    "EVALUATION_METHODS",
]


def stage_chunks(num_stages: int, max_chunk_stages: int, start_stages: Iterable[int] | None = None) -> list[tuple[int, int]]:
    """Every ``(start stage, number of stages)`` chunk with at most ``max_chunk_stages`` stages."""
    check_int(num_stages, "num_stages", 1)
    check_int(max_chunk_stages, "max_chunk_stages", 1)
    starts = range(num_stages) if start_stages is None else start_stages
    return [(s, n) for s in starts for n in range(1, min(max_chunk_stages, num_stages - s) + 1)]


# ---- decoder kinds --------------------------------------------------------------------------------
Runner = Callable[[SDVAR, "Method", int, object, "int | None", SamplingConfig, bool], SDVAROutput]
"""``(sd, method, B, label_B, g_seed, sampling, verbose) -> SDVAROutput``: one call of a method."""
ChunkPlan = Callable[["Method", int], list[tuple[int, int]]]


@dataclass(frozen=True)
class DecoderKind:
    """One kind of decoder: its options, how a call runs, how a method of it reads, and its passes' chunk shapes."""

    name: str
    description: str
    run: Runner
    takes: frozenset[str]
    """Options of :class:`Method` this kind uses (``policy``, ``gamma``, ``entry_num``, ``sd_mask``)."""
    describe: Callable[[Method], str]
    """One line naming a method of this kind with its options."""
    target_chunks: ChunkPlan
    draft_chunks: ChunkPlan
    lossless: Callable[[Method], bool] = lambda m: False


def _max_gamma(rule: GammaRule) -> int:
    if isinstance(rule, FixedGamma):
        return rule.gamma
    if isinstance(rule, GammaSchedule):
        return max(rule.values)
    if isinstance(rule, AdaptiveGamma):
        return rule.max_gamma
    raise ValueError(f"cannot tell the largest gamma of the rule {rule.describe()}")


def _sdvar_draft_chunks(m: Method, S: int) -> list[tuple[int, int]]:
    # a fixed gamma keeps the draft at most one stage behind (catch-up chunks of <= 2 stages); a rule
    # that may take target steps (gamma 0) lets the draft fall behind by any number of stages
    return stage_chunks(S, 2 if isinstance(m.gamma, FixedGamma) else S)


def _describe_test3(m: Method) -> str:
    mask = f", sd_mask {m.sd_mask}" if m.sd_mask else ""
    return f"test3 (draft stages < {m.entry_num}, then target{mask})"


DECODERS: dict[str, DecoderKind] = {
    k.name: k
    for k in (
        DecoderKind(
            "target", "the target alone (the VAR baseline)",
            run=lambda sd, m, B, labels, seed, s, v: baseline(sd, B, labels, seed, s),
            takes=frozenset(), describe=lambda m: "target alone",
            target_chunks=lambda m, S: stage_chunks(S, 1), draft_chunks=lambda m, S: [], lossless=lambda m: True,
        ),
        DecoderKind(
            "draft", "the draft alone",
            run=lambda sd, m, B, labels, seed, s, v: draft_alone(sd, B, labels, seed, s),
            takes=frozenset(), describe=lambda m: "draft alone",
            target_chunks=lambda m, S: [], draft_chunks=lambda m, S: stage_chunks(S, 1),
        ),
        DecoderKind(
            "sdvar", "SDVAR parallel verification (draft proposes gamma stages, one target pass verifies)",
            run=lambda sd, m, B, labels, seed, s, v: sd.generate_parallel(B, labels, seed, s, m.gamma, m.policy, v),
            takes=frozenset({"policy", "gamma"}),
            describe=lambda m: f"SDVAR {m.policy.describe()}, gamma {m.gamma.describe()}",
            target_chunks=lambda m, S: stage_chunks(S, _max_gamma(m.gamma) + 1), draft_chunks=_sdvar_draft_chunks,
            lossless=lambda m: bool(m.policy.lossless),
        ),
        DecoderKind(
            "test3", "scale hand-off, draft first: the draft makes stages < entry_num, the target finishes",
            run=lambda sd, m, B, labels, seed, s, v: generate_test3(sd, B, labels, seed, s, m.entry_num, m.sd_mask),
            takes=frozenset({"entry_num", "sd_mask"}), describe=_describe_test3,
            target_chunks=lambda m, S: [(0, m.entry_num + 1)] + [(s, 1) for s in range(m.entry_num + 1, S)],
            draft_chunks=lambda m, S: [(s, 1) for s in range(m.entry_num)],
        ),
        DecoderKind(
            "code_handoff", "CoDe-style hand-off, target first: the target makes stages < entry_num, the draft finishes",
            run=lambda sd, m, B, labels, seed, s, v: code_handoff(sd, B, labels, seed, s, m.entry_num),
            takes=frozenset({"entry_num"}),
            describe=lambda m: f"CoDe hand-off (target stages < {m.entry_num}, then draft)",
            target_chunks=lambda m, S: [(s, 1) for s in range(m.entry_num)],
            draft_chunks=lambda m, S: [(0, m.entry_num + 1)] + [(s, 1) for s in range(m.entry_num + 1, S)],
        ),
    )
}


# ---- methods ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """A named decoder with all its options: the one way every tool runs a decoder.

    ``gamma`` accepts what :func:`~sdvar_lib.sdvar.gamma.make_gamma_rule` accepts and is stored as a
    :class:`~sdvar_lib.sdvar.gamma.GammaRule`; ``policy`` a name or an
    :class:`~sdvar_lib.sdvar.acceptance.AcceptancePolicy` (stored as the instance).
    """

    name: str
    decoder: str
    policy: AcceptancePolicy | None = None
    gamma: GammaRule | None = None
    entry_num: int | None = None
    sd_mask: int = 0
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        check_str(self.name, "a method's name")
        check_str(self.decoder, f"method {self.name!r}: decoder")
        check_str(self.notes, f"method {self.name!r}: notes", non_empty=False)
        if self.decoder not in DECODERS:
            raise ValueError(f"method {self.name!r}: decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        takes = DECODERS[self.decoder].takes
        given = {k for k, v in (("policy", self.policy), ("gamma", self.gamma), ("entry_num", self.entry_num)) if v is not None}
        if self.sd_mask != 0:
            given.add("sd_mask")
        extra = given - takes
        if extra:
            raise ValueError(f"method {self.name!r}: decoder {self.decoder!r} takes no {', '.join(sorted(extra))}")
        if "gamma" in takes:
            if self.gamma is None or self.policy is None:
                raise ValueError(f"SDVAR method {self.name!r} needs a gamma and a policy")
            object.__setattr__(self, "gamma", make_gamma_rule(self.gamma))
            object.__setattr__(self, "policy", make_policy(self.policy))
        if "entry_num" in takes:
            check_int(self.entry_num, f"entry_num of {self.name!r}", 0)
        check_sd_mask(self.sd_mask)

    @property
    def kind(self) -> DecoderKind:
        return DECODERS[self.decoder]

    @property
    def lossless(self) -> bool:
        """Whether the method's output distribution is the target's."""
        return self.kind.lossless(self)

    @property
    def uses_draft(self) -> bool:
        return self.decoder != "target"

    @property
    def uses_target(self) -> bool:
        return self.decoder != "draft"

    def describe(self) -> str:
        return self.kind.describe(self)

    def check_for(self, num_stages: int) -> None:
        """Raise ``ValueError`` if the method cannot run on a pair with ``num_stages`` stages."""
        check_int(num_stages, "num_stages", 1)
        if self.gamma is not None:
            self.gamma.check_for(num_stages)
        if self.entry_num is not None and self.entry_num > num_stages:
            raise ValueError(f"method {self.name!r}: entry_num {self.entry_num} exceeds the {num_stages} stages of the pair")

    def with_policy(self, policy: AcceptancePolicy, name: str | None = None) -> Method:
        """The same SDVAR method under another acceptance policy (e.g. a benchmark scenario)."""
        if self.decoder != "sdvar":
            raise ValueError(f"method {self.name!r} ({self.decoder}) has no acceptance policy")
        return replace(self, policy=policy, name=name or self.name)

    def with_gamma(self, gamma, name: str | None = None) -> Method:
        """The same SDVAR method with another gamma rule (e.g. a rule calibrated on the machine)."""
        if self.decoder != "sdvar":
            raise ValueError(f"method {self.name!r} ({self.decoder}) has no gamma")
        return replace(self, gamma=make_gamma_rule(gamma), name=name or self.name)

    def chunks(self, num_stages: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """``(target chunks, draft chunks)`` as ``(start stage, number of stages)``: the pass shapes a call uses."""
        self.check_for(num_stages)
        return self.kind.target_chunks(self, num_stages), self.kind.draft_chunks(self, num_stages)

    def run(
        self,
        sd: SDVAR,
        B: int,
        label_B=None,
        g_seed: int | None = None,
        sampling: SamplingConfig | None = None,
        verbose: bool = False,
    ) -> SDVAROutput:
        """One call of ``B`` images (``label_B``, ``g_seed`` as in every decoder; ``sampling`` default ``SamplingConfig()``)."""
        if not isinstance(sd, SDVAR):
            raise TypeError(f"sd must be an sdvar_lib.SDVAR, got {type(sd).__name__}")
        sampling = SamplingConfig() if sampling is None else sampling
        if not isinstance(sampling, SamplingConfig):
            raise TypeError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
        check_bool(verbose, "verbose")
        self.check_for(sd.num_stages)
        return self.kind.run(sd, self, B, label_B, g_seed, sampling, verbose)


METHODS: dict[str, Method] = {}


def register(method: Method, replace_existing: bool = False) -> Method:
    """Add ``method`` to :data:`METHODS` under its name (an existing name raises unless ``replace_existing``)."""
    if not isinstance(method, Method):
        raise TypeError(f"register needs a Method, got {type(method).__name__}")
    check_bool(replace_existing, "replace_existing")
    if method.name in METHODS and not replace_existing:
        raise ValueError(f"a method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


_PATTERNS: tuple[tuple[re.Pattern, Callable[..., Method]], ...] = (
    (re.compile(r"exact_g(\d+)"), lambda n, g: Method(n, "sdvar", policy=ExactPolicy(), gamma=int(g))),
    (re.compile(r"top1_(\d*\.?\d+)_g(\d+)"),
     lambda n, t, g: Method(n, "sdvar", policy=Top1MatchPolicy(threshold=float(t)), gamma=int(g))),
    (re.compile(r"relaxed_(\d*\.?\d+)_g(\d+)"),
     lambda n, b, g: Method(n, "sdvar", policy=RelaxedPolicy(budget=float(b)), gamma=int(g))),
    (re.compile(r"test3_e(\d+)"), lambda n, e: Method(n, "test3", entry_num=int(e))),
    (re.compile(r"code_e(\d+)"), lambda n, e: Method(n, "code_handoff", entry_num=int(e))),
)


def get_method(name: str) -> Method:
    """The registered method ``name``, or one built from the naming scheme; otherwise ``ValueError``."""
    if not isinstance(name, str):
        raise TypeError(f"a method name must be a string, got {name!r}")
    if name in METHODS:
        return METHODS[name]
    for pattern, build in _PATTERNS:
        match = pattern.fullmatch(name)
        if match:
            return build(name, *match.groups())
    raise ValueError(
        f"unknown method {name!r}; registered: {', '.join(METHODS)}; or by pattern: exact_g<N>, top1_<threshold>_g<N>, "
        "relaxed_<budget>_g<N>, test3_e<N>, code_e<N>"
    )


def method_names() -> list[str]:
    return list(METHODS)


def methods_for(num_stages: int, names: Sequence[str] | None = None) -> list[Method]:
    """Methods (all registered ones, or ``names`` in that order) that fit a pair of ``num_stages`` stages.

    Hand-offs with an ``entry_num`` outside ``1 .. num_stages - 1`` (the draft or the target alone)
    are left out when taken from the registry; a name asked for explicitly must fit.
    """
    check_int(num_stages, "num_stages", 2)
    if names is not None:
        names = check_sequence(names, "names", check_str, "method names")
        if len(set(names)) != len(names):
            raise ValueError(f"method names repeat: {list(names)}")
        methods = [get_method(n) for n in names]
        for m in methods:
            m.check_for(num_stages)
        return methods
    return [m for m in METHODS.values() if m.entry_num is None or 1 <= m.entry_num < num_stages]


for _m in (
    Method("target", "target"),
    Method("draft", "draft"),
    *(Method(f"exact_g{g}", "sdvar", policy=ExactPolicy(), gamma=g) for g in (1, 2, 3, 4)),
    Method("exact_adaptive", "sdvar", policy=ExactPolicy(), gamma="adaptive"),
    *(Method(f"top1_{t:g}_g2", "sdvar", policy=Top1MatchPolicy(threshold=t), gamma=2) for t in (0.5, 0.9)),
    *(Method(f"relaxed_{b:g}_g2", "sdvar", policy=RelaxedPolicy(budget=b), gamma=2) for b in (0.05, 0.1, 0.3)),
    *(Method(f"test3_e{e}", "test3", entry_num=e) for e in (2, 3, 4, 5)),
    *(Method(f"code_e{e}", "code_handoff", entry_num=e) for e in (3, 5, 6, 8)),
):
    register(_m)

EVALUATION_METHODS = (
    "target", "draft", "exact_g1", "exact_g2", "exact_g3", "exact_g4", "exact_adaptive", "top1_0.5_g2", "top1_0.9_g2",
    "relaxed_0.05_g2", "relaxed_0.1_g2", "relaxed_0.3_g2", "test3_e2", "test3_e3", "test3_e4", "test3_e5", "code_e3",
    "code_e5",
)
"""The methods of the stored evaluation of the bundled pair (``evaluation.json``), in its order."""
