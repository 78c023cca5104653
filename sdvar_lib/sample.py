"""``python -m sdvar_lib.sample``: a sample set of any decoder (see :mod:`sdvar_lib.samples.cli`)."""

import sys

from sdvar_lib.samples.cli import main

if __name__ == "__main__":
    sys.exit(main())
