"""FID, Inception Score and precision/recall of a sample set, as VAR's evaluation protocol reports them.

The protocol (DESIGN §9) scores ``samples.npz`` (``arr_0``: uint8 ``(N, H, W, 3)``) against the
reference batch ``VIRTUAL_imagenet256_labeled.npz`` with the OpenAI guided-diffusion evaluator.
This module computes the same four numbers from features of a pluggable extractor:

- ``inception`` (default): the FID InceptionV3 of **torch-fidelity** (``pip install
  "sdvar-workbench[fid]"``), a port of the TensorFlow graph the evaluator uses. Its weights are
  downloaded by torch-fidelity on first use, or read from a local file (``weights=``; a machine
  without network: copy torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` there). Local
  files are checked to be plain state dicts (``weights_only``) before torch-fidelity reads them.
  torchvision's own ImageNet InceptionV3 weights give a *different* FID and must not be used for
  reported numbers.
- ``digits``: the bundled digit classifier (:class:`~sdvar_lib.eval.metrics.DigitClassifier`, 64-d
  features, 10 logits) for the bundled 16x16 pair, or the same architecture from a local state dict.

Metrics (each follows the evaluator):

- FID: Fréchet distance of Gaussians fitted to the pool features
  (:func:`sdvar_lib.eval.metrics.frechet_distance`). When the reference ``.npz`` stores ``mu`` and
  ``sigma`` and the extractor is ``inception`` (2048-d), those statistics are used, as the evaluator
  does (``reference_stats="auto"``); ``"images"`` always recomputes them from ``arr_0``.
- Inception Score: ``exp(E[KL(p(y|x) || p(y))])`` over consecutive splits of 5,000 samples, mean
  (and std) over splits, from the logits without bias (``logits_unbiased``).
- Precision / recall (Kynkäänniemi et al. 2019): k-NN manifolds with ``k = 3``; precision = share
  of samples inside some reference ball, recall = share of references inside some sample ball.

**How many images a number rests on.** Every report carries its ``num_samples`` and
``num_reference`` and, below the protocol's sizes, notes saying what the number can and cannot be
compared with (:func:`sample_size_notes`). The minimums:

==================  =============================================  =======================================
metric              refused below (``allow_few`` lifts it)         noted below
==================  =============================================  =======================================
FID                 ``D + 1`` images in a set whose Gaussian is    :data:`PROTOCOL_SAMPLES` (50,000)
                    fitted (``D`` = feature width: 2048 for
                    Inception, 64 for the digits classifier)
Inception Score     --                                             :data:`IS_SPLIT` (5,000, one split)
precision/recall    ``k + 1`` = 4 images per set                   :data:`PR_MIN_IMAGES` (10,000)
==================  =============================================  =======================================

Why: FID fits a ``D``-dimensional Gaussian to each set; with ``N <= D`` images its covariance is
singular (rank ``N - 1``), and the number then measures mostly how few images there are. Above
that, FID is still biased upward by a term that shrinks like ``1/N`` (Chong & Forsyth, *Effectively
Unbiased FID and Inception Score*, CVPR 2020): two FIDs are comparable only at the same ``N``, and
papers report ``N`` = 50,000. The Inception Score is computed over splits of 5,000 images (the
evaluator's); a smaller set is one shorter split, biased as well, with no spread over splits
(``inception_score_std`` is ``None`` then). Precision and recall estimate each manifold from the
distance to the 3rd nearest neighbour, which shrinks as ``N`` grows: on small sets the balls are
wide and both numbers are inflated (the evaluator uses 10,000 references and 50,000 samples).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from sdvar_lib.eval.metrics import (
    ClassifierConfig,
    DigitClassifier,
    GaussianStats,
    frechet_distance,
    gaussian_stats,
    load_bundled_classifier,
)
from sdvar_lib.models.checkpoints import BUNDLED_DIR, CheckpointError, load_checkpoint_file, load_state_dict_checked
from sdvar_lib.samples.npz import NpzArrayReader
from sdvar_lib.samples.shards import STATS, FileRecord
from sdvar_lib.util.atomic import atomic_write_text
from sdvar_lib.util.checks import check_choice, check_int

log = logging.getLogger(__name__)

__all__ = [
    "EXTRACTORS",
    "REFERENCE_STATS",
    "TORCH_FIDELITY_MISSING",
    "FeatureExtractor",
    "ClassifierExtractor",
    "TorchFidelityInception",
    "load_extractor",
    "Features",
    "extract_features",
    "inception_score",
    "precision_recall",
    "fid_from_stats",
    "QualityReport",
    "Reference",
    "score_samples",
    "reference_stats_from_npz",
    "PROTOCOL_SAMPLES",
    "IS_SPLIT",
    "PR_K",
    "PR_MIN_IMAGES",
    "fid_minimum",
    "check_fid_size",
    "sample_size_notes",
    "sampler_stats",
]

PROTOCOL_SAMPLES = 50_000
"""Images per set in VAR's protocol (50 per ImageNet class), the ``N`` of every FID papers report."""
IS_SPLIT = 5_000
"""The evaluator's Inception Score split size (10 splits of a 50,000-image set)."""
PR_K = 3
"""Neighbours of the k-NN manifolds of precision/recall (Kynkäänniemi et al., as the evaluator)."""
PR_MIN_IMAGES = 10_000
"""Below this many images in either set precision/recall get a note (the evaluator's reference batch has 10,000)."""

