"""``python -m sdvar_lib.evaluate``: quality against target passes for every decoder (see :mod:`sdvar_lib.eval.cli`)."""

import sys

from sdvar_lib.eval.cli import evaluate_main as main

if __name__ == "__main__":
    sys.exit(main())
