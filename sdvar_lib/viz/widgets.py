"""Interactive exploration of SDVAR: the widget callback is the plain function :func:`run_and_describe`.

``run_and_describe(sdvar, gamma, cfg, policy, seed, labels)`` runs parallel_v1 once and returns a
:class:`RunDescription` (images, statistics, a text summary with numbers rounded to 4 decimals and
no timings, and a figure). :func:`make_interactive` wires it to ipywidgets sliders (``gamma``,
``cfg``) and a policy dropdown; ``w.result`` is the latest :class:`RunDescription`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from matplotlib.figure import Figure

from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.sdvar.acceptance import POLICY_NAMES
from sdvar_lib.sdvar.decoder import SDVAR
from sdvar_lib.sdvar.stats import SDVARStats
from sdvar_lib.util.checks import check_choice, check_int, check_int_sequence, check_number, check_seed
from sdvar_lib.viz.plotting import image_grid

log = logging.getLogger(__name__)

__all__ = ["POLICY_OPTIONS", "RunDescription", "describe_stats", "run_and_describe", "make_interactive"]

POLICY_OPTIONS: tuple[str, ...] = POLICY_NAMES
"""Dropdown choices: every named acceptance policy (``top1_match``/``relaxed`` with their defaults)."""


@dataclass
class RunDescription:
    """One parallel_v1 call as shown by the widget."""

    gamma: int
    cfg: float
    policy: str
    seed: int
    labels: list[int]
    images_B3HW: torch.Tensor = field(repr=False)
    stats: SDVARStats = field(repr=False)
    text: str = ""
    figure: Figure | None = field(default=None, repr=False)

    def _ipython_display_(self) -> None:  # how Jupyter (and ipywidgets.interactive) shows a result
        from IPython.display import display

        if self.figure is not None:
            display(self.figure)
        display({"text/plain": self.text}, raw=True)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def describe_stats(stats: SDVARStats) -> str:
    """Counters of one call as text (rounded to 4 decimals, wall time left out so the text is reproducible)."""
    per_stage = ", ".join(_fmt(a) for a in stats.token_acceptance_per_stage)
    return "\n".join([
        f"target passes {stats.target_passes} for {stats.num_stages} stages, draft passes {stats.draft_passes}, "
        f"rounds {stats.rounds}",
        f"gamma per round {stats.gamma_per_round}, accepted stages per round {stats.stages_accepted_per_round}, "
        f"committed stages per round {stats.stages_committed_per_round}",
        f"token acceptance {_fmt(stats.token_acceptance)}; per stage [{per_stage}]",
    ])


def _check_args(sdvar, gamma, cfg, policy, seed, labels) -> list[int]:
    if not isinstance(sdvar, SDVAR):
        raise TypeError(f"sdvar must be an sdvar_lib.SDVAR, got {type(sdvar).__name__}")
    check_int(gamma, "gamma", 1)
    check_number(cfg, "cfg", 0.0)
    check_choice(policy, "policy", POLICY_OPTIONS)
    check_seed(seed, "seed", allow_none=False)
    return list(check_int_sequence(labels, "labels"))


@torch.no_grad()
def run_and_describe(
    sdvar: SDVAR,
    gamma: int = 2,
    cfg: float = 1.5,
    policy: str = "exact",
    seed: int = 0,
    labels: Sequence[int] = (0, 1, 2, 3),
    with_figure: bool = True,
) -> RunDescription:
    """Run parallel_v1 for ``labels`` (one image each) and describe it; the ipywidgets callback."""
    label_list = _check_args(sdvar, gamma, cfg, policy, seed, labels)
    cfg = float(cfg)
    out = sdvar.generate_parallel(len(label_list), label_list, g_seed=seed, sampling=SamplingConfig(cfg=cfg), gamma=gamma,
                                  policy=policy)
    stats = out.stats
    text = f"parallel_v1 gamma={gamma} cfg={cfg:.2f} policy={policy} seed={seed} labels={label_list}\n" + describe_stats(stats)
    log.debug("run_and_describe: %s", text)
    figure = None
    if with_figure:
        figure = image_grid(
            out.images_B3HW, titles=[f"class {v}" for v in label_list],
            suptitle=f"gamma={gamma}, cfg={cfg:.2f}, {policy}: {stats.target_passes} target passes",
        )
    return RunDescription(
        gamma=gamma, cfg=cfg, policy=policy, seed=seed, labels=label_list, images_B3HW=out.images_B3HW.cpu(),
        stats=stats, text=text, figure=figure,
    )


def make_interactive(
    sdvar: SDVAR,
    labels: Sequence[int] = (0, 1, 2, 3),
    seed: int = 0,
    gamma: int = 2,
    cfg: float = 1.5,
    policy: str = "exact",
    max_gamma: int | None = None,
    max_cfg: float = 5.0,
):
    """``ipywidgets.interactive`` over :func:`run_and_describe`: children are the ``gamma`` slider, the
    ``cfg`` slider and the policy dropdown (in that order), then the output area."""
    from ipywidgets import Dropdown, FloatSlider, IntSlider, fixed, interactive

    _check_args(sdvar, gamma, cfg, policy, seed, labels)
    max_gamma = sdvar.num_stages if max_gamma is None else check_int(max_gamma, "max_gamma", 1)
    check_number(max_cfg, "max_cfg", 0.0, min_inclusive=False)
    if gamma > max_gamma:  # a slider would silently clamp it
        raise ValueError(f"gamma must be in [1, max_gamma={max_gamma}] for the slider, got {gamma}")
    if cfg > max_cfg:
        raise ValueError(f"cfg must be in [0, max_cfg={max_cfg}] for the slider, got {cfg}")
    return interactive(
        run_and_describe,
        sdvar=fixed(sdvar),
        gamma=IntSlider(value=gamma, min=1, max=max_gamma, step=1, description="gamma", continuous_update=False),
        cfg=FloatSlider(value=cfg, min=0.0, max=max_cfg, step=0.25, description="cfg", continuous_update=False),
        policy=Dropdown(options=list(POLICY_OPTIONS), value=policy, description="policy"),
        seed=fixed(seed),
        labels=fixed(list(labels)),
        with_figure=fixed(True),
    )