EXTRACTORS = ("inception", "digits")
REFERENCE_STATS = ("auto", "images")
TORCH_FIDELITY_MISSING = (
    "the 'inception' feature extractor needs torch-fidelity: pip install \"sdvar-workbench[fid]\" (or pip install "
    "torch-fidelity); it downloads the FID InceptionV3 weights on first use, or pass the weights file "
    "(weights-inception-2015-12-05-6726825d.pth) with --extractor-weights on a machine without network"
)


# ---- feature extractors ---------------------------------------------------------------------------
class FeatureExtractor:
    """``uint8 (B, 3, H, W)`` images -> ``(pool features (B, D), logits (B, C))``, both float32 on the CPU."""

    name: str = ""
    feature_dim: int = 0
    image_size: int | None = None
    """The only input size accepted (``None``: any size; the extractor resizes)."""
    device: torch.device = torch.device("cpu")

    def __call__(self, img_B3HW_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class ClassifierExtractor(FeatureExtractor):
    """The digit classifier's penultimate features and logits (images scaled to ``[0, 1]``)."""

    def __init__(self, model: DigitClassifier, source: str) -> None:
        self.model = model.eval()
        self.name = "digits"
        self.feature_dim = model.config.feature_dim
        self.image_size = model.config.image_size
        self.device = next(model.parameters()).device
        self.source = source

    @torch.no_grad()
    def __call__(self, img_B3HW_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = img_B3HW_u8.to(self.device).float().div(255)
        feats = self.model.features(x)
        return feats.float().cpu(), self.model.head(feats).float().cpu()

    def describe(self) -> str:
        return f"digits classifier ({self.source}; {self.feature_dim}-d features)"


def _load_torch_fidelity():
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as exc:
        raise ImportError(TORCH_FIDELITY_MISSING) from exc
    return FeatureExtractorInceptionV3


class TorchFidelityInception(FeatureExtractor):
    """torch-fidelity's FID InceptionV3: 2048-d pool features and the 1008 logits without bias (as the evaluator)."""

    def __init__(self, weights: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> None:
        cls = _load_torch_fidelity()
        path = None
        if weights is not None:
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(f"InceptionV3 weights {path} not found")
            load_checkpoint_file(path)  # refuses anything but a plain state dict before torch-fidelity unpickles it
            path = str(path)
        self.model = cls("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=path)
        self.model = self.model.to(device).eval()
        self.name = "inception"
        self.feature_dim = 2048
        self.image_size = None
        self.device = torch.device(device)
        self.source = path or "downloaded by torch-fidelity"

    @torch.no_grad()
    def __call__(self, img_B3HW_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool, logits = self.model(img_B3HW_u8.to(self.device))
        return pool.float().cpu(), logits.float().cpu()

    def describe(self) -> str:
        return f"torch-fidelity FID InceptionV3 ({self.source})"


def load_extractor(
    name: str = "inception",
    weights: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    bundle_dir: str | os.PathLike | None = None,
) -> FeatureExtractor:
    """The feature extractor ``name`` (see the module docstring), weights from ``weights`` when given."""
    check_choice(name, "feature extractor", EXTRACTORS)
    if name == "inception":
        return TorchFidelityInception(weights, device)
    if weights is None:
        return ClassifierExtractor(load_bundled_classifier(device, bundle_dir), "bundled classifier.pth")
    folder = Path(bundle_dir) if bundle_dir is not None else BUNDLED_DIR
    config = json.loads((folder / "config.json").read_text()).get("classifier")
    if not isinstance(config, dict):
        raise CheckpointError(f"{folder / 'config.json'} has no 'classifier' entry (the architecture of the weights)")
    model = DigitClassifier(ClassifierConfig(**config))
    load_state_dict_checked(model, load_checkpoint_file(weights), str(weights))
    return ClassifierExtractor(model.to(device), str(weights))


# ---- features -------------------------------------------------------------------------------------
@dataclass
class Features:
    """Pool features ``(N, D)`` and logits ``(N, C)`` of an image set (float64 numpy)."""

    pool_ND: np.ndarray
    logits_NC: np.ndarray

    @property
    def num_images(self) -> int:
        return self.pool_ND.shape[0]


def _batches_of(source, batch_size: int) -> tuple[int, Iterable[np.ndarray], Callable[[], None]]:
    if isinstance(source, np.ndarray):
        if source.ndim != 4 or source.shape[-1] != 3 or source.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {source.dtype} {source.shape}")
        return len(source), (source[i : i + batch_size] for i in range(0, len(source), batch_size)), lambda: None
    reader = NpzArrayReader(source, "arr_0").__enter__()
    if len(reader.shape) != 4 or reader.shape[-1] != 3 or reader.dtype != np.uint8:
        reader.close()
        raise ValueError(f"{source}: arr_0 must be uint8 (N, H, W, 3) as the evaluator expects, got {reader.dtype} "
                         f"{reader.shape}")
    return reader.shape[0], reader.batches(batch_size), reader.close


@torch.no_grad()
def extract_features(extractor: FeatureExtractor, source: str | os.PathLike | np.ndarray, batch_size: int = 100,
                     limit: int | None = None) -> Features:
    """Features of every image of an ``.npz`` (``arr_0``, read in batches) or of a uint8 ``(N, H, W, 3)`` array."""
    check_int(batch_size, "batch_size", 1)
    n, batches, close = _batches_of(source, batch_size)
    if n < 2:
        close()
        raise ValueError(f"{source if not isinstance(source, np.ndarray) else 'images'}: need at least 2 images, got {n}")
    pools, logits = [], []
    seen = 0
    try:
        for batch in batches:
            if extractor.image_size is not None and batch.shape[1:3] != (extractor.image_size, extractor.image_size):
                raise ValueError(f"the {extractor.name} extractor takes {extractor.image_size}x{extractor.image_size} "
                                 f"images, got {batch.shape[1]}x{batch.shape[2]}")
            if limit is not None:
                batch = batch[: max(limit - seen, 0)]
                if len(batch) == 0:
                    break
            x = torch.from_numpy(np.array(batch)).permute(0, 3, 1, 2)  # a writable copy of the read buffer
            pool, logit = extractor(x)
            pools.append(pool.double().numpy())
            logits.append(logit.double().numpy())
            seen += len(batch)
    finally:
        close()
    return Features(pool_ND=np.concatenate(pools), logits_NC=np.concatenate(logits))


# ---- how many images a number rests on -------------------------------------------------------------
def fid_minimum(feature_dim: int) -> int:
    """The fewest images whose FID the workbench computes without ``allow_few``: ``feature_dim + 1`` (a full-rank
    covariance; see the module docstring)."""
    return check_int(feature_dim, "feature_dim", 1) + 1


def check_fid_size(num_images: int, feature_dim: int, what: str, allow_few: bool = False) -> None:
    """``ValueError`` when a Gaussian of ``feature_dim``-d features would be fitted to too few images (``what``)."""
    if not allow_few and num_images < fid_minimum(feature_dim):
        raise ValueError(
            f"{what}: FID needs at least {fid_minimum(feature_dim)} images with {feature_dim}-d features, got "
            f"{num_images}: the covariance of fewer is singular and FID then measures mostly the sample size (the "
            f"protocol uses {PROTOCOL_SAMPLES:,}); pass allow_few=True (--allow-few) to compute it anyway"
        )


def sample_size_notes(num_samples: int, num_reference: int | None, metrics: Iterable[str] = ("fid", "is", "pr"),
                      feature_dim: int | None = None) -> list[str]:
    """What the numbers of a set of ``num_samples`` (against ``num_reference`` references; ``None``: stored
    statistics) can be compared with, one sentence per metric below the protocol's sizes (module docstring)."""
    metrics = set(metrics)
    notes = []
    if num_samples < PROTOCOL_SAMPLES:
        few = feature_dim is not None and num_samples < fid_minimum(feature_dim)
        notes.append(f"FID of {num_samples:,} samples is biased upward (by a term shrinking like 1/N"
                     f"{'; fewer than the feature width + 1, so the covariance is singular' if few else ''}): compare it "
                     f"only with FIDs of {num_samples:,} samples; papers use {PROTOCOL_SAMPLES:,}")
    if "is" in metrics and num_samples < IS_SPLIT:
        notes.append(f"IS over one split of {num_samples:,} images (the evaluator's splits hold {IS_SPLIT:,}; no spread "
                     "over splits): not comparable with published IS")
    if "pr" in metrics:
        small = min(num_samples, num_reference if num_reference is not None else num_samples)
        if small < PR_MIN_IMAGES:
            notes.append(f"precision/recall from k={PR_K} neighbours among {small:,} images: the k-NN balls are wide "
                         f"on small sets, so both are inflated (the evaluator uses {PR_MIN_IMAGES:,} references)")
    return notes


def sampler_stats(samples: str | os.PathLike) -> tuple[dict | None, str | None]:
    """The sampler's ``stats.json`` beside ``samples`` if it describes that very file: ``(stats, None)``.

    ``(None, note)`` when there is none, or it is not the sampler's or records no samples file (an older
    sampler): nothing is attached. ``ValueError`` when it records another ``samples.npz`` (another size or
    SHA-256): statistics of another set are never attached to a score.
    """
    samples = Path(samples)
    path = samples.with_name(STATS)
    if not path.is_file():
        return None, None
    try:
        stats = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{path} is unreadable ({type(exc).__name__}); not used"
    if not isinstance(stats, dict) or not str(stats.get("format", "")).startswith("sdvar-sample-stats/"):
        return None, f"{path} is not the sampler's stats.json; not used"
    recorded = FileRecord.from_dict(stats.get("samples"))
    if recorded is None or stats["samples"].get("file") != samples.name:
        return None, (f"{path} records no size and hash of {samples.name} (an older sampler, or it describes another "
                      "file); not used")
    actual = FileRecord.of(samples)
    if actual != recorded:
        what = f"{recorded.bytes} bytes" if actual.bytes != recorded.bytes else "another SHA-256"
        raise ValueError(f"{path} describes another set ({samples.name} of {what}; {samples} has {actual.bytes} bytes, "
                         f"SHA-256 {actual.sha256[:12]}...): it is not this file's; move one of them, or score a copy "
                         "of the samples file outside that folder")
    return stats, None


# ---- metrics --------------------------------------------------------------------------------------
def fid_from_stats(a: GaussianStats, b: GaussianStats) -> float:
    """FID of two fitted Gaussians (one formula for the workbench: :func:`sdvar_lib.eval.metrics.frechet_distance`)."""
    return frechet_distance(a, b)


def inception_score(logits_NC: np.ndarray, split_size: int = 5000) -> tuple[float, float]:
    """``(mean, std)`` over consecutive splits of ``split_size`` samples of ``exp(E_x KL(p(y|x) || p(y)))``."""
    check_int(split_size, "split_size", 1)
    logits = torch.as_tensor(np.asarray(logits_NC), dtype=torch.float64)
    if logits.ndim != 2 or logits.shape[0] < 1:
        raise ValueError(f"logits must be (N >= 1, C), got {tuple(logits.shape)}")
    log_p = logits.log_softmax(dim=1)
    scores = []
    for i in range(0, logits.shape[0], split_size):
        lp = log_p[i : i + split_size]
        log_marginal = torch.logsumexp(lp, dim=0) - math.log(lp.shape[0])
        kl = (lp.exp() * (lp - log_marginal)).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


def _kth_distances(x: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """Distance of every row of ``x`` to its ``k``-th nearest other row."""
    out = []
    for i in range(0, x.shape[0], block):
        d = torch.cdist(x[i : i + block], x)
        out.append(d.kthvalue(k + 1, dim=1).values)  # the row itself is at distance 0
    return torch.cat(out)


def _inside_any(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int) -> torch.Tensor:
    hits = []
    for i in range(0, points.shape[0], block):
        d = torch.cdist(points[i : i + block], centres)
        hits.append((d <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(hits)


def precision_recall(reference_ND: np.ndarray, samples_ND: np.ndarray, k: int = 3, block: int = 2048,
                     device: torch.device | str = "cpu") -> tuple[float, float]:
    """Improved precision and recall (k-NN manifolds, ``k`` neighbours) of samples against references."""
    check_int(k, "k", 1)
    check_int(block, "block", 1)
    ref = torch.as_tensor(np.asarray(reference_ND), dtype=torch.float32, device=device)
    smp = torch.as_tensor(np.asarray(samples_ND), dtype=torch.float32, device=device)
    if ref.ndim != 2 or smp.ndim != 2 or ref.shape[1] != smp.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {tuple(ref.shape)} and {tuple(smp.shape)}")
    if min(ref.shape[0], smp.shape[0]) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images in each set, got {ref.shape[0]} "
                         f"references and {smp.shape[0]} samples")
    ref_radii = _kth_distances(ref, k, block)
    smp_radii = _kth_distances(smp, k, block)
    precision = float(_inside_any(smp, ref, ref_radii, block).double().mean())
    recall = float(_inside_any(ref, smp, smp_radii, block).double().mean())
    return precision, recall


# ---- one report -----------------------------------------------------------------------------------
@dataclass
class QualityReport:
    """The four numbers of one sample set against one reference, and how they were made."""

    samples: str
    reference: str
    extractor: str
    num_samples: int
    num_reference: int | None
    """``None`` when FID used stored statistics and no precision/recall was asked for."""
    fid: float
    inception_score: float | None
    inception_score_std: float | None
    """The spread over splits of :data:`IS_SPLIT` images; ``None`` with one split."""
    precision: float | None
    recall: float | None
    reference_stats: str
    """``"images"`` (fitted to the reference's features) or ``"stored mu/sigma"`` (from the reference file)."""
    notes: list[str] = field(default_factory=list)
    """What the numbers can be compared with, given how many images they rest on (:func:`sample_size_notes`)."""

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        def f(v, fmt):
            return "-" if v is None else format(v, fmt)

        refs = "the stored statistics" if self.num_reference is None else f"{self.num_reference:,} references"
        return (f"FID {self.fid:.4f}  IS {f(self.inception_score, '.3f')}  precision {f(self.precision, '.4f')}  "
                f"recall {f(self.recall, '.4f')}  ({self.num_samples:,} samples vs {refs})")

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")


def reference_stats_from_npz(path: str | os.PathLike, feature_dim: int) -> GaussianStats | None:
    """``mu``/``sigma`` stored in a reference ``.npz`` (as the evaluator's reference batches hold), if they fit."""
    with np.load(path) as z:
        if "mu" not in z.files or "sigma" not in z.files:
            return None
        mu, sigma = np.asarray(z["mu"], dtype=np.float64), np.asarray(z["sigma"], dtype=np.float64)
    if mu.shape != (feature_dim,) or sigma.shape != (feature_dim, feature_dim):
        return None
    return GaussianStats(mean_D=mu, cov_DD=sigma, num_samples=0)


@dataclass
class Reference:
    """What sample sets are scored against: its features (for precision/recall) and the Gaussian of its FID."""

    source: str
    features: Features | None
    stats: GaussianStats
    stats_source: str
    """``"images"`` (fitted to the reference's features) or ``"stored mu/sigma"`` (from the reference file)."""

    @classmethod
    def load(cls, source: str | os.PathLike | np.ndarray, extractor: FeatureExtractor, batch_size: int = 100,
             reference_stats: str = "auto", need_features: bool = True, allow_few: bool = False) -> Reference:
        """Features of ``source`` (an ``.npz`` or a uint8 array) and its FID statistics.

        With ``reference_stats="auto"``, the ``inception`` extractor and a file holding ``mu``/``sigma``
        of the right size, FID uses those (the evaluator's rule); features are then only computed
        when ``need_features`` (precision/recall). A Gaussian fitted to fewer than :func:`fid_minimum`
        images is refused unless ``allow_few``.
        """
        check_choice(reference_stats, "reference_stats", REFERENCE_STATS)
        is_file = not isinstance(source, np.ndarray)
        stored = None
        if reference_stats == "auto" and extractor.name == "inception" and is_file:
            stored = reference_stats_from_npz(source, extractor.feature_dim)
        feats = extract_features(extractor, source, batch_size) if stored is None or need_features else None
        if stored is None:
            check_fid_size(feats.num_images, extractor.feature_dim, f"reference {source if is_file else 'array'}",
                           allow_few)
        return cls(source=str(source) if is_file else "array", features=feats,
                   stats=stored if stored is not None else gaussian_stats(feats.pool_ND),
                   stats_source="stored mu/sigma" if stored is not None else "images")


def score_samples(
    samples: str | os.PathLike | np.ndarray | Features,
    reference: Reference,
    extractor: FeatureExtractor,
    batch_size: int = 100,
    metrics: Iterable[str] = ("fid", "is", "pr"),
    k: int = PR_K,
    allow_few: bool = False,
) -> QualityReport:
    """FID, Inception Score and precision/recall of ``samples`` (an ``.npz``, a uint8 array or features).

    Fewer samples than :func:`fid_minimum` are refused unless ``allow_few``; the report's ``notes``
    say what its numbers can be compared with (:func:`sample_size_notes`)."""
    metrics = set(metrics)
    if metrics - {"fid", "is", "pr"} or "fid" not in metrics:
        raise ValueError(f"metrics must include 'fid' and may add 'is' and 'pr', got {sorted(metrics)}")
    if not isinstance(reference, Reference):
        raise TypeError(f"reference must be a Reference (Reference.load(...)), got {type(reference).__name__}")
    smp = samples if isinstance(samples, Features) else extract_features(extractor, samples, batch_size)
    name = "array" if isinstance(samples, np.ndarray) else "features" if isinstance(samples, Features) else str(samples)
    check_fid_size(smp.num_images, smp.pool_ND.shape[1], f"samples {name}", allow_few)
    fid = fid_from_stats(gaussian_stats(smp.pool_ND), reference.stats)
    is_mean = is_std = None
    if "is" in metrics:
        is_mean, is_std = inception_score(smp.logits_NC, IS_SPLIT)
        if smp.num_images <= IS_SPLIT:
            is_std = None  # one split: no spread
    precision = recall = None
    if "pr" in metrics:
        if reference.features is None:
            raise ValueError("precision/recall needs the reference's features (Reference.load(..., need_features=True))")
        precision, recall = precision_recall(reference.features.pool_ND, smp.pool_ND, k=k, device=extractor.device)
    num_reference = reference.features.num_images if reference.features is not None else None
    return QualityReport(
        samples=name, reference=reference.source, extractor=extractor.describe(), num_samples=smp.num_images,
        num_reference=num_reference, fid=fid, inception_score=is_mean, inception_score_std=is_std, precision=precision,
        recall=recall, reference_stats=reference.stats_source,
        notes=sample_size_notes(smp.num_images, num_reference, metrics, smp.pool_ND.shape[1]),
    )
