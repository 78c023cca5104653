"""``python -m sdvar_lib.train_tiny``: retrain the bundled digits pair (see :mod:`sdvar_lib.tiny`)."""

import sys

from sdvar_lib.tiny.train import main

if __name__ == "__main__":
    sys.exit(main())
