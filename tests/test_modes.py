"""``eval_mode``: every module in eval mode inside the block, each one's own flag back afterwards (mixed modes,
a submodule shared by two roots, an exception inside the block)."""

from __future__ import annotations

import pytest
from torch import nn

from sdvar_lib.util.modes import eval_mode


def _flags(*roots: nn.Module) -> list[bool]:
    return [m.training for root in roots for m in root.modules()]


def test_eval_mode_switches_everything_and_restores_each_flag():
    shared = nn.Linear(2, 2)
    a = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout(), shared), nn.Identity())
    b = nn.Sequential(shared, nn.ReLU())
    a.train()
    b.eval()
    a[1][0].eval()  # a submodule in eval mode inside a training model: stays so
    a[2].train()
    before = _flags(a, b)
    with eval_mode(a, b, a):
        assert not any(_flags(a, b))
    assert _flags(a, b) == before


def test_eval_mode_restores_on_an_exception_and_leaves_eval_models_alone():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
    model[0].eval()
    with pytest.raises(RuntimeError), eval_mode(model):
        assert not any(_flags(model))
        raise RuntimeError("inside")
    assert _flags(model) == [True, False, True]
    frozen = nn.Sequential(nn.Linear(2, 2)).eval()
    with eval_mode(frozen):
        pass
    assert _flags(frozen) == [False, False]
