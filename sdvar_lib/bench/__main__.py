"""``python -m sdvar_lib.bench``: see :mod:`sdvar_lib.bench.cli`."""

import sys

from sdvar_lib.bench.cli import main

sys.exit(main())
