"""``python -m sdvar_lib.fid``: FID, Inception Score and precision/recall of sample sets (see :mod:`sdvar_lib.eval.cli`)."""

import sys

from sdvar_lib.eval.cli import fid_main as main

if __name__ == "__main__":
    sys.exit(main())
