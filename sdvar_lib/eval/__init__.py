"""eval: measuring quality — metrics (classifier, Fréchet distance, confidence intervals, image comparison),
the quality-against-passes evaluation of every registered decoder, the lossless criterion, and FID/IS/
precision-recall of sample sets (:mod:`~sdvar_lib.eval.fid`, which reads the sets of :mod:`sdvar_lib.samples`).

May import: ``sdvar_lib.samples`` and everything below it (``fast``, ``sdvar``, ``models``, ``data``, ``util``).
"""

from sdvar_lib.eval.evaluation import (
    EvaluationReport,
    MethodResult,
    default_methods,
    evaluate_methods,
    load_bundled_report,
    load_report,
)
from sdvar_lib.eval.lossless import LosslessVerdict, lossless_verdict
from sdvar_lib.eval.metrics import (
    DigitClassifier,
    ImageComparison,
    SeedSummary,
    class_consistency,
    compare_images,
    feature_frechet_distance,
    frechet_distance,
    gaussian_stats,
    load_bundled_classifier,
    summarize_over_seeds,
)

__all__ = [
    "compare_images", "ImageComparison", "class_consistency", "feature_frechet_distance", "frechet_distance",
    "gaussian_stats", "DigitClassifier", "load_bundled_classifier", "SeedSummary", "summarize_over_seeds",
    "EvaluationReport", "MethodResult", "default_methods", "evaluate_methods", "load_report", "load_bundled_report",
    "LosslessVerdict", "lossless_verdict",
]
