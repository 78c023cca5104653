"""Bad arguments raise ValueError/TypeError naming the argument and what is allowed."""

from __future__ import annotations

import pytest
import torch

from sdvar_lib.models import VAR, VQVAE
from sdvar_lib.models.presets import TINY_CONFIG


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        (dict(B=0), ValueError, r"B must be an int >= 1"),
        (dict(B=-2), ValueError, r"B must be an int >= 1"),
        (dict(B=1.5), TypeError, r"B must be an int"),
        (dict(label_B=10), ValueError, r"label_B must hold class ids in \[0, 10\)"),
        (dict(label_B=[1, 2, 3]), ValueError, r"label_B has 3 labels but B=2"),
        (dict(label_B=torch.tensor([1, 12])), ValueError, r"label_B must hold class ids in \[0, 10\)"),
        (dict(label_B=torch.tensor([1.0, 2.0])), TypeError, r"integers"),
        (dict(cfg=-0.1), ValueError, r"cfg must be a finite number >= 0"),
        (dict(top_k=-1), ValueError, r"top_k must be an int >= 0"),
        (dict(top_k=65), ValueError, r"top_k must be in \[0, 64\]"),
        (dict(top_k=2.5), TypeError, r"top_k must be an int"),
        (dict(top_p=1.5), ValueError, r"top_p must be a finite number in \[0, 1\]"),
        (dict(top_p=-0.2), ValueError, r"top_p must be a finite number in \[0, 1\]"),
        (dict(g_seed="seven"), TypeError, r"g_seed must be an int"),
    ],
)
def test_the_reference_sampler_rejects(tiny_pair, kwargs, exc, pattern):
    _, _, target = tiny_pair
    args = dict(B=2, label_B=1, g_seed=0, cfg=1.5, top_k=0, top_p=0.0)
    args.update(kwargs)
    with pytest.raises(exc, match=pattern):
        target.autoregressive_infer_cfg(**args)


def test_negative_label_means_no_class(tiny_pair):
    _, _, target = tiny_pair
    out = target.generate(2, -1, g_seed=0)
    assert out.label_B.tolist() == [10, 10]
    out = target.generate(2, [-1, 3], g_seed=0)
    assert out.label_B.tolist() == [10, 3]


def test_patch_nums_must_match_vqvae():
    vae = VQVAE(**TINY_CONFIG["vae"])
    kwargs = dict(TINY_CONFIG["var"], patch_nums=(1, 2, 4))
    with pytest.raises(ValueError, match=r"patch_nums \(1, 2, 4\) do not match the VQVAE's v_patch_nums \(1, 2, 3, 4\)"):
        VAR(vae, **kwargs)


def test_vqvae_rejects_bad_config():
    with pytest.raises(ValueError, match="v_patch_nums"):
        VQVAE(**dict(TINY_CONFIG["vae"], v_patch_nums=(2, 1)))
    with pytest.raises(ValueError, match="multiples of 32"):
        VQVAE(**dict(TINY_CONFIG["vae"], ch=20))
