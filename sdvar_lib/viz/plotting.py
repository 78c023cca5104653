"""Pictures for the notebooks: image grids, stage-by-stage reconstructions, masks, heat maps, comparisons.

Every function returns a :class:`matplotlib.figure.Figure` built without ``pyplot`` (no GUI backend,
nothing registered globally), so it works headless and in tests; in Jupyter a returned figure
displays inline (its text form is ``<Figure size WxH with N Axes>``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sdvar_lib.eval.evaluation import MethodResult
from sdvar_lib.models.var import VAR

__all__ = [
    "to_hwc_images",
    "decode_partial_reconstructions",
    "image_grid",
    "stage_reconstruction_grid",
    "attention_mask_figure",
    "stage_value_maps",
    "acceptance_heatmaps",
    "comparison_figure",
    "cache_lengths_figure",
    "per_layer_figure",
]

_MASK_CMAP = ListedColormap(["#f2f2f2", "#2b6cb0"])


def _check_images(images_B3HW: torch.Tensor, name: str = "images_B3HW") -> None:
    if not isinstance(images_B3HW, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(images_B3HW).__name__}")
    if images_B3HW.ndim != 4 or images_B3HW.shape[1] not in (1, 3) or images_B3HW.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty (B, 3, H, W) or (B, 1, H, W) batch, got {tuple(images_B3HW.shape)}")


def to_hwc_images(images_B3HW: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B, H, W, 3)`` float numpy, clipped to ``[0, 1]``."""
    _check_images(images_B3HW)
    img = images_B3HW.detach().float().cpu().clamp(0, 1)
    if img.shape[1] == 1:
        img = img.expand(-1, 3, -1, -1)
    return img.permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def decode_partial_reconstructions(model: VAR, f_hats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Images in ``[0, 1]`` of ``f_hat`` after each stage (what the image looks like so far)."""
    if len(f_hats) == 0:
        raise ValueError("need at least one f_hat to decode")
    return [model.vae.fhat_to_img(f.float()).add(1).mul(0.5).cpu() for f in f_hats]


def _show(ax, image_HW3: np.ndarray, title: str | None = None, fontsize: float = 8) -> None:
    ax.imshow(image_HW3, interpolation="nearest", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)


def image_grid(
    images_B3HW: torch.Tensor,
    titles: Sequence[str] | None = None,
    ncols: int | None = None,
    suptitle: str | None = None,
    cell_size: float = 1.6,
) -> Figure:
    """Images in a grid, one optional title each."""
    imgs = to_hwc_images(images_B3HW)
    B = imgs.shape[0]
    if titles is not None and len(titles) != B:
        raise ValueError(f"got {len(titles)} titles for {B} images")
    ncols = min(B, 8) if ncols is None else ncols
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    nrows = math.ceil(B / ncols)
    fig = Figure(figsize=(cell_size * ncols, cell_size * nrows + (0.4 if suptitle else 0.0)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < B:
            _show(ax, imgs[i], titles[i] if titles is not None else None)
        else:
            ax.set_axis_off()
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def stage_reconstruction_grid(
    images_per_stage: Sequence[torch.Tensor],
    patch_nums: Sequence[int],
    row_labels: Sequence[str] | None = None,
    stage_titles: Sequence[str] | None = None,
    suptitle: str | None = None,
    cell_size: float = 1.3,
) -> Figure:
    """Rows: samples; columns: ``f_hat`` decoded after each stage (coarse to fine)."""
    if len(images_per_stage) == 0:
        raise ValueError("need the images of at least one stage")
    per_stage = [to_hwc_images(img) for img in images_per_stage]
    S, B = len(per_stage), per_stage[0].shape[0]
    if any(p.shape[0] != B for p in per_stage):
        raise ValueError("every stage needs the same number of images")
    if len(patch_nums) < S:
        raise ValueError(f"got {len(patch_nums)} patch numbers for {S} stages")
    if row_labels is not None and len(row_labels) != B:
        raise ValueError(f"got {len(row_labels)} row labels for {B} samples")
    titles = list(stage_titles) if stage_titles is not None else [f"stage {s}\n{patch_nums[s]}x{patch_nums[s]}" for s in range(S)]
    if len(titles) != S:
        raise ValueError(f"got {len(titles)} stage titles for {S} stages")
    fig = Figure(figsize=(cell_size * S + (0.6 if row_labels else 0.0), cell_size * B + 0.6))
    axes = fig.subplots(B, S, squeeze=False)
    for b in range(B):
        for s in range(S):
            _show(axes[b, s], per_stage[s][b], titles[s] if b == 0 else None, fontsize=7)
        if row_labels is not None:
            axes[b, 0].set_ylabel(row_labels[b], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def _stage_ticks(stage_ids: torch.Tensor) -> tuple[list[float], list[float], list[str]]:
    """Boundaries between stages and the centre tick of each stage along one axis."""
    ids = stage_ids.detach().cpu().tolist()
    bounds, centres, labels = [], [], []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[start]:
            centres.append((start + i - 1) / 2)
            labels.append(str(ids[start]))
            if i < len(ids):
                bounds.append(i - 0.5)
            start = i
    return bounds, centres, labels


def attention_mask_figure(
    mask_lK: torch.Tensor,
    query_stage_ids: torch.Tensor,
    key_stage_ids: torch.Tensor,
    title: str = "attention mask of the verify chunk",
    size: float = 5.0,
    prefix_length: int | None = None,
) -> Figure:
    """A boolean ``(queries, keys)`` mask (blue = may attend) with stage boundaries and stage labels.

    ``prefix_length``: keys before it are the cached prefix (a dashed line marks where the chunk starts).
    """
    if mask_lK.ndim != 2:
        raise ValueError(f"mask must be 2-D (queries, keys), got shape {tuple(mask_lK.shape)}")
    l, K = mask_lK.shape
    if query_stage_ids.numel() != l or key_stage_ids.numel() != K:
        raise ValueError(
            f"mask is {l}x{K} but got {query_stage_ids.numel()} query and {key_stage_ids.numel()} key stage ids"
        )
    fig = Figure(figsize=(size * min(2.5, max(K / max(l, 1), 1.0)) * 0.8, size * 0.8))
    ax = fig.subplots()
    ax.imshow(mask_lK.detach().cpu().bool().numpy(), cmap=_MASK_CMAP, vmin=0, vmax=1, interpolation="nearest",
              aspect="auto")
    qb, qc, ql = _stage_ticks(query_stage_ids)
    kb, kc, kl = _stage_ticks(key_stage_ids)
    for y in qb:
        ax.axhline(y, color="#c05621", lw=0.6)
    for x in kb:
        ax.axvline(x, color="#c05621", lw=0.6)
    if prefix_length is not None:
        if not 0 <= prefix_length <= K:
            raise ValueError(f"prefix_length must be in [0, {K}], got {prefix_length}")
        ax.axvline(prefix_length - 0.5, color="black", lw=1.5, ls="--")
    ax.set_yticks(qc, ql, fontsize=7)
    ax.set_xticks(kc, kl, fontsize=7)
    ax.set_ylabel("query (stage)")
    ax.set_xlabel("key position (stage): cached prefix, then the chunk")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def stage_value_maps(
    values_per_stage: Sequence[torch.Tensor],
    stages: Sequence[int],
    patch_nums: Sequence[int],
    title: str,
    row_labels: Sequence[str] | None = None,
    vmin: float = 0.0,
    vmax: float = 1.0,
    cmap: str = "viridis",
    cell_size: float = 1.4,
) -> Figure:
    """One ``pn x pn`` heat map per stage and sample from per-token values ``(B, pn*pn)``."""
    if len(values_per_stage) != len(stages) or len(stages) == 0:
        raise ValueError(f"got {len(values_per_stage)} value maps for stages {list(stages)}")
    B = values_per_stage[0].shape[0]
    if row_labels is not None and len(row_labels) != B:
        raise ValueError(f"got {len(row_labels)} row labels for {B} samples")
    fig = Figure(figsize=(cell_size * len(stages) + 1.0, cell_size * B + 0.6))
    axes = fig.subplots(B, len(stages), squeeze=False)
    image = None
    for j, (si, vals) in enumerate(zip(stages, values_per_stage)):
        pn = patch_nums[si]
        if tuple(vals.shape) != (B, pn * pn):
            raise ValueError(f"values of stage {si} must be ({B}, {pn * pn}), got {tuple(vals.shape)}")
        grid = vals.detach().float().cpu().reshape(B, pn, pn).numpy()
        for b in range(B):
            ax = axes[b, j]
            image = ax.imshow(grid[b], vmin=vmin, vmax=vmax, cmap=cmap, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if b == 0:
                ax.set_title(f"stage {si} ({pn}x{pn})", fontsize=8)
            if j == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[b], fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    return fig


def acceptance_heatmaps(
    accepted_per_stage: Sequence[torch.Tensor],
    stages: Sequence[int],
    patch_nums: Sequence[int],
    row_labels: Sequence[str] | None = None,
    title: str = "token acceptance per stage (1 = draft token accepted)",
) -> Figure:
    """Heat maps of per-token acceptance (bool or probability ``(B, pn*pn)``) for each verified stage."""
    return stage_value_maps([a.float() for a in accepted_per_stage], stages, patch_nums, title, row_labels=row_labels,
                            cmap="RdYlGn")


def comparison_figure(
    images_by_method: Mapping[str, torch.Tensor],
    captions: Mapping[str, str] | None = None,
    row_labels: Sequence[str] | None = None,
    suptitle: str | None = None,
    cell_size: float = 1.8,
    methods_as_rows: bool = False,
) -> Figure:
    """Side by side: one column per method (title + caption), one row per sample.

    ``methods_as_rows=True`` transposes the grid (one row per method, one column per sample),
    which suits many samples; ``row_labels`` then label the columns.
    """
    if not images_by_method:
        raise ValueError("need at least one method's images")
    names = list(images_by_method)
    imgs = {n: to_hwc_images(images_by_method[n]) for n in names}
    B = imgs[names[0]].shape[0]
    if any(v.shape[0] != B for v in imgs.values()):
        raise ValueError("every method needs the same number of images")
    if row_labels is not None and len(row_labels) != B:
        raise ValueError(f"got {len(row_labels)} row labels for {B} samples")
    n_methods = len(names)
    shape = (n_methods, B) if methods_as_rows else (B, n_methods)
    fig = Figure(figsize=(cell_size * shape[1] + 0.4, cell_size * shape[0] + 0.9))
    axes = fig.subplots(*shape, squeeze=False)
    for j, name in enumerate(names):
        caption = (captions or {}).get(name)
        heading = f"{name}\n{caption}" if caption else name
        for b in range(B):
            ax = axes[j, b] if methods_as_rows else axes[b, j]
            if methods_as_rows:
                _show(ax, imgs[name][b], row_labels[b] if (j == 0 and row_labels is not None) else None)
                if b == 0:
                    ax.set_ylabel(heading, fontsize=8)
            else:
                _show(ax, imgs[name][b], heading if b == 0 else None)
                if j == 0 and row_labels is not None:
                    ax.set_ylabel(row_labels[b], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def cache_lengths_figure(
    lengths_by_name: Mapping[str, Sequence[int]],
    stage_ends: Sequence[int] | None = None,
    title: str = "KV cache length after every round",
) -> Figure:
    """Step plot of cache lengths per round (one line per cache); dotted lines at the stage ends."""
    if not lengths_by_name:
        raise ValueError("need at least one series of cache lengths")
    fig = Figure(figsize=(6.0, 3.2))
    ax = fig.subplots()
    styles = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "d"))
    for i, (name, lengths) in enumerate(lengths_by_name.items()):
        ls, marker = styles[i % len(styles)]
        ax.step(range(len(lengths)), list(lengths), where="post", ls=ls, marker=marker, label=name, alpha=0.85)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for end in stage_ends or ():
        ax.axhline(end, color="#a0aec0", lw=0.5, ls=":")
    ax.set_xlabel("round")
    ax.set_ylabel("cached positions")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def per_layer_figure(
    values_by_name: Mapping[str, Sequence[float]],
    title: str = "max |cache - sequential| per layer",
    ylabel: str = "max abs diff",
    floor: float = 1e-12,
) -> Figure:
    """Bar chart of one value per layer (log scale; zeros drawn at ``floor``), one panel per series."""
    if not values_by_name:
        raise ValueError("need at least one series")
    fig = Figure(figsize=(3.2 * len(values_by_name), 2.8))
    axes = fig.subplots(1, len(values_by_name), squeeze=False)
    for ax, (name, values) in zip(axes[0], values_by_name.items()):
        vals = [max(float(v), floor) for v in values]
        ax.bar(range(len(vals)), vals, color="#2b6cb0")
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---- quality against target passes (issue 5) ---------------------------------------------------------
_KIND_STYLES = {
    "target": ("#1a202c", "*"),
    "draft": ("#718096", "X"),
    "sdvar": ("#2b6cb0", "o"),
    "test3": ("#c05621", "s"),
    "code_handoff": ("#2f855a", "D"),
}


def _annotate_staggered(ax, results: Sequence[MethodResult], metric: str, batches: set[int]) -> None:
    """Label every point; labels of points close together are stacked instead of drawn over each other."""
    xs = [r.target_passes_per_call.mean for r in results]
    ys = [getattr(r, metric).mean for r in results]
    x_span = (max(xs) - min(xs)) or 1.0
    y_span = (max(ys) - min(ys)) or 1.0
    placed: list[tuple[float, float]] = []
    for r, x, y in sorted(zip(results, xs, ys), key=lambda t: (t[1], -t[2])):
        near = sum(1 for px, py in placed if abs(px - x) / x_span < 0.08 and abs(py - y) / y_span < 0.12)
        placed.append((x, y))
        label = r.name if len(batches) == 1 else f"{r.name} (B={r.batch_size})"
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 3 + 7 * near), fontsize=6.5,
                    arrowprops=dict(arrowstyle="-", lw=0.4, color="#a0aec0") if near else None)


def quality_vs_passes_figure(
    results: Sequence[MethodResult],
    title: str = "quality against target passes per call",
    annotate: bool = True,
) -> Figure:
    """Class-consistency and Fréchet distance (mean with 95% CI error bars) against target passes per call.

    One point per :class:`sdvar_lib.eval.evaluation.MethodResult` (colour and marker by kind; lossy SDVAR
    policies drawn hollow); the target's CIs are drawn as bands, so a lossless method should land
    inside them. Results of several batch sizes are allowed; the batch size is added to the labels then.
    """
    if len(results) == 0:
        raise ValueError("need at least one method result")
    batches = {r.batch_size for r in results}
    fig = Figure(figsize=(11.0, 4.4))
    axes = fig.subplots(1, 2)
    panels = (("class_consistency", "class-consistency (higher is better)"),
              ("frechet_distance", "Fréchet distance to real digits (lower is better)"))
    for ax, (metric, ylabel) in zip(axes, panels):
        for r in results:
            if r.kind == "target":
                s = getattr(r, metric)
                ax.axhspan(s.ci_low, s.ci_high, color="#a0aec0", alpha=0.25, lw=0)
        for r in results:
            colour, marker = _KIND_STYLES.get(r.kind, ("#805ad5", "^"))
            s = getattr(r, metric)
            x = r.target_passes_per_call
            hollow = r.kind == "sdvar" and not r.lossless
            ax.errorbar(
                x.mean, s.mean, yerr=[[s.mean - s.ci_low], [s.ci_high - s.mean]],
                xerr=[[x.mean - x.ci_low], [x.ci_high - x.mean]], fmt=marker, color=colour, ms=7, capsize=3,
                mfc="white" if hollow else colour, lw=1,
            )
        if annotate:
            _annotate_staggered(ax, results, metric, batches)
        ax.set_xlabel("target passes per call")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles = [
        axes[0].plot([], [], marker, color=colour, ls="", label=kind)[0] for kind, (colour, marker) in _KIND_STYLES.items()
        if any(r.kind == kind for r in results)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig

