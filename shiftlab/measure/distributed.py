"""Several processes and machines: torch.distributed as ``torchrun`` sets it up. Private.

``torchrun --nproc_per_node N -m shiftlab audit ...`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous in their environment (multi-node: ``--nnodes``, ``--node_rank``,
``--rdzv_endpoint`` as usual). :func:`init_from_environment` joins the process group (NCCL where each rank
has a GPU, gloo otherwise); the audit then takes its share of the batches by rank and the ranks exchange
their per-image statistics with ``all_gather_object`` over a gloo group. Nothing here schedules work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from shiftlab.errors import InputError

__all__ = ["World", "world", "init_from_environment", "gather", "barrier", "rank_device"]


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_GLOO_GROUP = None


def world() -> World:
    """This process's place in an initialised process group (rank 0 of 1 when there is none)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


def _env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise InputError(f"WORLD_SIZE must be an integer, got {os.environ.get('WORLD_SIZE')!r}") from None


def init_from_environment() -> World:
    """Join the process group ``torchrun`` describes in the environment, if any; return this process's World."""
    import torch.distributed as dist

    if _env_world_size() <= 1 or not dist.is_available():
        return world()
    if not dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", 0))
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() > local else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return world()


def rank_device(device) -> torch.device | None:
    """The device of this rank: ``cuda:LOCAL_RANK`` under torchrun with GPUs, else what was asked."""
    w = world()
    if w.size > 1 and torch.cuda.is_available() and (device is None or str(device) in ("cuda", "auto")):
        return torch.device("cuda", w.local_rank % torch.cuda.device_count())
    return None if device is None else torch.device(device)


def _group():
    global _GLOO_GROUP
    import torch.distributed as dist

    if dist.get_backend() == "gloo":
        return None
    if _GLOO_GROUP is None:
        _GLOO_GROUP = dist.new_group(backend="gloo")
    return _GLOO_GROUP


def gather(obj) -> list:
    """Every rank's ``obj``, in rank order (``all_gather_object`` over gloo); ``[obj]`` without a group."""
    import torch.distributed as dist

    w = world()
    if w.size <= 1:
        return [obj]
    out = [None] * w.size
    dist.all_gather_object(out, obj, group=_group())
    return out


def barrier() -> None:
    import torch.distributed as dist

    if world().size > 1:
        dist.barrier(group=_group())
