"""Latency vs batch size per method from a ``python -m sdvar_lib.bench`` JSON report.

``python -m sdvar_lib.bench_plot bench_out/bench.json --out bench_out/latency.png`` (the command:
:func:`sdvar_lib.bench.cli.plot_main`) draws one panel per model pair: median latency (p10–p90 as
error bars) against batch size, one line per method and acceptance scenario, on log-log axes.

Reports written before the benchmark ran registry methods name some rows differently
(``sdvar_g2``, ``sdvar_adaptive``, ``sdvar_adaptive_cal``); :data:`LEGACY_METHOD_NAMES` maps them to
today's names, so old and new reports plot (and select with ``--series``) under one name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sdvar_lib.util.atomic import atomic_write_with

__all__ = ["LEGACY_METHOD_NAMES", "canonical_method_name", "LatencyPoint", "load_points", "plot_latency_vs_batch"]

LEGACY_METHOD_NAMES: dict[str, str] = {
    **{f"sdvar_g{g}": f"exact_g{g}" for g in (1, 2, 3, 4)},
    "sdvar_adaptive": "exact_adaptive",
    "sdvar_adaptive_cal": "exact_calibrated",
}
"""Row names of the first benchmark reports -> the registry / bench row names that replaced them."""


def canonical_method_name(name: str) -> str:
    """Today's name of a benchmark row (``name`` itself unless it is a :data:`LEGACY_METHOD_NAMES` key)."""
    return LEGACY_METHOD_NAMES.get(name, name)


def _canonical_series(series: str) -> str:
    method, sep, rest = series.partition(" [")
    return canonical_method_name(method) + sep + rest


@dataclass(frozen=True)
class LatencyPoint:
    pair: str
    series: str
    batch: int
    median_ms: float
    p10_ms: float
    p90_ms: float


def load_points(path: str | Path) -> list[LatencyPoint]:
    """The timed rows of a bench JSON report as plot points (series = method, plus scenario for SDVAR).

    Methods are named as today (:func:`canonical_method_name`), also in reports that used older names.
    """
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or "rows" not in data:
        raise ValueError(f"{path} is not a bench report (no 'rows'); write one with python -m sdvar_lib.bench")
    points = []
    for row in data["rows"]:
        method = canonical_method_name(row["method"])
        series = method if row["scenario"] == "-" else f"{method} [{row['scenario']}]"
        points.append(LatencyPoint(pair=row["pair"], series=series, batch=int(row["batch"]),
                                   median_ms=float(row["latency_ms_median"]), p10_ms=float(row["latency_ms_p10"]),
                                   p90_ms=float(row["latency_ms_p90"])))
    return points


def _method_of(series: str) -> str:
    return series.split(" [", 1)[0]


def _scenario_style(series: str) -> str:
    """Line style by acceptance scenario: solid for rows without one, dashed for ``exact``, dotted otherwise."""
    if " [" not in series:
        return "-"
    return "--" if series.split(" [", 1)[1].startswith("exact") else ":"


def plot_latency_vs_batch(points: Sequence[LatencyPoint], out: str | Path, series: Sequence[str] | None = None) -> Path:
    """Save the figure to ``out`` (PNG/SVG/PDF by suffix); ``series`` restricts the lines drawn (older names allowed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not points:
        raise ValueError("no points to plot")
    if series is not None:
        series = [_canonical_series(s) for s in series]
    pairs = list(dict.fromkeys(p.pair for p in points))
    methods = list(dict.fromkeys(_method_of(p.series) for p in points))
    palette = plt.get_cmap("tab20").colors
    colour = {m: palette[(2 * i) % 20 + (2 * i) // 20 % 2] for i, m in enumerate(methods)}  # dark shades first
    fig, axes = plt.subplots(1, len(pairs), figsize=(8.5 * len(pairs), 5.5), squeeze=False)
    for ax, pair in zip(axes[0], pairs):
        names = list(dict.fromkeys(p.series for p in points if p.pair == pair))
        for name in names:
            if series is not None and name not in series:
                continue
            pts = sorted((p for p in points if p.pair == pair and p.series == name), key=lambda p: p.batch)
            xs = [p.batch for p in pts]
            ys = [p.median_ms for p in pts]
            err = [[p.median_ms - p.p10_ms for p in pts], [p.p90_ms - p.median_ms for p in pts]]
            ax.errorbar(xs, ys, yerr=err, marker="o", ms=4, capsize=3, label=name, color=colour[_method_of(name)],
                        ls=_scenario_style(name))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("latency per call (ms, median; p10–p90)")
        ax.set_title(pair)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    out = Path(out)
    fmt = out.suffix[1:].lower() or "png"
    try:
        atomic_write_with(out, lambda tmp: fig.savefig(tmp, dpi=120, format=fmt))
    finally:  # also when the write fails (disk full): pyplot keeps no figure
        plt.close(fig)
    return out
