"""Shared pytest fixtures: reference-fixture paths and tiny seeded models."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch

from sdvar_lib import SDVAR
from sdvar_lib.models import build_tiny
from tests.skip_policy import FixtureAbsent

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES_DIR = Path(os.environ.get("SDVAR_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))
REFERENCE_DIR = FIXTURES_DIR / "reference_var_tiny"
MANIFEST_PATH = FIXTURES_DIR / "official_state_dict_manifest.json"

# The test models are tiny: one thread avoids OpenMP oversubscription on small shared machines
# (seen here: 100x slower calls when two processes each spun two threads on two cores).
torch.set_num_threads(int(os.environ.get("SDVAR_TEST_THREADS", "1")))


def require_fixture(path: Path) -> Path:
    """``path`` if it exists; otherwise the test skips, the one skip besides GPU tests that does not fail the session
    (tests/skip_policy.py): a clone beside no ``shared/`` folder has no reference fixtures."""
    if not path.exists():
        raise FixtureAbsent(
            f"reference fixture {path} is absent (it lives in ../shared/fixtures beside the checkout, "
            "or set SDVAR_FIXTURES); parity tests need it"
        )
    return path


@pytest.fixture(scope="session")
def reference_config() -> dict:
    return json.loads((require_fixture(REFERENCE_DIR) / "config.json").read_text())


@pytest.fixture(scope="session")
def reference_expected() -> dict:
    return torch.load(require_fixture(REFERENCE_DIR) / "expected.pt", weights_only=True)


@pytest.fixture(scope="session")
def reference_models(reference_config):
    from sdvar_lib.models import VAR, VQVAE
    from sdvar_lib.models.checkpoints import load_checkpoint_file, load_state_dict_checked

    vae = VQVAE(**reference_config["vae"])
    var = VAR(vae, **reference_config["var"]).eval()
    load_state_dict_checked(vae, load_checkpoint_file(REFERENCE_DIR / "vae.pth"))
    load_state_dict_checked(var, load_checkpoint_file(REFERENCE_DIR / "var.pth"))
    return vae, var


@pytest.fixture(scope="session")
def tiny_pair():
    """A tiny random target (depth 2, seed 0) and a different draft (depth 1, seed 1) sharing one VQVAE."""
    vae, target = build_tiny(seed=0)
    _, draft = build_tiny(seed=1, depth=1, vae=vae)
    return vae, draft, target


@pytest.fixture(scope="module")
def sd(tiny_pair) -> SDVAR:
    """SDVAR over the tiny pair (a different draft and target)."""
    _, draft, target = tiny_pair
    return SDVAR(draft, target)


@pytest.fixture(scope="module")
def self_sd(tiny_pair) -> SDVAR:
    """SDVAR whose draft is a copy of the target (same weights, shared VQVAE)."""
    _, _, target = tiny_pair
    twin = copy.deepcopy(target)
    twin.vae_proxy = target.vae_proxy  # share the VQVAE, as the official pair does
    return SDVAR(twin, target)


@pytest.fixture
def cuda_device():
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return torch.device("cuda")
