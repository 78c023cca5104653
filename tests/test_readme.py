"""The README's "Using SDVAR" example runs as written on the bundled pair and prints what the README says."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parent.parent / "README.md"


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def test_the_using_sdvar_example_runs_and_prints_what_the_readme_says():
    section = _section(README.read_text(), "Using SDVAR")
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    quoted = re.search(r"the first line reads `([^`]*)`", section.replace("\n", " ")).group(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # "CPU, one thread", as the README says
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102 (our own README)
    finally:
        torch.set_num_threads(threads)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(quoted), (lines[0], quoted)
    assert lines[1].startswith("target passes 7, draft passes 0")
