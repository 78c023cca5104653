"""sdvar_lib.eval.evaluation: the quality-vs-passes table on the tiny random pair (fast, CPU, tiny sample counts)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch

from sdvar_lib import SDVAR, Method
from sdvar_lib.eval.cli import evaluate_main as main
from sdvar_lib.eval.evaluation import (
    SEED_STRIDE,
    EvaluationReport,
    ci_overlap,
    default_methods,
    evaluate_methods,
    load_bundled_report,
    load_report,
    select_methods,
)
from sdvar_lib.eval.lossless import lossless_verdict, token_evidence
from sdvar_lib.eval.metrics import (
    ClassifierConfig,
    DigitClassifier,
    SeedSummary,
    balanced_labels,
    class_consistency,
    load_bundled_classifier,
    summarize_over_seeds,
)
from sdvar_lib.models.checkpoints import load_pair
from sdvar_lib.models.presets import ModelPair
from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.sdvar import AdaptiveGamma
from sdvar_lib.sdvar.acceptance import Top1MatchPolicy
from sdvar_lib.sdvar.registry import get_method
from sdvar_lib.util.machine import MachineInfo

ISSUE_METHODS = [
    "target", "draft", "exact_g1", "exact_g2", "exact_g3", "exact_g4", "exact_adaptive", "top1_0.5_g2", "top1_0.9_g2",
    "relaxed_0.05_g2", "relaxed_0.1_g2", "relaxed_0.3_g2", "test3_e2", "test3_e3", "test3_e4", "test3_e5", "code_e3",
    "code_e5",
]
SEEDS = (0, 1)
SAMPLES = 4


@pytest.fixture(scope="module")
def random_pair() -> ModelPair:
    return load_pair("tiny-random", device="cpu")


@pytest.fixture(scope="module")
def scorer(random_pair):
    """A seeded random classifier for the pair's 64x64 images and random "real" images (metrics are meaningless
    but well defined)."""
    size = random_pair.vae.image_size
    torch.manual_seed(0)
    clf = DigitClassifier(ClassifierConfig(image_size=size)).eval()
    real = torch.rand(12, 3, size, size, generator=torch.Generator().manual_seed(1))
    return clf, real


@pytest.fixture(scope="module")
def results(random_pair, scorer):
    clf, real = scorer
    methods = default_methods(random_pair.target.num_stages)
    return evaluate_methods(random_pair, methods, seeds=SEEDS, samples_per_seed=SAMPLES, batch_size=1,
                            classifier=clf, real_img_B3HW=real)


def _report(pair: ModelPair, results) -> EvaluationReport:
    return EvaluationReport(
        pair_description=pair.description, num_stages=pair.target.num_stages, patch_nums=list(pair.target.patch_nums),
        cfg=1.5, top_k=0, top_p=0.0, reference="random images", machine=MachineInfo.current("cpu"), results=results,
    )


def test_default_methods_are_the_issue_list():
    assert [m.name for m in default_methods(7)] == ISSUE_METHODS
    by_name = {m.name: m for m in default_methods(7)}
    assert isinstance(by_name["exact_adaptive"].gamma, AdaptiveGamma) and by_name["exact_adaptive"].lossless
    assert isinstance(by_name["top1_0.9_g2"].policy, Top1MatchPolicy) and not by_name["top1_0.9_g2"].lossless
    assert by_name["test3_e4"].entry_num == 4 and by_name["code_e5"].decoder == "code_handoff"
    # four stages: hand-off entries that would be a model alone or past the end are left out
    names4 = [m.name for m in default_methods(4)]
    assert [n for n in names4 if n.startswith(("test3", "code"))] == ["test3_e2", "test3_e3", "code_e3"]


def test_the_table_has_every_method(random_pair, results):
    names = [m.name for m in default_methods(random_pair.target.num_stages)]
    assert [r.name for r in results] == names
    table = _report(random_pair, results).markdown_table()
    rows = table.splitlines()[2:]
    assert len(rows) == len(names)
    for name, row in zip(names, rows):
        assert row.startswith(f"| `{name}` | 1 |")


def test_target_alone_uses_every_stage_and_no_draft(random_pair, results):
    S = random_pair.target.num_stages
    target = next(r for r in results if r.name == "target")
    assert target.target_passes_per_call.values == [S] * len(SEEDS)
    assert target.target_passes_per_call.ci_low == target.target_passes_per_call.ci_high == S
    assert target.draft_passes_per_call.mean == 0
    assert target.token_acceptance_per_stage == [None] * S and target.token_acceptance is None
    assert target.num_calls == len(SEEDS) * SAMPLES and target.lossless
    draft = next(r for r in results if r.name == "draft")
    assert draft.target_passes_per_call.mean == 0 and draft.draft_passes_per_call.mean == S


def test_hand_offs_split_the_stages(random_pair, results):
    S = random_pair.target.num_stages
    by_name = {r.name: r for r in results}
    assert by_name["test3_e2"].target_passes_per_call.mean == S - 2
    assert by_name["test3_e2"].draft_passes_per_call.mean == 2
    assert by_name["code_e3"].target_passes_per_call.mean == 3
    assert by_name["code_e3"].draft_passes_per_call.mean == S - 3


def test_numbers_are_in_valid_ranges(random_pair, results):
    S = random_pair.target.num_stages
    for r in results:
        assert r.num_calls == len(SEEDS) * SAMPLES and r.batch_size == 1 and r.seeds == list(SEEDS)
        for s in (r.class_consistency, r.frechet_distance, r.target_passes_per_call, r.draft_passes_per_call):
            assert s.num_seeds == len(SEEDS) and s.ci_low <= s.mean <= s.ci_high
        assert all(0 <= q.class_consistency <= 1 and q.frechet_distance >= 0 for q in r.per_seed)
        assert 0 <= r.target_passes_per_call.mean <= S
        assert r.ms_per_call > 0 and r.wall_time_s > 0
        assert len(r.token_acceptance_per_stage) == len(r.stage_acceptance_per_stage) == S
        for a in r.token_acceptance_per_stage + r.stage_acceptance_per_stage:
            assert a is None or 0 <= a <= 1
        if r.kind == "sdvar":
            assert r.token_acceptance is not None and 0 <= r.token_acceptance <= 1
            assert r.token_acceptance_per_stage[0] is not None  # every call proposes stage 0 first
            assert 1 <= r.target_passes_per_call.mean <= S and r.draft_passes_per_call.mean >= 1
            # a stage is accepted whole only if all its tokens are: never more often than its tokens
            for t, s in zip(r.token_acceptance_per_stage, r.stage_acceptance_per_stage):
                assert (t is None) == (s is None) and (s is None or s <= t + 1e-12)


def test_exact_with_the_target_as_draft_saves_target_passes(random_pair, scorer):
    clf, real = scorer
    S = random_pair.target.num_stages
    self_pair = ModelPair(vae=random_pair.vae, draft=random_pair.target, target=random_pair.target, description="self")
    methods = select_methods(default_methods(S), ["target", "exact_g2"])
    target, exact = evaluate_methods(self_pair, methods, seeds=SEEDS, samples_per_seed=SAMPLES, classifier=clf,
                                     real_img_B3HW=real)
    assert target.target_passes_per_call.mean == S
    # draft == target: every proposal is accepted; gamma 2 on 4 stages = verify 0..2 (+bonus), then stage 3
    assert exact.target_passes_per_call.mean == 2 < S
    assert all(a == 1.0 for a in exact.stage_acceptance_per_stage if a is not None)
    assert exact.token_acceptance == 1.0


def test_results_are_seeded_and_round_trip_through_json(random_pair, scorer, results, tmp_path):
    clf, real = scorer
    again = evaluate_methods(random_pair, select_methods(default_methods(4), ["exact_g1"]), seeds=SEEDS,
                             samples_per_seed=SAMPLES, classifier=clf, real_img_B3HW=real)[0]
    first = next(r for r in results if r.name == "exact_g1")
    assert again.per_seed == first.per_seed
    assert again.target_passes_per_call == first.target_passes_per_call
    report = _report(random_pair, results)
    path = report.save(tmp_path / "evaluation.json")
    loaded = load_report(path)
    assert loaded.to_dict() == json.loads(path.read_text()) == report.to_dict()
    assert loaded.result("exact_g2").class_consistency == report.result("exact_g2").class_consistency
    assert loaded.matches_target(loaded.result("target")) == (True, True)
    with pytest.raises(KeyError, match="no result for method 'nope'"):
        loaded.result("nope")


def test_batch_size_groups_calls(random_pair, scorer):
    clf, real = scorer
    (r,) = evaluate_methods(random_pair, select_methods(default_methods(4), ["exact_g2"]), seeds=(3,),
                            samples_per_seed=4, batch_size=2, classifier=clf, real_img_B3HW=real)
    assert r.num_calls == 2 and r.batch_size == 2 and r.target_passes_per_image == r.target_passes_per_call.mean / 2


def test_ci_overlap():
    a = summarize_over_seeds([1.0, 2.0, 3.0])
    assert ci_overlap(a, a)
    assert ci_overlap(a, summarize_over_seeds([3.0, 4.0, 5.0]))
    assert not ci_overlap(summarize_over_seeds([1.0, 1.1]), summarize_over_seeds([5.0, 5.1]))
    far = summarize_over_seeds([100.0])
    assert not ci_overlap(a, far) and not ci_overlap(far, a)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(methods=[]), "at least one method"),
        (dict(seeds=()), "at least one seed"),
        (dict(seeds=(0, 0)), "seeds repeat"),
        (dict(seeds=(-1,)), "every seed must be an int >= 0"),
        (dict(samples_per_seed=1), "samples_per_seed must be an int >= 2"),
        (dict(samples_per_seed=5, batch_size=2), "must be a multiple of batch_size"),
        (dict(batch_size=0), "batch_size must be an int >= 1"),
        (dict(samples_per_seed=SEED_STRIDE + 1), f"at most {SEED_STRIDE} calls per seed"),
        (dict(methods=[Method("t", "target"), Method("t", "draft")]), "method names repeat"),
        (dict(methods=[Method("late", "test3", entry_num=5)]), "entry_num 5 exceeds the 4 stages"),
        (dict(real_img_B3HW=torch.rand(4, 3, 16, 16)), r"real images must be \(N >= 2, 3, 64, 64\)"),
        (dict(classifier=DigitClassifier(ClassifierConfig(image_size=16))), "classifier takes 16x16 images"),
        (dict(classifier=DigitClassifier(ClassifierConfig(image_size=64, num_classes=3))), "classifier has 3 classes"),
        (dict(cfg=-1.0), "cfg"),
    ],
)
def test_bad_input_raises_value_error(random_pair, scorer, kwargs, match):
    clf, real = scorer
    args = dict(methods=[Method("target", "target")], seeds=(0,), samples_per_seed=2, classifier=clf,
                real_img_B3HW=real)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        evaluate_methods(random_pair, **args)


def test_select_methods_and_default_methods_check_names():
    methods = default_methods(7)
    assert [m.name for m in select_methods(methods, ["exact_g2", "target"])] == ["exact_g2", "target"]
    with pytest.raises(ValueError, match="unknown method"):
        select_methods(methods, ["exact_g9"])
    with pytest.raises(ValueError, match="repeat"):
        select_methods(methods, ["target", "target"])
    with pytest.raises(ValueError, match="num_stages must be an int >= 2"):
        default_methods(1)


def test_cli_writes_json_and_prints_the_table(tmp_path, capsys):
    rc = main(["--out", str(tmp_path), "--seeds", "0", "1", "--samples", "2", "--methods", "target,exact_g2,test3_e3",
               "--extra-batch-size", "2", "--extra-methods", "target,exact_g2"])
    assert rc == 0
    out = capsys.readouterr().out
    report = load_report(tmp_path / "evaluation.json")
    assert [(r.name, r.batch_size) for r in report.results] == [
        ("target", 1), ("exact_g2", 1), ("test3_e3", 1), ("target", 2), ("exact_g2", 2)]
    assert report.command.startswith("python -m sdvar_lib.evaluate --out")
    assert report.machine.torch_threads == 1 and report.num_stages == 7
    assert out.rstrip().endswith(report.markdown_table(2).splitlines()[-1])
    assert (tmp_path / "evaluation.md").read_text().strip() == report.markdown()
    assert math.isclose(report.result("test3_e3").target_passes_per_call.mean, 4.0)
    manifest = json.loads((tmp_path / ".sdvar-output.json").read_text())  # what this run wrote: a later run may replace it
    assert manifest["owner"] == "python -m sdvar_lib.evaluate"
    assert sorted(manifest["files"]) == ["evaluation.json", "evaluation.md"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", ""], "expected comma-separated method names"),
        (["--methods", "nope"], "unknown method(s) ['nope']"),
        (["--seeds", "-1"], "every value of --seeds must be an int in [0, 9223372036854775807]"),
        (["--samples", "1"], "--samples must be an int >= 2"),
        (["--threads", "0"], "--threads must be an int >= 1"),
        (["--cfg", "nan"], "cfg must be a finite number >= 0"),
        (["--top-p", "2"], "top_p must be a finite number in [0, 1]"),
        (["--device", "gpu"], "device 'gpu' is not a device name"),
        (["--extra-batch-size", "2", "--extra-methods", "exact_g9"], "unknown method(s) ['exact_g9']"),
    ],
)
def test_cli_names_a_bad_argument_in_one_line_before_any_work(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as info:
        main(["--out", str(tmp_path / "out"), *args])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("usage: ") is False and message in err[-1], err
    assert not (tmp_path / "out").exists()


def test_cli_never_replaces_a_folder_of_someone_else(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--samples", "2", "--seeds", "0", "--methods", "target"])
    assert "holds files that no workbench run wrote" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ---- the stored evaluation of the bundled pair (the table in BENCHMARKS.md) ------------------------------
@pytest.fixture(scope="module")
def stored_report() -> EvaluationReport:
    return load_bundled_report()


def test_stored_report_covers_the_issue_methods_with_five_seeds(stored_report):
    batch1 = [r for r in stored_report.results if r.batch_size == 1]
    assert [r.name for r in batch1] == ISSUE_METHODS
    assert stored_report.num_stages == 7 and stored_report.cfg == 1.5
    for r in stored_report.results:
        assert len(r.seeds) >= 5 and len(r.per_seed) == len(r.seeds)
        assert r.num_calls == len(r.seeds) * r.samples_per_seed // r.batch_size


def test_stored_report_target_beats_draft_and_exact_matches_target(stored_report):
    """The claims of issue 5, checked on the committed numbers (a regenerated table must keep them)."""
    for b in stored_report.batch_sizes:
        target = stored_report.reference_result(b)
        assert target is not None and target.target_passes_per_call.mean == stored_report.num_stages
        assert target.class_consistency.mean >= 0.8
        for r in stored_report.results:
            if r.batch_size == b and r.kind == "sdvar" and r.lossless:
                assert stored_report.matches_target(r) == (True, True), r.name
                assert r.target_passes_per_call.mean < stored_report.num_stages, r.name
    target, draft = stored_report.result("target", 1), stored_report.result("draft", 1)
    assert target.class_consistency.ci_low > draft.class_consistency.ci_high
    assert target.frechet_distance.ci_high < draft.frechet_distance.ci_low


@pytest.mark.parametrize("name", ["draft", "test3_e3"])
def test_stored_report_rows_are_reproduced_by_the_code(stored_report, name):
    """Seed 0 of a stored row, re-run now, gives the stored class-consistency and Fréchet distance."""
    stored = stored_report.result(name, 1)
    pair = load_pair("bundled", device="cpu")
    spec = select_methods(default_methods(pair.target.num_stages), [name])
    (fresh,) = evaluate_methods(pair, spec, seeds=stored.seeds[:1], samples_per_seed=stored.samples_per_seed,
                                batch_size=1, cfg=stored_report.cfg, top_k=stored_report.top_k,
                                top_p=stored_report.top_p)
    old, new = stored.per_seed[0], fresh.per_seed[0]
    assert new.class_consistency == pytest.approx(old.class_consistency, abs=2 / stored.samples_per_seed)
    assert new.frechet_distance == pytest.approx(old.frechet_distance, rel=0.02)
    assert fresh.target_passes_per_call.values[0] == stored.target_passes_per_call.values[0]
    assert fresh.draft_passes_per_call.values[0] == stored.draft_passes_per_call.values[0]


# ---- the evaluation's claims recomputed: exact rows re-run, and a criterion that tells lossless from lossy -----
# The stored table's own criterion (confidence intervals of class-consistency and Fréchet distance overlap the
# target's) also passes lossy rows (top1_match, test3_e2, ...): quality metrics average distortions away. The
# re-runs below use fresh calls (seed RERUN_SEED, not a stored one: g_seed = SEED_STRIDE * RERUN_SEED + i,
# balanced labels) and sdvar_lib.eval.lossless, which reads every token: at family-wise level 1e-3 over the 14
# statistics of 7 stages, "lossless" is rejected when a |z| exceeds 3.97.
RERUN_SEED = 9
RERUN_ALPHA = 1e-3


@dataclass
class Rerun:
    labels: torch.Tensor
    tokens: list[torch.Tensor]
    images: torch.Tensor
    target_passes_per_call: list[int]


@pytest.fixture(scope="module")
def bundled_sd():
    pair = load_pair("bundled", device="cpu")
    return SDVAR(pair.draft, pair.target)


def _rerun(sd: SDVAR, name: str, images: int, batch_size: int, cfg: float) -> Rerun:
    spec = get_method(name)
    labels_N = balanced_labels(images, sd.target_model.num_classes)
    sampling = SamplingConfig(cfg=cfg)
    tokens, imgs, passes = [[] for _ in range(sd.num_stages)], [], []
    for i, start in enumerate(range(0, images, batch_size)):
        out = spec.run(sd, batch_size, labels_N[start : start + batch_size], SEED_STRIDE * RERUN_SEED + i, sampling)
        for s, t in enumerate(out.tokens_per_stage):
            tokens[s].append(t)
        imgs.append(out.images_B3HW)
        passes.append(out.stats.target_passes)
    return Rerun(labels_N, [torch.cat(t) for t in tokens], torch.cat(imgs), passes)


def _verdict(sd: SDVAR, run: Rerun, cfg: float):
    evidence = token_evidence(sd.target_model, run.labels, run.tokens, SamplingConfig(cfg=cfg))
    return lossless_verdict(evidence, RERUN_ALPHA)


def _consistent(rerun_mean: float, rerun_se: float, stored: SeedSummary, z: float = 3.29) -> bool:
    """Two-sample agreement at level 1e-3: the stored CI widened by the re-run's own sampling error."""
    stored_se = stored.std / math.sqrt(stored.num_seeds)
    return abs(rerun_mean - stored.mean) <= z * math.sqrt(rerun_se**2 + stored_se**2)


