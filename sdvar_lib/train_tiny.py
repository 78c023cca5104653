"""``python -m sdvar_lib.train_tiny``: retrain the bundled digits pair (see :mod:`sdvar_lib.tiny.cli`)."""

import sys

from sdvar_lib.tiny.cli import main

if __name__ == "__main__":
    sys.exit(main())
