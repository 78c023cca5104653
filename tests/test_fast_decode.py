"""The fast VQVAE decode (half precision, channels-last, fused GroupNorm + SiLU) and the one-off seconds of fast runs.

CPU tests: :class:`FastDecoder` in float32 computes ``vae.fhat_to_img`` (PyTorch GroupNorm here;
the Triton GroupNorm is checked in ``test_fast_kernels.py``), in bf16 it stays close; the one-off
seconds of runs and graphed decodes add up (the decode's bound is tested in ``test_bench_bounds.py``).
"""

from __future__ import annotations

import pytest
import torch

from sdvar_lib.fast.config import FastConfig
from sdvar_lib.fast.decode import FastDecoder, decode_dtype
from sdvar_lib.fast.factory import one_off_seconds
from sdvar_lib.fast.graphs import GraphedDecode
from sdvar_lib.fast.run import FastRun


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


def test_one_off_seconds(vae, tiny_pair):
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