@pytest.mark.parametrize(("name", "images"), [("target", 64), ("exact_g1", 128), ("exact_adaptive", 128)])
def test_stored_exact_rows_are_recomputed_within_their_confidence_intervals(stored_report, bundled_sd, name, images):
    """Fresh images at batch 8: the lossless criterion passes (the target's own row calibrates it on this pair),
    and target passes per call and class-consistency agree with the stored batch-8 row (two-sample z at level
    1e-3; the Fréchet distance is left out: with 128 images it is biased against the stored 320-image values).
    Measured (seed 9): largest |z| target 1.35 (128 images), exact_g1 1.89, exact_adaptive 2.32 (bound 3.97)."""
    stored = stored_report.result(name, 8)
    run = _rerun(bundled_sd, name, images, 8, stored_report.cfg)
    verdict = _verdict(bundled_sd, run, stored_report.cfg)
    print(f"{name} ({images} images): {verdict.describe()}")
    assert verdict.lossless, f"{name}: {verdict.describe()}"
    passes = torch.tensor(run.target_passes_per_call, dtype=torch.float64)
    assert _consistent(float(passes.mean()), float(passes.std()) / math.sqrt(passes.numel()),
                       stored.target_passes_per_call), (passes.mean(), stored.target_passes_per_call)
    if stored.kind == "sdvar":
        assert float(passes.mean()) < stored_report.num_stages
    cc = class_consistency(load_bundled_classifier(), run.images.float().cpu(), run.labels).accuracy
    cc_se = math.sqrt(cc * (1 - cc) / run.labels.numel())
    assert _consistent(cc, cc_se, stored.class_consistency), (cc, stored.class_consistency)


