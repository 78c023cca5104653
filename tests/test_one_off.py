"""One-off preparation is said on screen and kept out of every reported time (issue 18, deliverable 7).

The fast path compiles kernels and captures CUDA graphs the first time a shape is used. A run factory may
report those seconds (``one_off_s``); a whole call counts its share apart (``SDVARStats.one_off_s``), says
it through the ``sdvar_lib.progress`` logger, and reports its steady time without it; the main job warms
every method up untimed first and its rows hold steady times only.
"""

from __future__ import annotations

import io
import json
import logging
import time

import pytest

import sdvar_lib.demo.job as job
from sdvar_lib import SamplingConfig, SDVARStats, get_method
from sdvar_lib.demo.cli import main
from sdvar_lib.fast import FastConfig, FastRunFactory
from sdvar_lib.models import eager_run
from sdvar_lib.sdvar import SDVAR
from sdvar_lib.sdvar.stats import pool_stats
from sdvar_lib.util import PROGRESS_LOGGER, show_progress


class SlowFirstFactory:
    """Eager runs; handing out the first run takes ``seconds`` of one-off preparation, reported as ``one_off_s``."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.one_off_s, self.calls = seconds, 0.0, 0

    def __call__(self, model, label_B):
        self.calls += 1
        if self.calls == 1:
            time.sleep(self.seconds)
            self.one_off_s += self.seconds
        return eager_run(model, label_B)


@pytest.fixture
def progress():
    stream = io.StringIO()
    handler = show_progress(stream)
    yield stream
    logging.getLogger(PROGRESS_LOGGER).removeHandler(handler)


def test_stats_keep_the_one_off_part_apart():
    st = SDVARStats(num_stages=4).with_wall_time(2.5, 2.0)
    assert st.steady_time_s == pytest.approx(0.5) and st.to_dict()["one_off_s"] == 2.0
    assert st.summary().endswith("500.0 ms (+ 2.0 s one-off preparation)")
    assert SDVARStats(num_stages=4).with_wall_time(0.25).summary().endswith("250.0 ms")
    pooled = pool_stats([st, SDVARStats(num_stages=4).with_wall_time(1.0)])
    assert (pooled.one_off_s, pooled.steady_time_s) == (2.0, pytest.approx(1.5))
    with pytest.raises(ValueError, match="one-off seconds must be within"):
        SDVARStats(num_stages=4).with_wall_time(1.0, 2.0)


def test_a_call_counts_the_factorys_one_off_seconds_and_says_so(tiny_pair, progress):
    _, draft, target = tiny_pair
    factory = SlowFirstFactory(seconds=0.2)
    sd = SDVAR(draft, target, run_factory=factory)
    first = sd.generate_parallel(2, [1, 2], g_seed=0, gamma=2)
    assert first.stats.one_off_s == pytest.approx(0.2) and first.stats.wall_time_s > 0.2
    assert first.stats.steady_time_s == pytest.approx(first.stats.wall_time_s - 0.2)
    assert "one-off preparation in this call: 0.2 s" in progress.getvalue()
    again = get_method("target").run(sd, 2, [1, 2], 0, SamplingConfig())  # the hand-offs count it the same way
    assert again.stats.one_off_s == 0.0 and progress.getvalue().count("one-off preparation in this call") == 1
    plain = SDVAR(draft, target).generate_parallel(2, [1, 2], g_seed=0)
    assert plain.stats.one_off_s == 0.0  # eager runs: nothing is one-off


def test_the_fast_factory_announces_the_first_call_at_a_batch_size(tiny_pair, progress):
    _, draft, target = tiny_pair
    sd = SDVAR(draft, target, run_factory=FastRunFactory(FastConfig(use_cuda_graphs=False)))
    sd.generate_parallel(2, [1, 2], g_seed=0, gamma=2)
    sd.generate_parallel(2, [3, 4], g_seed=1, gamma=2)
    sd.generate_parallel(1, [3], g_seed=1, gamma=2)
    text = progress.getvalue()
    assert text.count("fast path, first call at batch 2") == 1 and text.count("fast path, first call at batch 1") == 1
    assert "Triton's on-disk kernel cache" in text


def test_the_main_job_reports_steady_times_only(tmp_path, monkeypatch):
    """A capture that still lands in a timed call is counted apart, never in the row's times."""
    real = job.run_methods

    def run_methods_with_a_late_capture(sd, methods, labels, seed, sampling):
        slow = SDVAR(sd.draft_model, sd.target_model, run_factory=SlowFirstFactory(seconds=1.5))
        return real(slow, methods, labels, seed, sampling)

    monkeypatch.setattr("sdvar_lib.demo.cli.run_methods", run_methods_with_a_late_capture)
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--models", "tiny-random", "--labels", "1", "--methods", "target", "exact_g2"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    rows = {r["name"]: r for r in stats["rows"]}
    assert rows["target"]["one_off_s_in_timed_calls"] == 1.5 and rows["exact_g2"]["one_off_s_in_timed_calls"] == 0.0
    assert rows["target"]["ms_per_image_at_batch_1"] < 1000 and rows["target"]["ms_per_call"] < 1000
    assert stats["preparation_s"] >= 0 and "Times are steady times" in (out / "stats.md").read_text()


def test_the_main_job_defaults_to_four_imagenet_labels_for_the_official_size_models():
    from sdvar_lib.demo.cli import IMAGENET_LABELS, default_labels

    assert default_labels(1000) == list(IMAGENET_LABELS) == [207, 360, 388, 980]
    assert default_labels(10) == list(range(10)) and default_labels(4) == [0, 1, 2, 3] and default_labels(20) == list(range(10))


def test_without_stored_quality_the_figure_shows_measured_speed(tmp_path):
    rows, images = job.run_methods(
        *(lambda sd: (sd, [get_method("target"), get_method("exact_g2")], [1, 2], 0, SamplingConfig()))(
            SDVAR(*(lambda p: (p.draft, p.target))(__import__("sdvar_lib").load_pair("tiny-random")))))
    quality = job.stored_quality([r["name"] for r in rows], False, SamplingConfig())
    method_rows = [job.MethodRow(**r, quality=quality[r["name"]]) for r in rows]
    fig = job.demo_figure(method_rows, images, [1, 2], "run-x", "tiny")
    labels = {ax.get_ylabel() for ax in fig.axes} | {ax.get_xlabel() for ax in fig.axes}
    assert {"ms per image, batch 1 ↓", "ms per call of 2 ↓", "target passes per image (batch 1)"} <= labels
    points = [line for ax in fig.axes if ax.get_ylabel().startswith("ms per") for line in ax.lines]
    assert points, "the speed panels hold one marker per method"
