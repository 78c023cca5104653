"""Test harness for SDVAR parallel verification (notebook-facing).

``SDVARParallelV1Tester(sdvar).run_all_tests(B=2, gamma=2)`` checks every step of
:class:`sdvar_lib.SDVAR` against independent reference computations and prints a summary.
"""

from test_framework.greedy import GreedyAgreement, greedy_agreement
from test_framework.results import HarnessSummary, TestResult, format_summary, print_summary, summarize
from test_framework.tester import TEST_NAMES, SDVARParallelV1Tester
from test_framework.tolerances import Bound, Tolerances

__all__ = [
    "SDVARParallelV1Tester",
    "TestResult",
    "HarnessSummary",
    "Tolerances",
    "Bound",
    "TEST_NAMES",
    "GreedyAgreement",
    "greedy_agreement",
    "print_summary",
    "format_summary",
    "summarize",
]
