"""How much memory a device has, and a check that an allocation fits before it is made."""

from __future__ import annotations

import os

import torch

__all__ = ["available_bytes", "check_fits"]


def available_bytes(device: torch.device | str) -> int | None:
    """Total memory of a CUDA device, or the machine's physical memory for the CPU (``None``: unknown).

    The total, not what is free now: a check against it never refuses work that could fit once
    other tensors are released, and still catches a batch that cannot fit at all.
    """
    device = torch.device(device)
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        return int(total)
    if device.type == "cpu":
        try:
            return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            return None
    return None


def check_fits(nbytes: int, device: torch.device | str, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` when ``nbytes`` exceed what ``device`` has."""
    have = available_bytes(device)
    if have is not None and nbytes > have:
        raise ValueError(
            f"{what} needs about {nbytes / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB "
            f"of {device}; use a smaller batch"
        )
