"""One set of model choices, with one name each, in every command that loads a pair (and in ``load_pair``)."""

from __future__ import annotations

import json

import pytest
import torch

from sdvar_lib.demo import cli as demo_cli
from sdvar_lib.models import checkpoints
from sdvar_lib.models.checkpoints import MODEL_CHOICES, RENAMED_MODEL_CHOICES, load_pair
from sdvar_lib.samples import cli as samples_cli

COMMANDS = {"python -m sdvar_lib": demo_cli, "python -m sdvar_lib.sample": samples_cli}


def _models_action(parser):
    (action,) = [a for a in parser._actions if a.dest == "models"]
    return action


@pytest.mark.parametrize("prog", COMMANDS)
def test_every_command_offers_the_same_choices(prog):
    parser = COMMANDS[prog].build_parser()
    assert parser.prog == prog
    action = _models_action(parser)
    assert tuple(action.choices) == MODEL_CHOICES == ("bundled", "official", "random-official", "tiny-random")
    assert action.default == "bundled"
    for name in MODEL_CHOICES:
        assert name in action.help
        assert parser.parse_args(["--models", name]).models == name


@pytest.mark.parametrize("prog", COMMANDS)
def test_another_spelling_is_refused_with_the_name(prog, capsys):
    with pytest.raises(SystemExit) as exc:
        COMMANDS[prog].build_parser().parse_args(["--models", "official-random"])
    assert exc.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"{prog}: error:") and "'random-official'" in line


def test_load_pair_refuses_another_spelling_before_anything_else():
    assert RENAMED_MODEL_CHOICES == {"official-random": "random-official"}
    with pytest.raises(ValueError, match="'official-random' is called 'random-official'"):
        load_pair("official-random", device="cpu")
    with pytest.raises(ValueError, match="model choice must be one of 'bundled', 'official', 'random-official'"):
        load_pair("random", device="cpu")
    with pytest.raises(ValueError, match="draft_depth"):
        load_pair("random-official", 17, 30, device="meta")


def test_random_official_is_seeded_and_leaves_the_callers_generator_alone(monkeypatch):
    calls = []

    def fake_build(draft_depth, target_depth, device=None):
        calls.append((draft_depth, target_depth, device))
        return torch.randn(4)

    monkeypatch.setattr(checkpoints, "build_official_pair", fake_build)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = load_pair("random-official", 16, 24, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's stream is not consumed
    assert torch.equal(first, load_pair("random-official", 16, 24, device="cpu"))  # the same weights every time
    assert torch.equal(first, torch.randn(4, generator=torch.Generator().manual_seed(0)))  # drawn from seed 0
    assert calls == [(16, 24, torch.device("cpu"))] * 2


def test_random_official_builds_the_official_sizes():
    pair = load_pair("random-official", 16, 20, device="meta")
    assert (pair.draft.depth, pair.target.depth, pair.target.num_stages, pair.target.V) == (16, 20, 10, 4096)
    assert pair.description == "official-size random weights d16 -> d20" and pair.fallback_reason is None


def test_the_main_job_takes_official_depths_for_random_official(tmp_path, monkeypatch):
    class Loaded(Exception):
        pass

    def fake_load_pair(choice, draft_depth, target_depth, device=None):
        raise Loaded((choice, draft_depth, target_depth))

    monkeypatch.setattr(demo_cli, "load_pair", fake_load_pair)
    with pytest.raises(Loaded) as exc:
        demo_cli.main(["--out", str(tmp_path / "demo"), "--models", "random-official", "--target-depth", "24"])
    assert exc.value.args[0] == ("random-official", 16, 24)


def test_the_sampler_samples_the_tiny_random_pair(tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["--models", "tiny-random", "--method", "exact_g2", "--out", str(out), "--per-class", "1", "--classes", "0-2",
            "--batch-size", "3", "--threads", "1", "--no-progress"]
    assert samples_cli.main(argv) == 0
    assert capsys.readouterr().out.splitlines()[0] == "models: tiny random pair (seeds 0/1) on cpu (1 process(es))"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["models"] == "tiny-random" and stats["num_images"] == 3
