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


def test_eval_mode_sees_modules_added_between_calls_in_every_way():
    """The walk of a tree is kept between calls: every way of changing the tree is seen by the next call."""
    model = nn.Sequential(nn.Linear(2, 2), nn.ModuleList([nn.Linear(2, 2)])).eval()
    with eval_mode(model):
        pass
    changes = [
        lambda: setattr(model, "extra", nn.Dropout()),                    # setattr (registration hook)
        lambda: model[1].append(nn.Dropout()),                             # add_module
        lambda: model[1].insert(0, nn.Dropout()),                          # ModuleList.insert: no hook
        lambda: model[1].__setitem__(0, nn.Sequential(nn.Dropout())),     # replace a child
        lambda: model.add_module("later", nn.ModuleDict({"d": nn.Dropout()})),
    ]
    for change in changes:
        change()
        model.train()  # everything in training mode: each must be switched, new ones too
        with eval_mode(model):
            assert not any(_flags(model)), "a module added since the last call ran in training mode"
        assert all(_flags(model))
        model.eval()


def test_eval_mode_sees_a_module_inserted_without_any_registration():
    """``ModuleList.insert`` writes ``_modules`` directly (no registration hook): the child count gives it away."""
    inner = nn.ModuleList([nn.Linear(2, 2)])
    model = nn.Sequential(inner).eval()
    with eval_mode(model):
        pass
    new = nn.Dropout().train()
    inner.insert(0, new)
    with eval_mode(model):
        assert not new.training
    assert new.training


def test_eval_mode_reads_every_flag_at_every_call():
    """The kept walk keeps modules, not their flags: a submodule put in training mode between calls is switched."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout(), nn.Linear(2, 2))).eval()
    with eval_mode(model):
        pass
    model[1][0].train()
    with eval_mode(model):
        assert not any(_flags(model)), "a submodule put in training mode since the last call ran in training mode"
    assert _flags(model) == [False, False, False, True, False]


def test_eval_mode_switches_a_module_whose_flag_is_not_in_its_dict():
    """A module class may keep ``training`` elsewhere than its attribute dict (TorchScript's is a property): its flag
    is read and switched by attribute like any other."""

    class FlagElsewhere(nn.Linear):
        @property
        def training(self):
            return self.__dict__["_flag"]

        @training.setter
        def training(self, value):
            self.__dict__["_flag"] = value

    odd = FlagElsewhere(2, 2)
    model = nn.Sequential(nn.Linear(2, 2), odd).train()
    assert "training" not in vars(odd) and odd.training
    for _ in range(2):  # a new walk, then the kept one
        with eval_mode(model):
            assert not any(_flags(model))
        assert all(_flags(model))