LOSSY_RERUNS = [  # (method, images)
    ("draft", 32), ("top1_0.5_g2", 256), ("top1_0.9_g2", 256), ("relaxed_0.05_g2", 64), ("relaxed_0.1_g2", 32),
    ("relaxed_0.3_g2", 32), ("test3_e2", 128), ("test3_e3", 32), ("test3_e4", 32), ("test3_e5", 32), ("code_e3", 32),
    ("code_e5", 32),
]


@pytest.mark.parametrize(("name", "images"), LOSSY_RERUNS, ids=[n for n, _ in LOSSY_RERUNS])
def test_every_lossy_row_fails_the_lossless_criterion(stored_report, bundled_sd, name, images):
    """Re-run at batch 16 with fresh seeds; the criterion rejects every lossy row of the stored table (bound 3.97).

    Measured largest ``|z|`` with seeds 9 (the one used), 10 and 11: draft 38.8; top1_0.5_g2 5.7 / 6.8 / 5.6
    (stage 0 and 1 argmax rate both beyond the bound); top1_0.9_g2 5.7 / 6.8 / 5.6 (stage 0 argmax rate only:
    ``top1_match`` keeps the draft's stage-0 token when it is the target's argmax; the expected value, from the
    models' stage-0 laws, is ``0.39 sqrt(images) = 6.25``, power 0.99 at 256 images); test3_e2 9.2 / 8.7 / 10.5
    (stage-1 surprisal); test3_e3 8.1 / 12.6 / 10.1; code_e3 40.6 / 40.4 / 44.7; code_e5 39.0. Power >= 0.99 for
    these rows (top1_0.9_g2 the weakest, as computed above). The relaxed rows, re-measured after the budget
    became a bound on the committed law's total variation, at seed 9 only: relaxed 0.05 (64 images) 7.24,
    0.1 (32 images) 8.89, 0.3 (32 images) 25.4, all stage-6 surprisal; their power over seeds is not measured.
    """
    assert not stored_report.result(name, 1).lossless
    run = _rerun(bundled_sd, name, images, 16, stored_report.cfg)
    verdict = _verdict(bundled_sd, run, stored_report.cfg)
    print(f"{name} ({images} images): {verdict.describe()}")
    assert not verdict.lossless, f"{name}: {verdict.describe()}"
