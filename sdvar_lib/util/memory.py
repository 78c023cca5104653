"""How much memory a device has (in all, and free now), and a check that an allocation fits before it is made."""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["available_bytes", "available_now_bytes", "check_fits", "InsufficientMemoryError"]


class InsufficientMemoryError(ValueError):
    """What was asked for cannot fit in the memory the device has free (raised before allocating it)."""


_cuda_totals: dict[int, int] = {}
"""Total memory per CUDA device index, read once: it does not change while a process runs."""


def available_bytes(device: torch.device | str) -> int | None:
    """Total memory of a CUDA device, or the machine's physical memory for the CPU (``None``: unknown).

    The total, not what is free now: a check against it never refuses work that could fit once
    other tensors are released, and still catches a batch that cannot fit at all. A CUDA device's total
    is asked for once per process (``cudaMemGetInfo`` costs tens of microseconds of host time, and a
    batch-1 call checked its caches twice before its first kernel).
    """
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        total = _cuda_totals.get(index)
        if total is None:
            total = _cuda_totals[index] = int(torch.cuda.mem_get_info(index)[1])
        return total
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


def available_now_bytes(device: torch.device | str) -> int | None:
    """Memory free for new allocations now: ``MemAvailable`` of the machine for the CPU (``psutil`` when
    installed, else ``/proc/meminfo``), lowered to what a cgroup (v2) memory limit leaves; the free memory
    of a CUDA device; ``None`` where unknown (another OS, the meta device)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        import psutil

        free = int(psutil.virtual_memory().available)
    except ImportError:
        free = _meminfo_available()
    limit = _cgroup_remaining()
    if free is None:
        return limit
    return free if limit is None else min(free, limit)


def _meminfo_available(text: str | None = None) -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` (or of ``text``) in bytes."""
    try:
        text = Path("/proc/meminfo").read_text() if text is None else text
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            return int(parts[1]) * (1024 if len(parts) > 2 and parts[2].lower() == "kb" else 1)
    return None


def _cgroup_remaining(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes a cgroup v2 memory limit still allows this process's group (``None``: no limit or no cgroup v2)."""
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(int(limit) - int((root / "memory.current").read_text().strip()), 0)
    except (OSError, ValueError):
        return None
