"""``python -m sdvar_lib.bench_plot``: the latency-against-batch plot of a benchmark JSON (see :mod:`sdvar_lib.bench.cli`)."""

import sys

from sdvar_lib.bench.cli import plot_main as main

if __name__ == "__main__":
    sys.exit(main())
