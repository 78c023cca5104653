"""nbval settings for the notebooks: the committed sanitize file is used wherever pytest is started."""

from __future__ import annotations

from pathlib import Path

SANITIZE_FILE = Path(__file__).resolve().with_name("nbval_sanitize.cfg")


def pytest_configure(config) -> None:
    if hasattr(config.option, "nbval_sanitize_with") and not config.option.nbval_sanitize_with:
        config.option.nbval_sanitize_with = str(SANITIZE_FILE)
