"""Result records of the harness and its one printing function, :func:`print_summary`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass

__all__ = [
    "TestResult",
    "HarnessSummary",
    "summarize",
    "format_summary",
    "print_summary",
    "CheckLog",
    "QueryDetails",
    "SplitDetails",
    "DraftDetails",
    "VerifyDetails",
    "StateUpdateDetails",
    "CacheDetails",
    "GreedyDetails",
    "EndToEndDetails",
    "Test3Details",
    "BaselineDetails",
    "SampledDetails",
]


@dataclass
class TestResult:
    """Outcome of one harness test: what failed and why, the measured numbers, and how long it took."""

    __test__ = False  # not a pytest test class

    test_name: str
    passed: bool
    message: str
    details: object | None = None
    """A details dataclass of the test (``None`` when the test raised before measuring)."""
    duration_s: float = 0.0

    def details_dict(self) -> dict:
        """The details as a plain dict (for printing or JSON)."""
        if self.details is None:
            return {}
        return asdict(self.details) if is_dataclass(self.details) else dict(self.details)  # type: ignore[arg-type]


class CheckLog:
    """Collects the failed invariants of one test (the first few make its message) and counts the checks made.

    A comparison over nothing never passes: :meth:`require_all` and :meth:`require_pairs` fail on an empty
    list (and on lists of different lengths), and the harness fails a test that made no check at all.
    """

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.checked = 0

    def require(self, condition: bool, message: str) -> bool:
        self.checked += 1
        if not condition:
            self.failures.append(message)
        return bool(condition)

    def require_all(self, conditions: Iterable[bool], message: str) -> bool:
        """Every condition holds, and there is at least one (an empty list fails: nothing was compared)."""
        values = [bool(c) for c in conditions]
        if not values:
            return self.require(False, f"nothing to compare: {message}")
        return self.require(all(values), message)

    def require_pairs(self, a: Sequence, b: Sequence, holds: Callable[[object, object], bool], message: str) -> bool:
        """``holds(x, y)`` for every pair of ``a`` and ``b``, which must be equally long and not empty."""
        if len(a) != len(b):
            return self.require(False, f"{message} (the lists differ in length: {len(a)} vs {len(b)})")
        return self.require_all((holds(x, y) for x, y in zip(a, b, strict=True)), message)

    @property
    def ok(self) -> bool:
        return not self.failures

    def message(self, success: str, limit: int = 3) -> str:
        if self.ok:
            return success
        extra = f" (+{len(self.failures) - limit} more)" if len(self.failures) > limit else ""
        return "; ".join(self.failures[:limit]) + extra


# ---- details of every test ----------------------------------------------------------------------
@dataclass
class QueryDetails:
    start_stages: list[int]
    chunk_lengths: list[int]
    max_input_abs_diff: float
    max_cfg_half_abs_diff: float
    masks_checked: int


@dataclass
class SplitDetails:
    start_stages: list[int]
    offsets_per_chunk: list[list[int]]
    max_abs_diff: float


@dataclass
class DraftDetails:
    scenarios: list[str]
    proposed_stages: list[list[int]]
    draft_cache_lengths: list[int]
    max_prob_sum_error: float
    max_q_abs_diff: float
    max_f_hat_abs_diff: float


@dataclass
class VerifyDetails:
    start_stages: list[int]
    max_abs_diff_per_start: list[float]
    max_abs_diff: float
    tolerance: float
    max_prob_abs_diff: float
    target_passes_per_verify: list[int]


@dataclass
class StateUpdateDetails:
    rounds: int
    committed_per_round: list[int]
    max_f_hat_abs_diff: float
    target_cache_lengths: list[int]
    draft_cache_lengths: list[int]


@dataclass
class CacheDetails:
    rounds: int
    committed_stages: list[int]
    target_cache_lengths: list[int]
    draft_cache_lengths: list[int]
    target_max_abs_diff_per_round: list[float]
    draft_max_abs_diff_per_round: list[float]
    target_max_abs_diff_per_layer: list[float]
    draft_max_abs_diff_per_layer: list[float]


@dataclass
class GreedyDetails:
    identical: bool
    differing_tokens: int
    max_argmax_gap: float
    tolerance: float
    target_passes: int
    num_stages: int


@dataclass
class EndToEndDetails:
    image_shape: list[int]
    image_min: float
    image_max: float
    target_passes: int
    draft_passes: int
    rounds: int
    committed_stages: int
    proposed_tokens: int
    accepted_tokens: int
    token_acceptance: float | None
    max_image_abs_diff: float


@dataclass
class Test3Details:
    __test__ = False

    entry_nums: list[int]
    draft_prefix_identical: list[bool]
    target_suffix_identical: list[bool]
    max_argmax_gap: list[float]
    target_passes: list[int]
    draft_passes: list[int]


@dataclass
class BaselineDetails:
    tokens_identical: bool
    mean_abs_diff: float
    l2_distance: float
    pearson: float
    parallel_target_passes: int
    baseline_target_passes: int
    tolerance: float = field(default=0.0)


@dataclass
class SampledDetails:
    stage: int
    rows: int
    draws_per_row: int
    chi_square: float
    dof: int
    p_value: float
    accepted: int
    expected_accepted: float
    acceptance_z: float
    bonus_stage: int | None
    bonus_rows: int
    bonus_chi_square: float
    bonus_dof: int
    bonus_p_value: float
    bonus_argmax_share: float
    expected_bonus_argmax_share: float
    alpha: float


# ---- summary ------------------------------------------------------------------------------------
@dataclass
class HarnessSummary:
    total: int
    passed: int
    failed: list[str]
    duration_s: float

    @property
    def all_passed(self) -> bool:
        return not self.failed


def summarize(results: Sequence[TestResult]) -> HarnessSummary:
    return HarnessSummary(
        total=len(results), passed=sum(r.passed for r in results), failed=[r.test_name for r in results if not r.passed],
        duration_s=sum(r.duration_s for r in results),
    )


def _format_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.3g}" for v in value) + "]"
    return str(value)


def format_summary(
    results: Sequence[TestResult], show_times: bool = True, show_details: bool = False, title: str = "SDVARParallelV1Tester"
) -> str:
    """The text :func:`print_summary` prints."""
    s = summarize(results)
    head = f"{title}: {s.total} tests, {s.passed} passed, {len(s.failed)} failed"
    if show_times:
        head += f" ({s.duration_s:.2f} s)"
    lines = [head]
    width = max((len(r.test_name) for r in results), default=0)
    for r in results:
        status = "PASS" if r.passed else "FAIL"
        time_part = f" {r.duration_s:6.2f} s " if show_times else " "
        lines.append(f"  {status}  {r.test_name:<{width}}{time_part} {r.message}")
        if show_details:
            for key, value in r.details_dict().items():
                lines.append(f"          {key}: {_format_value(value)}")
    if s.failed:
        lines.append("failed: " + ", ".join(s.failed))
    return "\n".join(lines)


def print_summary(
    results: Sequence[TestResult], show_times: bool = True, show_details: bool = False, title: str = "SDVARParallelV1Tester"
) -> HarnessSummary:
    """Print one line per test (PASS/FAIL, time, message) and return the :class:`HarnessSummary`."""
    print(format_summary(results, show_times=show_times, show_details=show_details, title=title))
    return summarize(results)
