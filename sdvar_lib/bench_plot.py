"""``python -m sdvar_lib.bench_plot``: the latency-against-batch plot of a benchmark JSON (see :mod:`sdvar_lib.viz.latency`)."""

import sys

from sdvar_lib.viz.latency import main

if __name__ == "__main__":
    sys.exit(main())
