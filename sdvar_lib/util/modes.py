"""Run modules in eval mode for the length of a call, restoring each one's own mode afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode"]


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Every module (and submodule) in eval mode inside the block; each one's training flag restored on exit.

    Generation must not depend on how a caller left its models: in training mode dropout, drop-path
    and label dropping would make the same seed give different images.
    """
    saved = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training
