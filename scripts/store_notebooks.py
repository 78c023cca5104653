"""Execute notebooks in place and store them without widget state.

    python scripts/store_notebooks.py notebooks/02_parallel_verify.ipynb notebooks/03_var_baseline_comparison.ipynb

Each notebook runs top to bottom in a ``python3`` kernel from its own folder (as
``jupyter nbconvert --to notebook --execute --inplace`` does), then
:func:`sdvar_lib.viz.widgets.strip_widget_state` replaces every widget view by the static image of the
panel's first run and a note that the sliders need a live kernel, and drops the saved widget models, so the
stored notebook shows nothing a frontend cannot restore. Each file is replaced atomically, and only after
its notebook ran without an error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sdvar_lib.util.atomic import atomic_write_text  # noqa: E402
from sdvar_lib.viz.widgets import strip_widget_state  # noqa: E402


def store(path: Path, timeout: int, kernel: str) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(path.parent)}}).execute()
    text = nbformat.writes(nbformat.from_dict(strip_widget_state(nb)))
    atomic_write_text(path, text if text.endswith("\n") else text + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help=".ipynb files, executed and stored in place")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell (default 600)")
    parser.add_argument("--kernel", default="python3", help="kernel name (default python3)")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        if path.suffix != ".ipynb" or not path.is_file():
            parser.error(f"{path} is not an .ipynb file")
    if args.timeout < 1:
        parser.error(f"--timeout must be >= 1, got {args.timeout}")
    for path in args.notebooks:
        print(f"executing {path} ...", flush=True)
        store(path, args.timeout, args.kernel)
        print(f"stored {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
