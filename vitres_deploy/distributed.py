"""Ranks of a ``torchrun`` job (training, search): joining the process group, gathering, broadcasting, waiting.

One process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) is the world of one rank, and every helper is then
a no-op, so the calling code is the same either way. On CPU the group uses gloo, on CUDA nccl.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from .errors import BackendUnavailable


@dataclass(frozen=True)
class Ranks:
    """This process's rank, the world size, and the device it evaluates on."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """True on rank 0, the rank that writes files and prints."""
        return self.rank == 0

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def shard_map(self, keys: Sequence[Any], fn: Callable[[Any], Any]) -> dict[Any, Any]:
        """``fn(key)`` for every key, the keys dealt out to the ranks round-robin; every rank gets every result."""
        out: dict[Any, Any] = {}
        for part in self.all_gather({k: fn(k) for k in keys[self.rank::self.world]}):
            out.update(part)
        return out

    def barrier(self) -> None:
        """Wait until every rank has come here (nothing to wait for in one process)."""
        if self.world > 1:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]


@contextlib.contextmanager
def join_ranks(device: str | None = None) -> Iterator[Ranks]:
    """The ranks of this launch, joining (and afterwards leaving) the process group under torchrun.

    ``device``: ``cpu``, ``cuda``, or None for CUDA when available; under torchrun each rank takes
    ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable("device cuda: no CUDA GPU is visible here (torch.cuda.is_available() is False); "
                                 "use cpu", field="device")
    dev = torch.device(f"cuda:{local}") if kind == "cuda" else torch.device(kind)
    created = False
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        created = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    try:
        yield Ranks(rank, dist.get_world_size() if dist.is_initialized() else 1, dev)
    finally:
        if created:
            dist.destroy_process_group()
