"""What one benchmark run does (:class:`BenchConfig`), every value checked when it is built.

The command line builds a :class:`BenchConfig` before touching a model or the GPU, so that a bad
argument is reported as one line (:mod:`sdvar_lib.bench.cli`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sdvar_lib.bench.bounds import VarSpec
from sdvar_lib.bench.components import COMPONENTS
from sdvar_lib.bench.methods import DEFAULT_METHODS, BenchMethod, bench_row, run_order
from sdvar_lib.bench.scenarios import SCENARIOS
from sdvar_lib.models.presets import OFFICIAL_PATCH_NUMS, check_official_depth
from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.util.checks import check_bool, check_choice, check_int, check_int_sequence, check_probability

__all__ = ["BenchConfig"]

NUM_STAGES = len(OFFICIAL_PATCH_NUMS)


def _unique(values: tuple, name: str) -> None:
    repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
    if repeated:
        raise ValueError(f"{name} must not repeat, got {', '.join(map(str, repeated))} more than once")


def _check_tuple(value, name: str) -> tuple:
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be a tuple, got {value!r}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    return tuple(value)


@dataclass(frozen=True)
class BenchConfig:
    """Pairs, batch sizes, rows, scenarios, repetitions and sampling of one run (official 10-stage models).

    ``methods`` are row names (:func:`~sdvar_lib.bench.methods.bench_row`; older names are accepted
    and stored as today's); ``scenarios`` are :data:`~sdvar_lib.bench.scenarios.SCENARIOS` names.
    """

    pairs: tuple[tuple[int, int], ...] = ((16, 30), (16, 24))
    batches: tuple[int, ...] = (1, 8, 32)
    methods: tuple[str, ...] = DEFAULT_METHODS
    scenarios: tuple[str, ...] = ("exact", "all")
    acceptance_profile: tuple[float, ...] | None = None
    per_sample_acceptance: bool = False
    repeats: int = 10
    warmup: int = 2
    passes_only_repeats: int = 5
    calibration_calls: int = 2
    calibration_replays: int = 3
    top_k: int = 900
    top_p: float = 0.96
    cfg: float = 1.5
    use_cuda_graphs: bool = True
    graph_decode: bool = True
    fast_decode: bool = True
    """Fast-path rows decode with the fast VQVAE decode (bf16/fp16 channels-last, Triton GroupNorm); ``False``:
    the reference decode under bf16 autocast (the rows of the runs before the fast decode existed)."""
    cudnn_benchmark: bool = True
    out: str = "bench_out"
    profile_stages: tuple[int, ...] = ()
    """Stages whose single-stage target pass is profiled after the bench (kernel breakdown)."""
    profile_decode: bool = False
    """Also profile the fast VQVAE decode's kernels at every batch size after the bench."""
    components: tuple[str, ...] = ()
    """Pieces of a call timed alone per pair and batch, of :data:`~sdvar_lib.bench.components.COMPONENTS`."""

    def __post_init__(self) -> None:
        pairs = _check_tuple(self.pairs, "pairs")
        for pair in pairs:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"every pair must be (draft depth, target depth), got {pair!r}")
            check_official_depth(pair[0], "draft depth")
            check_official_depth(pair[1], "target depth")
        object.__setattr__(self, "pairs", tuple(tuple(p) for p in pairs))
        _unique(self.pairs, "pairs")
        object.__setattr__(self, "batches", check_int_sequence(self.batches, "batches", 1))
        _unique(self.batches, "batches")
        rows = tuple(bench_row(m) for m in _check_tuple(self.methods, "methods"))
        for row in rows:
            if row.method is not None:
                row.method.check_for(NUM_STAGES)
        object.__setattr__(self, "methods", tuple(r.name for r in rows))
        _unique(self.methods, "methods")
        for s in _check_tuple(self.scenarios, "scenarios"):
            check_choice(s, "every scenario", SCENARIOS)
        object.__setattr__(self, "scenarios", tuple(self.scenarios))
        _unique(self.scenarios, "scenarios")
        self._check_profile()
        check_bool(self.per_sample_acceptance, "per_sample_acceptance")
        check_int(self.repeats, "repeats", 1)
        check_int(self.warmup, "warmup", 0)
        check_int(self.passes_only_repeats, "passes_only_repeats", 0)
        check_int(self.calibration_calls, "calibration_calls", 1)
        check_int(self.calibration_replays, "calibration_replays", 1)
        self.sampling.check_vocabulary(VarSpec.official(self.pairs[0][1]).vocab)
        for name in ("use_cuda_graphs", "graph_decode", "fast_decode", "cudnn_benchmark"):
            check_bool(getattr(self, name), name)
        if not isinstance(self.out, str) or not self.out:
            raise TypeError(f"out must be a non-empty folder path (str), got {self.out!r}")
        object.__setattr__(self, "profile_stages", check_int_sequence(self.profile_stages, "profile_stages", 0,
                                                                      NUM_STAGES - 1, non_empty=False))
        _unique(self.profile_stages, "profile_stages")
        check_bool(self.profile_decode, "profile_decode")
        if not isinstance(self.components, (tuple, list)):
            raise TypeError(f"components must be a tuple of names, got {self.components!r}")
        for c in self.components:
            check_choice(c, "every component", COMPONENTS)
        object.__setattr__(self, "components", tuple(self.components))
        _unique(self.components, "components")

    def _check_profile(self) -> None:
        profile = self.acceptance_profile
        if profile is None:
            if "profile" in self.scenarios:
                raise ValueError("scenario 'profile' needs --acceptance-profile p0,p1,... (one probability per stage)")
            return
        profile = _check_tuple(profile, "acceptance_profile")
        if len(profile) != NUM_STAGES:
            raise ValueError(f"--acceptance-profile needs {NUM_STAGES} probabilities (one per stage), got {len(profile)}")
        for p in profile:
            check_probability(p, "every value of --acceptance-profile")
        if "profile" not in self.scenarios:
            raise ValueError("--acceptance-profile is given but the scenarios do not include 'profile'")
        object.__setattr__(self, "acceptance_profile", tuple(float(p) for p in profile))

    @property
    def sampling(self) -> SamplingConfig:
        """CFG and filtering of every timed call (raises for bad values)."""
        return SamplingConfig(cfg=self.cfg, top_k=self.top_k, top_p=self.top_p)

    @property
    def rows(self) -> list[BenchMethod]:
        """The configured rows in timing order (:func:`~sdvar_lib.bench.methods.run_order`)."""
        return run_order(bench_row(m) for m in self.methods)
