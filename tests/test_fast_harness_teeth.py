"""The GPU teeth rows of ``tests/test_gpu_harness.py``, on the CPU: each fast-path plant reaches the code the
fast path runs, and the harness reports it.

The fast path's graph-less mode runs the same programs as a GPU (stage programs, SDVAR rounds as device
programs with their own verdict and statistics code), so every row of :data:`tests.test_gpu_harness.ROWS` runs
here on the tiny pair in bfloat16 (the half type whose cache cannot hold the eager row's 0.1 % perturbation).
A plant that patches only the eager code (as the three device-round rows did before they had fast versions)
leaves the fast run untouched and its row fails here, before a GPU run finds it.
"""

from __future__ import annotations

import pytest
import torch

from sdvar_lib.fast import FastConfig, make_fast_sdvar
from test_framework import SDVARParallelV1Tester
from tests.test_gpu_harness import ROWS

GRAPHLESS = FastConfig(use_cuda_graphs=False)  # device_rounds stays on (the default), as on the GPU


@pytest.fixture(scope="module")
def bf16_pair():
    from sdvar_lib.models import build_tiny

    vae, target = build_tiny(seed=0)
    _, draft = build_tiny(seed=1, depth=1, vae=vae)
    return draft.to(torch.bfloat16), target.to(torch.bfloat16)


def test_the_harness_passes_on_the_fast_path(bf16_pair):
    sd = make_fast_sdvar(*bf16_pair, GRAPHLESS)
    assert sd.run_factory.config.device_rounds
    results = SDVARParallelV1Tester(sd).run_all_tests(B=2, gamma=2, print_results=False)
    assert all(r.passed for r in results), [f"{r.test_name}: {r.message}" for r in results if not r.passed]


@pytest.mark.parametrize(("name", "plant", "options", "test_name", "expected"), ROWS, ids=[row[0] for row in ROWS])
def test_a_fast_path_plant_is_reported(bf16_pair, monkeypatch, name, plant, options, test_name, expected):
    with monkeypatch.context() as mp:
        plant(mp)
        result = getattr(SDVARParallelV1Tester(make_fast_sdvar(*bf16_pair, GRAPHLESS), **options), test_name)(B=2)
    assert result.passed is False, f"{test_name} missed '{name}' on the fast path: {result.message}"
    assert expected in result.message, result.message

