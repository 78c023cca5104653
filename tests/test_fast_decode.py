"""The fast VQVAE decode (half precision, channels-last, fused GroupNorm + SiLU) and the bounds around the passes.

CPU tests: :class:`FastDecoder` in float32 computes ``vae.fhat_to_img`` (PyTorch GroupNorm here;
the Triton GroupNorm is checked in ``test_fast_kernels.py``), in bf16 it stays close; the decode's
FLOP count equals PyTorch's own FLOP counter; the whole-call bound adds up.
"""

from __future__ import annotations

import pytest
import torch

from sdvar_lib.fast.config import FastConfig
from sdvar_lib.fast.costs import (
    DecodeCost,
    bound_s,
    decode_cost,
    one_off_seconds,
    pass_time_ratio,
    sampling_bytes,
    whole_call_bound,
)
from sdvar_lib.fast.decode import FastDecoder, decode_dtype
from sdvar_lib.fast.graphs import GraphedDecode
from sdvar_lib.fast.run import FastRun
from sdvar_lib.models.presets import build_vae


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def vae(tiny_pair):
    return tiny_pair[0]


def test_fast_decoder_float32_equals_reference(vae):
    gen = torch.Generator().manual_seed(0)
    decoder = FastDecoder(vae, dtype=torch.float32, kernels="torch")
    for batch in (1, 3):
        f_hat = torch.randn(batch, vae.Cvae, 4, 4, generator=gen)
        ref = vae.fhat_to_img(f_hat)
        got = decoder(f_hat)
        assert got.dtype == torch.float32 and got.shape == ref.shape and got.is_contiguous()
        assert _rel(got, ref) < 1e-4
        assert float(got.abs().max()) <= 1.0


def test_fast_decoder_half_precision_is_close(vae):
    f_hat = torch.randn(2, vae.Cvae, 4, 4, generator=torch.Generator().manual_seed(1))
    ref = vae.fhat_to_img(f_hat)
    for dtype in (torch.bfloat16, torch.float16):
        got = FastDecoder(vae, dtype=dtype, kernels="torch")(f_hat)
        assert got.dtype == torch.float32 and _rel(got, ref) < 0.1, dtype


def test_fast_decoder_copies_weights_until_refreshed(vae):
    decoder = FastDecoder(vae, dtype=torch.float32, kernels="torch")
    f_hat = torch.randn(1, vae.Cvae, 4, 4, generator=torch.Generator().manual_seed(2))
    before = decoder(f_hat)
    conv = vae.decoder.conv_out
    saved = conv.bias.detach().clone()
    try:
        with torch.no_grad():
            conv.bias.add_(0.5)
        assert torch.equal(decoder(f_hat), before)
        decoder.refresh()
        assert _rel(decoder(f_hat), vae.fhat_to_img(f_hat)) < 1e-4
    finally:
        with torch.no_grad():
            conv.bias.copy_(saved)


def test_decode_dtype_and_bad_input(vae, tiny_pair):
    assert decode_dtype("cpu") == torch.float32
    with pytest.raises(TypeError, match="VQVAE"):
        FastDecoder(tiny_pair[2])
    with pytest.raises(ValueError, match="dtype"):
        FastDecoder(vae, dtype=torch.float64)
    with pytest.raises(ValueError, match="kernels"):
        FastDecoder(vae, kernels="cuda")
    graphed = GraphedDecode(vae, fast=True)  # on the CPU: the reference decode, no graphs
    f_hat = torch.randn(1, vae.Cvae, 4, 4)
    assert torch.equal(graphed(f_hat), vae.fhat_to_img(f_hat)) and graphed.capture_time_s == 0.0
    with pytest.raises(TypeError, match="fast"):
        GraphedDecode(vae, fast=1)


def test_decode_flops_equal_pytorch_flop_counter(vae):
    from torch.utils.flop_counter import FlopCounterMode  # imports Triton: not at collection (test_fast_kernels.py)

    with FlopCounterMode(display=False) as counter:
        vae.fhat_to_img(torch.randn(2, vae.Cvae, 4, 4))
    cost = decode_cost(vae, 2)
    assert cost.flops == counter.get_total_flops()
    official = build_vae("meta")
    with FlopCounterMode(display=False) as counter:
        official.fhat_to_img(torch.empty(1, 32, 16, 16, device="meta"))
    one, many = decode_cost(official, 1), decode_cost(official, 8)
    assert one.flops == counter.get_total_flops()
    assert many.flops == 8 * one.flops
    weights = sum(p.numel() for m in (official.post_quant_conv, official.decoder) for p in m.parameters()) * 2
    assert weights < one.bytes and many.bytes - weights == pytest.approx(8 * (one.bytes - weights))
    assert decode_cost(official, 1, dtype_bytes=4).bytes > one.bytes


def test_whole_call_bound_adds_passes_sampling_and_decode(vae):
    assert sampling_bytes(64, 2, [1, 4]) == 2 * 2 * 5 * 64 * 4
    assert bound_s(2e12, 1e9, 1e12, 1e15) == pytest.approx(1e-3 + 2e-3)
    with pytest.raises(ValueError, match="bytes_per_s"):
        bound_s(1.0, 1.0, 0.0, 1.0)
    bound = whole_call_bound(0.01, vae, 64, 2, [1, 4, 9, 16], bytes_per_s=1e12, flops_per_s=1e14)
    cost: DecodeCost = decode_cost(vae, 2)
    assert bound.decode_s == pytest.approx(cost.bytes / 1e12 + cost.flops / 1e14)
    assert bound.sampling_s == pytest.approx(2 * 2 * 30 * 64 * 4 / 1e12)
    assert bound.total_s == pytest.approx(0.01 + bound.sampling_s + bound.decode_s)


def test_pass_ratio_and_one_off_seconds(vae, tiny_pair):
    draft = {(0, 1): 1.0, (1, 1): 2.0, (0, 2): 50.0}
    target = {(0, 1): 3.0, (1, 1): 5.0, (2, 1): 9.0}
    assert pass_time_ratio(draft, target) == pytest.approx(3.0 / 8.0)
    with pytest.raises(ValueError, match="single-stage"):
        pass_time_ratio({(0, 2): 1.0}, {(0, 2): 1.0})
    run = FastRun(tiny_pair[2], 1, FastConfig(use_cuda_graphs=False))
    run.counters.capture_time_s, run.counters.setup_time_s = 1.5, 0.25
    decode = GraphedDecode(vae)
    decode.capture_time_s = 2.0
    assert one_off_seconds([run], [decode]) == pytest.approx(3.75)


def test_factory_one_off_seconds_keep_released_runs(tiny_pair):
    from sdvar_lib.fast.factory import FastRunFactory

    _, draft, target = tiny_pair
    factory = FastRunFactory(FastConfig(use_cuda_graphs=False))
    assert factory.one_off_s == 0.0
    d, t = factory.run_for(draft, 1), factory.run_for(target, 1)
    d.counters.capture_time_s, t.counters.capture_time_s = 10.0, 20.0
    total = factory.one_off_s
    assert total == pytest.approx(30.0 + d.counters.setup_time_s + t.counters.setup_time_s)
    factory.release(draft)
    assert factory.one_off_s == pytest.approx(total)  # a released run's seconds still count
    factory.release()
    assert factory.one_off_s == pytest.approx(total) and factory.runs() == []
    again = factory.run_for(target, 1)
    again.counters.capture_time_s = 5.0
    assert factory.one_off_s >= total + 5.0
