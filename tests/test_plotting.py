"""sdvar_lib.viz.plotting: every picture is a headless matplotlib Figure with the expected panels."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure

from sdvar_lib import SDVAR
from sdvar_lib.sdvar import baseline
from sdvar_lib.viz.plotting import (
    acceptance_heatmaps,
    attention_mask_figure,
    cache_lengths_figure,
    comparison_figure,
    decode_partial_reconstructions,
    image_grid,
    per_layer_figure,
    stage_reconstruction_grid,
    stage_value_maps,
    to_hwc_images,
)

PATCH_NUMS = (1, 2, 3, 4)


def _images(B: int = 3, H: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(B, 3, H, H, generator=torch.Generator().manual_seed(seed))


def _png_bytes(fig: Figure) -> int:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return len(buf.getvalue())


def _image_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.images]


def test_to_hwc_images_clips_and_permutes():
    img = torch.tensor([[[[2.0]], [[-1.0]], [[0.5]]]])
    out = to_hwc_images(img)
    assert out.shape == (1, 1, 1, 3)
    assert out.tolist() == [[[[1.0, 0.0, 0.5]]]]
    assert to_hwc_images(torch.zeros(2, 1, 4, 4)).shape == (2, 4, 4, 3)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        to_hwc_images(torch.zeros(3, 8, 8))
    with pytest.raises(TypeError, match="must be a tensor"):
        to_hwc_images([[0.0]])


def test_image_grid_has_one_panel_per_image_and_renders_headless():
    fig = image_grid(_images(5), titles=[f"#{i}" for i in range(5)], ncols=3, suptitle="grid")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 6 and len(_image_axes(fig)) == 5
    assert [ax.get_title() for ax in _image_axes(fig)] == [f"#{i}" for i in range(5)]
    assert _png_bytes(fig) > 0
    assert plt.get_fignums() == []  # nothing registered with pyplot
    with pytest.raises(ValueError, match="got 2 titles for 5 images"):
        image_grid(_images(5), titles=["a", "b"])


def test_stage_reconstructions_from_the_tiny_model(tiny_pair):
    _, draft, target = tiny_pair
    out = baseline(SDVAR(draft, target), 2, [1, 2], g_seed=0)
    quant = target.vae.quantize
    f_hats = quant.embed_to_fhat(quant.idxBl_to_h(out.tokens_per_stage))
    partial = decode_partial_reconstructions(target, f_hats)
    assert len(partial) == len(PATCH_NUMS)
    assert all(p.shape == out.images_B3HW.shape for p in partial)
    assert all(0 <= float(p.min()) and float(p.max()) <= 1 for p in partial)
    assert torch.allclose(partial[-1], out.images_B3HW, atol=1e-5)
    fig = stage_reconstruction_grid(partial, PATCH_NUMS, row_labels=["a", "b"], suptitle="stages")
    assert len(_image_axes(fig)) == 2 * len(PATCH_NUMS)
    assert fig.axes[0].get_title() == "stage 0\n1x1"
    with pytest.raises(ValueError, match="at least one f_hat"):
        decode_partial_reconstructions(target, [])
    with pytest.raises(ValueError, match="same number of images"):
        stage_reconstruction_grid([_images(2), _images(3)], PATCH_NUMS)


def test_attention_mask_figure_marks_stages_and_the_prefix():
    ids = torch.tensor([0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    q_ids = ids[1:]
    mask = ids.unsqueeze(0) <= q_ids.unsqueeze(1)
    fig = attention_mask_figure(mask, q_ids, ids, prefix_length=1)
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (13, 14)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "2"]
    assert _png_bytes(fig) > 0
    with pytest.raises(ValueError, match="13x14 but got 14 query"):
        attention_mask_figure(mask, ids, ids)
    with pytest.raises(ValueError, match="prefix_length must be in"):
        attention_mask_figure(mask, q_ids, ids, prefix_length=20)


def test_value_maps_and_acceptance_heatmaps():
    values = [torch.rand(2, 4), torch.rand(2, 9)]
    fig = stage_value_maps(values, [1, 2], PATCH_NUMS, "values", row_labels=["x", "y"])
    assert len(_image_axes(fig)) == 4
    assert _image_axes(fig)[0].images[0].get_array().shape == (2, 2)
    acc = acceptance_heatmaps([torch.tensor([[True, False, True, True]])], [1], PATCH_NUMS)
    assert _image_axes(acc)[0].images[0].get_array().tolist() == [[1.0, 0.0], [1.0, 1.0]]
    with pytest.raises(ValueError, match=r"values of stage 2 must be \(2, 9\)"):
        stage_value_maps([torch.rand(2, 4), torch.rand(2, 4)], [1, 2], PATCH_NUMS, "bad")
    with pytest.raises(ValueError, match="value maps for stages"):
        stage_value_maps(values, [1], PATCH_NUMS, "bad")


def test_comparison_figure_has_a_column_per_method():
    imgs = {"baseline": _images(2, seed=0), "sdvar": _images(2, seed=1), "test3": _images(2, seed=2)}
    fig = comparison_figure(imgs, captions={"sdvar": "3 target passes"}, row_labels=["a", "b"], suptitle="cmp")
    assert len(_image_axes(fig)) == 6
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["baseline", "sdvar\n3 target passes", "test3"]
    with pytest.raises(ValueError, match="at least one method"):
        comparison_figure({})
    with pytest.raises(ValueError, match="same number of images"):
        comparison_figure({"a": _images(2), "b": _images(3)})


def test_cache_and_layer_figures():
    fig = cache_lengths_figure({"target": [1, 5, 14, 30], "draft": [1, 5, 14, 30]}, stage_ends=[1, 5, 14, 30])
    assert len(fig.axes[0].lines) == 2 + 4
    bars = per_layer_figure({"target": [0.0, 1e-7], "draft": [2e-8]})
    assert len(bars.axes) == 2
    assert [p.get_height() for p in bars.axes[0].patches] == [1e-12, 1e-7]
    with pytest.raises(ValueError):
        cache_lengths_figure({})


def test_comparison_figure_methods_as_rows():
    import torch

    from sdvar_lib.viz.plotting import comparison_figure

    images = {"a": torch.rand(3, 3, 8, 8), "b": torch.rand(3, 3, 8, 8)}
    fig = comparison_figure(images, row_labels=["x", "y", "z"], methods_as_rows=True)
    assert len(fig.axes) == 6
    assert fig.axes[0].get_title() == "x" and fig.axes[3].get_ylabel() == "b"


def test_quality_vs_passes_figure_has_a_point_per_method_with_ci_bars():
    from sdvar_lib.eval.evaluation import MethodResult
    from sdvar_lib.eval.metrics import SeedQuality, summarize_over_seeds
    from sdvar_lib.viz.plotting import quality_vs_passes_figure

    def result(name, kind, passes, cc, fd, lossless=False, batch=1):
        return MethodResult(
            name=name, description=name, kind=kind, lossless=lossless, batch_size=batch, seeds=[0, 1], samples_per_seed=4,
            num_calls=8, target_passes_per_call=summarize_over_seeds(passes), draft_passes_per_call=summarize_over_seeds([1, 1]),
            token_acceptance_per_stage=[None], stage_acceptance_per_stage=[None], token_acceptance=None,
            class_consistency=summarize_over_seeds(cc), frechet_distance=summarize_over_seeds(fd),
            per_seed=[SeedQuality(0, cc[0], fd[0]), SeedQuality(1, cc[1], fd[1])], ms_per_call=1.0, wall_time_s=1.0,
        )

    results = [
        result("target", "target", [7, 7], [0.9, 0.94], [40.0, 44.0], lossless=True),
        result("exact_g2", "sdvar", [5.5, 5.7], [0.91, 0.93], [41.0, 45.0], lossless=True),
        result("top1_0.5_g2", "sdvar", [5.0, 5.2], [0.8, 0.84], [60.0, 64.0]),
        result("test3_e3", "test3", [4, 4], [0.7, 0.72], [70.0, 75.0]),
    ]
    fig = quality_vs_passes_figure(results, title="q")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    cc_ax, fd_ax = fig.axes
    assert cc_ax.get_xlabel() == fd_ax.get_xlabel() == "target passes per call"
    assert len(cc_ax.containers) == len(fd_ax.containers) == 4  # one error bar per method
    # the points sit at (mean passes, mean metric), with the CI as the vertical bar
    x, y = cc_ax.containers[1].lines[0].get_data()
    assert (float(x[0]), float(y[0])) == pytest.approx((5.6, 0.92))
    seg = cc_ax.containers[1].lines[2][1].get_segments()[0]  # vertical bar of exact_g2
    s = results[1].class_consistency
    assert [float(v) for v in seg[:, 1]] == pytest.approx([s.ci_low, s.ci_high])
    # the target's CI as a band on both panels; labels name each method
    assert len(cc_ax.patches) == len(fd_ax.patches) == 1
    assert sorted(t.get_text() for t in fd_ax.texts) == sorted(r.name for r in results)
    assert fig.legends and [t.get_text() for t in fig.legends[0].get_texts()] == ["target", "sdvar", "test3"]
    assert _png_bytes(fig) > 0 and plt.get_fignums() == []
    both = quality_vs_passes_figure([results[0], result("target", "target", [7, 7], [0.9, 0.92], [50.0, 52.0], True, 8)])
    assert sorted(t.get_text() for t in both.axes[0].texts) == ["target (B=1)", "target (B=8)"]
    # labels of points on top of each other are stacked, not drawn over each other
    twins = quality_vs_passes_figure([results[1], result("exact_g3", "sdvar", [5.5, 5.7], [0.91, 0.93], [41.0, 45.0], True),
                                      results[3]])
    offsets = {t.get_text(): t.xyann for t in twins.axes[0].texts}
    assert offsets["exact_g2"] != offsets["exact_g3"] and offsets["test3_e3"] == (5, 3)
    with pytest.raises(ValueError, match="at least one method result"):
        quality_vs_passes_figure([])
