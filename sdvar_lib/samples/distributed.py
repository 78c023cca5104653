"""The few collective operations the sampler needs, for one process or many (``torchrun``).

:func:`init_distributed` reads the variables ``torchrun`` sets (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); with a world size of 1 (or without them) it
initialises nothing and every operation of :class:`DistContext` is a local no-op, so library code
is written once for both cases. Backend: NCCL when the process drives a CUDA device
(``cuda:LOCAL_RANK``), gloo on CPUs. Several nodes work through torchrun's usual rendezvous flags
(``--nnodes``, ``--node-rank``, ``--rdzv-endpoint``).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sdvar_lib.models.checkpoints import pick_device

log = logging.getLogger(__name__)

__all__ = ["DistContext", "env_world", "init_distributed"]


def env_world() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` from torchrun's variables (``(0, 1, 0)`` without them)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ValueError(f"WORLD_SIZE, RANK and LOCAL_RANK must be integers ({exc})") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"inconsistent torchrun variables: WORLD_SIZE={world}, RANK={rank}, LOCAL_RANK={local}")
    return rank, world, local


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: rank, world size, device and (when initialised) the backend."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    """``"nccl"`` or ``"gloo"`` when torch.distributed was initialised here; ``None`` for one process."""
    host: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def initialised(self) -> bool:
        return self.backend is not None

    def barrier(self) -> None:
        if self.initialised:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def broadcast(self, obj, src: int = 0):
        """``obj`` of rank ``src`` on every rank (any picklable object)."""
        if not self.initialised:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` in rank order on rank 0 (``None`` elsewhere)."""
        if not self.initialised:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def all_ok(self, ok: bool) -> bool:
        """Whether ``ok`` holds on every rank (a collective: every rank must call it)."""
        if not self.initialised:
            return ok
        flag = torch.tensor([0 if ok else 1], device=self.device if self.backend == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) == 0

    def shutdown(self) -> None:
        if self.initialised and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str | torch.device | None = None) -> DistContext:
    """Join the torchrun job described by the environment (or stand alone) and pick this rank's device.

    ``device``: ``None`` takes ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU; ``"cuda"``
    becomes ``cuda:LOCAL_RANK``; ``"cpu"`` runs every rank on the CPU (gloo).
    """
    rank, world, local = env_world()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is None:
            count = torch.cuda.device_count()
            if local >= count:
                raise ValueError(f"local rank {local} has no GPU: this node has {count} CUDA device(s); "
                                 "use --nproc-per-node <= the number of GPUs")
            dev = torch.device("cuda", local)
        dev = pick_device(dev)
        torch.cuda.set_device(dev)
    else:
        dev = pick_device(dev)
    backend = None
    if world > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if not dist.is_initialized():
            kwargs = {"device_id": dev} if backend == "nccl" else {}
            dist.init_process_group(backend=backend, **kwargs)
        log.info("rank %d/%d (local %d) on %s, backend %s", rank, world, local, dev, backend)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev, backend=backend,
                       host=socket.gethostname())
