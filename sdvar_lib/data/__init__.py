"""data: the datasets of the bundled models (scikit-learn's handwritten digits at 16x16).

May import: ``sdvar_lib.util``.
"""

from sdvar_lib.data.digits import DIGITS_IMAGE_SIZE, DIGITS_NUM_CLASSES, DigitsSplit, load_digits_split, to_unit_range

__all__ = ["DIGITS_NUM_CLASSES", "DIGITS_IMAGE_SIZE", "DigitsSplit", "load_digits_split", "to_unit_range"]
