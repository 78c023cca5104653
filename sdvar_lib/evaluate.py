"""``python -m sdvar_lib.evaluate``: quality against target passes for every decoder (see :mod:`sdvar_lib.eval`)."""

import sys

from sdvar_lib.eval.evaluation import main

if __name__ == "__main__":
    sys.exit(main())
