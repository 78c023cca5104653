"""No silent skips: a pytest session fails when any test skips for a reason CI cannot accept.

A test that cannot run here is a failure, not a skip, with these exceptions (each recognised from what
the test is, not from its wording alone):

- **GPU tests without CUDA**: the test is marked ``gpu``, or its skip reason says CUDA is not available,
  and ``torch.cuda.is_available()`` is false on this machine;
- **CPU-only checks on a CUDA machine**: the test is marked ``no_cuda`` (it checks what happens without
  CUDA) and ``torch.cuda.is_available()`` is true;
- **the reference fixtures are absent**: the test skipped by raising :class:`FixtureAbsent` (what
  ``tests/conftest.py``'s ``require_fixture`` raises when ``../shared/fixtures`` is not beside the
  checkout, e.g. a user's clone).

Any other skip (a package that is not installed, an ``importorskip``, Triton's interpreter not active,
bundled models absent, a notebook cell marked ``NBVAL_SKIP``, a module skipped at collection...) is
listed at the end of the run and the session's exit status becomes 1. Loaded for ``tests/`` and
``notebooks/`` alike by the repository's root ``conftest.py`` (``pytest_plugins``); elsewhere with
``-p tests.skip_policy``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import pytest

__all__ = ["FixtureAbsent", "CUDA_REASON", "SkipPolicy", "allowed_skip"]

CUDA_REASON = re.compile(r"CUDA is not available|needs CUDA|no CUDA (device|GPU)", re.IGNORECASE)
"""A skip reason that says the test needs CUDA."""


class FixtureAbsent(pytest.skip.Exception):
    """A skip because the reference fixtures (``../shared/fixtures``) are not beside the checkout: allowed."""


@functools.cache
def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def allowed_skip(markers: set[str], reason: str, fixture_absent: bool, cuda_available: bool) -> str | None:
    """Why a skip is allowed (a short name), or ``None`` when it must fail the session."""
    if fixture_absent:
        return "reference fixtures absent"
    if not cuda_available and ("gpu" in markers or CUDA_REASON.search(reason)):
        return "no CUDA"
    if cuda_available and "no_cuda" in markers:
        return "checks a machine without CUDA"
    return None


@dataclass(frozen=True)
class _Skip:
    nodeid: str
    reason: str


def _reason(report) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


class SkipPolicy:
    """The hooks: collect the skips that are not allowed, list them, fail the session."""

    name = "sdvar-skip-policy"

    def __init__(self) -> None:
        self.offending: list[_Skip] = []

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        reason = _reason(report)
        absent = call.excinfo is not None and call.excinfo.errisinstance(FixtureAbsent)
        markers = {m.name for m in item.iter_markers()}
        if allowed_skip(markers, reason, absent, _cuda_available()) is None:
            self.offending.append(_Skip(report.nodeid, reason))

    def pytest_collectreport(self, report) -> None:
        if report.skipped:  # a module or class skipped at collection: only "no CUDA" is allowed
            reason = _reason(report)
            if allowed_skip(set(), reason, False, _cuda_available()) is None:
                self.offending.append(_Skip(report.nodeid or "<collection>", reason))

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        if self.offending and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.offending:
            return
        terminalreporter.write_sep("=", f"{len(self.offending)} skip(s) fail the session (tests/skip_policy.py)",
                                   red=True, bold=True)
        for skip in self.offending:
            terminalreporter.write_line(f"SKIPPED-NOT-ALLOWED {skip.nodeid}: {skip.reason}")
        terminalreporter.write_line("A test that cannot run here must run or fail; allowed skips: GPU tests without "
                                    "CUDA, no_cuda tests where CUDA is present, absent ../shared/fixtures.")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped without it")
    config.addinivalue_line("markers", "no_cuda: checks behaviour on a machine without CUDA; skipped where CUDA is present")
    if not config.pluginmanager.has_plugin(SkipPolicy.name):
        config.pluginmanager.register(SkipPolicy(), SkipPolicy.name)
