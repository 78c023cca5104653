"""tests/skip_policy.py: a session with a skip for any reason but the allowed ones fails; allowed skips pass.

Each case runs pytest in a subprocess on a tiny test file in a tmp folder (outside the repository, so only the
plugin under test is loaded, with ``-p tests.skip_policy``), and checks the exit status and the listing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from tests.skip_policy import allowed_skip

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()


def run_pytest(tmp_path: Path, files: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    for name, source in files.items():
        (tmp_path / name).write_text(textwrap.dedent(source))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.skip_policy", "-p", "no:cacheprovider", "-q", "-rs",
                           *files, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def flagged(done: subprocess.CompletedProcess) -> set[str]:
    """Node ids that the policy listed as skips that fail the session."""
    return {line.split()[1].rstrip(":") for line in done.stdout.splitlines() if line.startswith("SKIPPED-NOT-ALLOWED ")}


# test name -> (source, allowed on this machine)
CASES = {
    "test_another_reason": ("""
        def test_another_reason(): pytest.skip("some package is not installed")
        """, False),
    "test_importorskip": ("""
        def test_importorskip(): pytest.importorskip("a_module_that_does_not_exist_here")
        """, False),
    "test_skipif_mark": ("""
        @pytest.mark.skipif(True, reason="bundled models absent")
        def test_skipif_mark(): pass
        """, False),
    "test_gpu_marked": ("""
        @pytest.mark.gpu
        def test_gpu_marked(): pytest.skip("needs a GPU")
        """, not CUDA),
    "test_cuda_reason": ("""
        def test_cuda_reason(): pytest.skip("CUDA is not available")
        """, not CUDA),
    "test_no_cuda_marked": ("""
        @pytest.mark.no_cuda
        def test_no_cuda_marked(): pytest.skip("checks the refusal on a machine without CUDA")
        """, CUDA),
    "test_fixtures_absent": ("""
        def test_fixtures_absent(): raise FixtureAbsent("reference fixture ../shared/fixtures/x is absent")
        """, True),
    "test_fixtures_absent_in_a_session_fixture": ("""
        @pytest.fixture(scope="session")
        def reference():
            raise FixtureAbsent("reference fixture ../shared/fixtures/x is absent")
        def test_fixtures_absent_in_a_session_fixture(reference): pass
        """, True),
    "test_fixture_wording_without_fixture_absent": ("""
        def test_fixture_wording_without_fixture_absent(): pytest.skip("reference fixture ../shared/fixtures/x is absent")
        """, False),
    "test_xfail_is_not_a_skip": ("""
        @pytest.mark.xfail(reason="known")
        def test_xfail_is_not_a_skip(): assert False
        """, True),
    "test_passes": ("""
        def test_passes(): pass
        """, True),
}
HEADER = "import pytest\nfrom tests.skip_policy import FixtureAbsent\n"


def source_of(names) -> str:
    return HEADER + "".join(textwrap.dedent(CASES[n][0]) for n in names)


def test_every_skip_that_is_not_allowed_is_listed_and_fails_the_session(tmp_path):
    done = run_pytest(tmp_path, {"test_case.py": source_of(CASES)})
    assert done.returncode == 1, done.stdout[-3000:]
    assert flagged(done) == {f"test_case.py::{n}" for n, (_, allowed) in CASES.items() if not allowed}, done.stdout[-3000:]
    assert "skip(s) fail the session" in done.stdout


def test_allowed_skips_pass(tmp_path):
    done = run_pytest(tmp_path, {"test_case.py": source_of(n for n, (_, allowed) in CASES.items() if allowed)})
    assert done.returncode == 0, done.stdout[-3000:]
    assert not flagged(done)


def test_a_module_skipped_at_collection_fails_the_session(tmp_path):
    done = run_pytest(tmp_path, {"test_case.py": """
        import pytest
        pytest.skip("Triton's CPU interpreter is not available here", allow_module_level=True)
        def test_never(): pass
        """, "test_other.py": "def test_ok(): pass\n"})
    assert done.returncode == 1 and flagged(done) == {"test_case.py"}, done.stdout[-3000:]


def test_a_failing_session_keeps_its_status_and_lists_the_skips(tmp_path):
    done = run_pytest(tmp_path, {"test_case.py": HEADER + """
def test_fails(): assert False
def test_skips(): pytest.skip("some package is not installed")
"""})
    assert done.returncode == 1
    assert "SKIPPED-NOT-ALLOWED test_case.py::test_skips: some package is not installed" in done.stdout


def test_the_rule():
    assert allowed_skip({"gpu"}, "anything", False, cuda_available=False) == "no CUDA"
    assert allowed_skip({"gpu"}, "Triton is not installed", False, cuda_available=True) is None  # CUDA is here
    assert allowed_skip(set(), "CUDA is not available", False, cuda_available=False) == "no CUDA"
    assert allowed_skip(set(), "CUDA is not available", False, cuda_available=True) is None
    assert allowed_skip({"no_cuda"}, "x", False, cuda_available=True) == "checks a machine without CUDA"
    assert allowed_skip({"no_cuda"}, "x", False, cuda_available=False) is None
    assert allowed_skip(set(), "x", True, cuda_available=False) == "reference fixtures absent"
    assert allowed_skip(set(), "nbconvert is not installed", False, cuda_available=False) is None


def test_the_repository_loads_the_policy_for_tests_and_notebooks():
    """The root conftest.py loads the plugin, so `pytest notebooks` is covered as well as `pytest tests`."""
    assert 'pytest_plugins = ["tests.skip_policy"]' in (ROOT / "conftest.py").read_text()
    for path in ("notebooks/02_parallel_verify.ipynb",):  # tests/ loads it the same way, through the root conftest
        done = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "--trace-config", "-p", "no:cacheprovider", path],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "<tests.skip_policy.SkipPolicy object" in done.stdout, f"{path}: the skip policy is not loaded"
