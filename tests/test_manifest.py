"""Official presets have exactly the keys and shapes of the released state dicts."""

from __future__ import annotations

import json

import pytest

from sdvar_lib.models import OFFICIAL_DEPTHS, build_vae, build_var
from tests.conftest import MANIFEST_PATH, require_fixture


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(require_fixture(MANIFEST_PATH).read_text())


def _shapes(module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def test_vae_preset_matches_manifest(manifest):
    assert _shapes(build_vae("meta")) == manifest["vae_ch160v4096z32"]


@pytest.mark.parametrize("depth", OFFICIAL_DEPTHS)
def test_var_preset_matches_manifest(manifest, depth):
    vae = build_vae("meta")
    got = _shapes(build_var(vae, depth, "meta"))
    expected = manifest[f"var_d{depth}"]
    assert set(got) == set(expected), f"keys differ: {sorted(set(got) ^ set(expected))[:5]}"
    assert got == expected
