"""sdvar_lib.fast.setup: the one place that picks eager float32 or the bf16/fp16 fast path for a pair."""

from __future__ import annotations

import pytest
import torch

from sdvar_lib import SDVAR, describe_setup, get_method, load_pair, make_pair_sdvar
from sdvar_lib.fast import FastRunFactory, fast_dtype, precapture, uses_fast_path


@pytest.mark.parametrize("capability, expected", [((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_fast_dtype_is_bf16_only_where_the_gpu_has_it(monkeypatch, capability, expected):
    # a T4 (7.5) only emulates bf16 (torch.cuda.is_bf16_supported() says True there), so it gets fp16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.version, "hip", None)
    assert fast_dtype("cuda") == expected
    assert fast_dtype("cpu") == torch.float32


def test_on_a_cpu_the_default_is_the_eager_float32_path():
    pair = load_pair("bundled")
    sd = make_pair_sdvar(pair)
    assert type(sd) is SDVAR and sd.run_factory is None and not uses_fast_path(sd)
    assert pair.target.pos_1LC.dtype == torch.float32 and pair.draft.pos_1LC.dtype == torch.float32
    assert describe_setup(sd) == "device cpu, VAR weights float32, fast path off (eager float32)"
    # a notebook's DTYPE only applies where the fast path runs: on a CPU the same set-up stays eager float32
    sd = make_pair_sdvar(pair, None, "float16")
    assert not uses_fast_path(sd) and pair.target.pos_1LC.dtype == torch.float32


def test_dtype_may_be_named():
    pair = load_pair("bundled")
    make_pair_sdvar(pair, True, dtype="float16")
    assert pair.target.pos_1LC.dtype == torch.float16 and pair.draft.pos_1LC.dtype == torch.float16
    with pytest.raises(ValueError, match=r"dtype must be None, a torch.dtype or one of \['bfloat16', 'float16', 'float32'\]"):
        make_pair_sdvar(load_pair("bundled"), True, dtype="half")


def test_fast_true_converts_the_vars_not_the_vqvae_and_says_so():
    pair = load_pair("bundled")
    sd = make_pair_sdvar(pair, True, dtype=torch.bfloat16)
    assert isinstance(sd.run_factory, FastRunFactory) and uses_fast_path(sd)
    assert pair.target.pos_1LC.dtype == torch.bfloat16 and pair.draft.head.weight.dtype == torch.bfloat16
    assert pair.vae.quantize.embedding.weight.dtype == torch.float32
    assert "VAR weights bfloat16, fast path on (static buffers, no graphs)" in describe_setup(sd)
    out = sd.generate_parallel(2, [1, 2], g_seed=0)
    assert torch.isfinite(out.images_B3HW).all() and out.stats.target_passes <= 7
    with pytest.raises(ValueError, match="load the pair again"):  # converted models cannot go back silently
        make_pair_sdvar(pair, False)


def test_bad_arguments_are_refused():
    pair = load_pair("bundled")
    with pytest.raises(TypeError, match="fast must be True or False"):
        make_pair_sdvar(pair, "yes")
    with pytest.raises(TypeError, match="ModelPair"):
        make_pair_sdvar((pair.draft, pair.target))
    with pytest.raises(ValueError, match="dtype must be one of"):
        make_pair_sdvar(pair, True, dtype=torch.int8)
    with pytest.raises(ValueError, match="needs the fast path"):
        make_pair_sdvar(pair, False, dtype=torch.float16)
    assert pair.target.pos_1LC.dtype == torch.float32  # nothing was converted by the refused calls


def test_precapture_builds_every_pass_shape_once_and_is_a_no_op_when_eager():
    methods = [get_method(n) for n in ("target", "exact_g2", "test3_e3")]
    eager = make_pair_sdvar(load_pair("bundled"))
    assert precapture(eager, methods, [1, 2]) == 0
    sd = make_pair_sdvar(load_pair("bundled"), True)
    built = precapture(sd, methods, [1, 2])
    expected = 0
    for model, which in ((sd.target_model, 0), (sd.draft_model, 1)):
        shapes = {c for m in methods for c in m.chunks(sd.num_stages)[which]}
        for batch in (1, 2):
            run = sd.run_factory.run_for(model, batch)
            assert len(run.programs) == len(shapes)  # one program per distinct (position, length), none dropped
            expected += len(shapes)
    assert built == expected and precapture(sd, methods, [1, 2]) == 0
    before = {id(r): r.programs for r in sd.run_factory.runs()}
    get_method("exact_g2").run(sd, 2, [1, 2], 0)  # a call finds every program it needs
    assert {id(r): r.programs for r in sd.run_factory.runs()} == before


@pytest.mark.gpu
def test_on_cuda_the_default_is_the_fast_path_with_graphs(cuda_device):
    pair = load_pair("tiny-random", device=cuda_device)
    sd = make_pair_sdvar(pair)
    assert uses_fast_path(sd) and pair.target.pos_1LC.dtype == fast_dtype(cuda_device)
    assert pair.vae.quantize.embedding.weight.dtype == torch.float32
    assert "fast path on (CUDA graphs)" in describe_setup(sd)
    assert precapture(sd, [get_method("exact_g2")], [2]) > 0
    out = get_method("exact_g2").run(sd, 2, [1, 2], 0)
    assert torch.isfinite(out.images_B3HW).all()
    assert all(r.counters.captures > 0 and r.counters.eager_passes == 0 for r in sd.run_factory.call_runs())
