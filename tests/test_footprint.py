"""The official-size pair on a CPU says up front what it will cost, and refuses where it cannot fit.

``load_pair("random-official")`` on a CPU used to print nothing for minutes while growing past 10 GB.
Now the footprint (counted on the meta device) is logged at WARNING before anything is built, and a
pair that cannot fit in the memory free now raises ``InsufficientMemoryError`` (a ``ValueError``)
before a byte is allocated. The available memory is monkeypatched: nothing here builds the pair.
"""

from __future__ import annotations

import logging

import pytest

from sdvar_lib.models import build_tiny, checkpoints, footprint, load_pair
from sdvar_lib.models.footprint import check_official_pair_fits, official_pair_footprint
from sdvar_lib.models.presets import ModelPair
from sdvar_lib.util import memory
from sdvar_lib.util.memory import InsufficientMemoryError, available_now_bytes

GIB = 2**30


def test_the_official_sizes_are_counted():
    fp = official_pair_footprint(16, 30)
    assert 300e6 < fp.draft_parameters < 320e6  # VAR-d16: 310M parameters (the VAR paper)
    assert 1.95e9 < fp.target_parameters < 2.05e9  # VAR-d30: 2.0B
    parameters = fp.vae_parameters + fp.draft_parameters + fp.target_parameters
    assert 4 * parameters <= fp.weight_bytes < 4.01 * parameters  # float32, plus small buffers
    # a KV cache holds keys and values of every layer for 2B rows x L = 680 positions x C = 64 depth
    assert fp.cache_bytes_per_image == sum(2 * depth * 2 * 680 * (64 * depth) * 4 for depth in (16, 30))
    assert fp.loading_bytes == 0 and official_pair_footprint(16, 30, reading_files=True).loading_bytes == 4 * fp.target_parameters
    # one CFG-doubled pass over 680 tokens: at most 2 FLOPs per parameter per row and token, plus attention
    assert 0.5 * 2 * 2 * 680 * fp.target_parameters < fp.target_flops_per_image < 1.5 * 2 * 2 * 680 * fp.target_parameters
    assert 0 < fp.draft_flops_per_image < fp.target_flops_per_image and fp.decode_flops_per_image > 0


@pytest.fixture
def no_build(monkeypatch):
    """Building or reading the official pair fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the official pair must not be built or read here")

    monkeypatch.setattr(checkpoints, "build_official_pair", refuse)
    monkeypatch.setattr(checkpoints, "load_checkpoint_file", refuse)
    monkeypatch.setattr(footprint, "measure_matmul_flops", lambda: 1e10)


def _free(monkeypatch, nbytes: int) -> None:
    monkeypatch.setattr(footprint, "available_now_bytes", lambda device: nbytes)


def test_a_pair_that_cannot_fit_is_refused_before_it_is_built(monkeypatch, no_build):
    _free(monkeypatch, 4 * GIB)
    with pytest.raises(InsufficientMemoryError) as info:
        load_pair("random-official", device="cpu")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "needs about 9.8 GiB on the CPU" in message and "only 4.0 GiB" in message, message
    assert "device='cuda'" in message and "bundled" in message


def test_the_cost_is_logged_before_the_pair_is_built(monkeypatch, caplog):
    _free(monkeypatch, 1024 * GIB)
    monkeypatch.setattr(footprint, "measure_matmul_flops", lambda: 1e10)
    vae, target = build_tiny(seed=0)
    built = ModelPair(vae=vae, draft=target, target=target, description="stand-in")
    order = []
    monkeypatch.setattr(checkpoints, "build_official_pair",
                        lambda *a, **k: order.append(["built"] + [r.levelname for r in caplog.records]) or built)
    with caplog.at_level(logging.WARNING, logger="sdvar_lib.models.footprint"):
        assert load_pair("random-official", device="cpu") is built
    assert order == [["built", "WARNING"]], "the warning must come before the build"
    text = caplog.records[0].getMessage()
    fp = official_pair_footprint(16, 30)
    seconds = round((fp.target_flops_per_image + fp.decode_flops_per_image) / 1e10)
    assert "about 9.8 GiB of memory" in text and "of the 1024.0 GiB available" in text, text
    assert f"roughly {seconds} s per image for the target alone" in text and "10 GFLOP/s" in text, text


def test_official_files_are_not_read_when_the_load_cannot_fit(monkeypatch, tmp_path, no_build):
    """Loading the files needs a state dict beside its model: 12 GiB hold the pair, not the load."""
    monkeypatch.setattr(checkpoints, "resolve_official_files", lambda names, **kw: {n: tmp_path / n for n in names})
    _free(monkeypatch, 12 * GIB)
    for call in (lambda: checkpoints.load_official(device="cpu"), lambda: load_pair("official", device="cpu")):
        with pytest.raises(InsufficientMemoryError, match="while a checkpoint file is read"):
            call()  # no fallback to the bundled pair: the files are there, the memory is not


def test_nothing_is_checked_off_the_cpu(monkeypatch):
    _free(monkeypatch, 0)
    assert check_official_pair_fits(16, 30, "meta") is None


def test_the_memory_available_now(tmp_path):
    free = available_now_bytes("cpu")
    assert free is None or free > 0
    assert available_now_bytes("meta") is None
    assert memory._meminfo_available("MemTotal:  10 kB\nMemAvailable:    2048 kB\n") == 2048 * 1024
    assert memory._meminfo_available("MemTotal:  10 kB\n") is None
    (tmp_path / "memory.max").write_text("max\n")
    assert memory._cgroup_remaining(tmp_path) is None
    (tmp_path / "memory.max").write_text("1000\n")
    (tmp_path / "memory.current").write_text("400\n")
    assert memory._cgroup_remaining(tmp_path) == 600


def test_a_cuda_total_is_asked_for_once_per_device(monkeypatch):
    """``available_bytes`` keeps each CUDA device's total (``cudaMemGetInfo`` costs host time before every call's
    first kernel), per device index: two devices keep two totals, the current device answers for ``"cuda"``."""
    asked: list[int] = []
    totals = {0: 80 * 2**30, 1: 16 * 2**30}

    def mem_get_info(index):
        asked.append(index)
        return 1, totals[index]

    monkeypatch.setattr(memory, "_cuda_totals", {})
    monkeypatch.setattr(memory.torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setattr(memory.torch.cuda, "current_device", lambda: 1)
    for _ in range(3):
        assert memory.available_bytes("cuda:0") == totals[0]
        assert memory.available_bytes("cuda:1") == totals[1]
        assert memory.available_bytes("cuda") == totals[1]
    assert asked == [0, 1]
    with pytest.raises(ValueError, match="16.0 GiB of cuda:1"):
        memory.check_fits(17 * 2**30, "cuda:1", "B=64")
    memory.check_fits(17 * 2**30, "cuda:0", "B=64")
