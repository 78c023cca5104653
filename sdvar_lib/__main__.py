"""``python -m sdvar_lib``: the workbench's main job (see :mod:`sdvar_lib.demo.cli`)."""

import sys

from sdvar_lib.demo.cli import main

if __name__ == "__main__":
    sys.exit(main())
