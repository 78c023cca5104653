"""The harness never reports a pass for a comparison over nothing.

An empty list compared element by element, two empty tensors, lists of different lengths zipped
together (``zip`` stops at the shorter) and a test body that checks nothing all used to read as a
match; each now fails (or is refused as an argument, ``entry_nums=[]``).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sdvar_lib import SDVAR
from test_framework import SDVARParallelV1Tester
from test_framework.reference import max_abs_diff
from test_framework.results import CheckLog


def test_an_empty_list_of_conditions_fails():
    checks = CheckLog()
    assert not checks.require_all([], "every stage matches")
    assert not checks.ok and checks.failures == ["nothing to compare: every stage matches"]
    assert CheckLog().require_all([True, True], "x") and not CheckLog().require_all([True, False], "x")


def test_pairs_must_be_equally_long_and_not_empty():
    assert not CheckLog().require_pairs([], [], lambda a, b: a == b, "equal")
    short = CheckLog()
    assert not short.require_pairs([1], [1, 2], lambda a, b: a <= b, "within")
    assert "differ in length: 1 vs 2" in short.failures[0]
    assert CheckLog().require_pairs([1, 2], [1, 3], lambda a, b: a <= b, "within")


def test_two_empty_tensors_are_not_a_match():
    with pytest.raises(ValueError, match="nothing to compare"):
        max_abs_diff(torch.empty(0), torch.empty(2, 0))
    assert max_abs_diff(torch.zeros(2), torch.ones(2)) == 1.0


def test_a_test_that_checks_nothing_fails(sd):
    result = SDVARParallelV1Tester(sd)._run("test_nothing", lambda checks: ("all good", None))
    assert not result.passed and "made no check" in result.message


def test_an_empty_entry_list_is_refused(sd):
    with pytest.raises(ValueError, match="entry_nums must not be empty"):
        SDVARParallelV1Tester(sd).test_compare_with_test3(B=1, entry_nums=[])


class DroppedRoundsSDVAR(SDVAR):
    """Loses the per-round acceptance counts of its statistics (a bookkeeping bug a zip over them cannot see)."""

    def generate_parallel(self, *args, **kwargs):
        out = super().generate_parallel(*args, **kwargs)
        return replace(out, stats=replace(out.stats, stages_accepted_per_round=[]))


def test_statistics_with_a_lost_list_fail_the_end_to_end_test(tiny_pair):
    _, draft, target = tiny_pair
    result = SDVARParallelV1Tester(DroppedRoundsSDVAR(draft, target)).test_end_to_end(B=2, gamma=2)
    assert not result.passed and "accepted stages per round [] within" in result.message, result.message
    assert SDVARParallelV1Tester(SDVAR(draft, target)).test_end_to_end(B=2, gamma=2).passed
