"""Checkpoint loading: weights-only, clear errors for missing files and mismatching state dicts."""

from __future__ import annotations

import pickle

import pytest
import torch

from sdvar_lib.models import (
    CheckpointError,
    build_tiny,
    build_vae,
    build_var,
    load_checkpoint_file,
    load_official,
    load_state_dict_checked,
    presets,
)
from sdvar_lib.models.checkpoints import HUB_REPO_ID


def test_missing_official_files_give_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_official(16, 30, ckpt_dir=tmp_path, download=False)
    msg = str(info.value)
    for needle in ("vae_ch160v4096z32.pth", "var_d16.pth", "var_d30.pth", HUB_REPO_ID, "load_bundled"):
        assert needle in msg


def test_offline_download_failure_names_files(tmp_path, monkeypatch):
    import sdvar_lib.models.checkpoints as ckpt

    def offline(filename, cache_dir):
        raise OSError("network is unreachable")

    monkeypatch.setattr(ckpt, "_download", offline)
    with pytest.raises(FileNotFoundError, match="could not be downloaded") as info:
        load_official(20, 24, ckpt_dir=tmp_path, download=True)
    assert "var_d20.pth" in str(info.value) and "network is unreachable" in str(info.value)


def test_wrong_depth_names_first_mismatch():
    vae = build_vae("meta")
    d16 = build_var(vae, 16, "meta")
    d20_state = build_var(vae, 20, "meta").state_dict()
    with pytest.raises(CheckpointError, match=r"key 'pos_start' has shape \(1, 1, 1280\).*depth-20 VAR.*depth 16"):
        load_state_dict_checked(d16, d20_state, "var_d20.pth")


def test_missing_and_unexpected_keys():
    vae, var = build_tiny(0)
    state = var.state_dict()
    missing = {k: v for k, v in state.items() if k != "head.bias"}
    with pytest.raises(CheckpointError, match="missing key 'head.bias'"):
        load_state_dict_checked(var, missing)
    extra = dict(state, bogus=torch.zeros(1))
    with pytest.raises(CheckpointError, match="unexpected key 'bogus'"):
        load_state_dict_checked(var, extra)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_state_dict_checked(var, {"a": 1})


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_full_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint_file(path)


def test_official_files_load_from_local_folder(tmp_path):
    """A folder of state dicts in the official format loads strictly through load_official."""
    import sdvar_lib.models.checkpoints as ckpt

    # Shrink the official presets so the round trip is cheap; the loading path is the same.
    small_vae = dict(presets.official_vae_kwargs(), ch=32, vocab_size=16, z_channels=4)
    small_var = {d: dict(presets.official_var_kwargs(d), depth=1, embed_dim=32, num_heads=1) for d in (16, 30)}
    mp = pytest.MonkeyPatch()
    mp.setattr(presets, "official_vae_kwargs", lambda: small_vae)
    mp.setattr(presets, "official_var_kwargs", lambda depth: small_var[depth])
    mp.setattr(ckpt, "official_var_kwargs", lambda depth: small_var[depth])
    try:
        vae = build_vae()
        torch.save(vae.state_dict(), tmp_path / "vae_ch160v4096z32.pth")
        for d in (16, 30):
            torch.save({"model": build_var(vae, d).state_dict()} if d == 30 else build_var(vae, d).state_dict(),
                       tmp_path / f"var_d{d}.pth")
        pair = load_official(16, 30, ckpt_dir=tmp_path, download=False)
    finally:
        mp.undo()
    assert pair.draft.vae is pair.vae and pair.target.vae is pair.vae
    ref = torch.load(tmp_path / "var_d16.pth", weights_only=True)
    assert all(torch.equal(pair.draft.state_dict()[k], v) for k, v in ref.items())
