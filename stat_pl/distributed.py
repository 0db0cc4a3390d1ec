"""The few collectives stat-pl needs across ranks, each a no-op in a single process.

Tensors enter collectives on the rank's own device (NCCL takes only CUDA tensors). Python objects (a round's
answers, a profile) travel over :class:`ObjectGroup`, a gloo group on the host with its own timeout, so a rank can
wait as long as a profiling round takes (a teacher, synthesis) without the GPU collectives' watchdog killing it.

GRPO sums its gradients itself, once per optimizer step (:func:`all_reduce_gradients`), instead of letting
DDP reduce after every backward: a rank whose groups were all skipped runs no backward at all, and DDP's
per-backward reduction would leave the other ranks waiting for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from stat_pl.errors import UserError

T = TypeVar("T")


def distributed() -> bool:
    """Whether more than one process takes part (a process group of size 1 counts as none)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s share of ``items``: every ``world_size``-th item from its own position (shares differ in
    length by at most one); :func:`unshard` puts the shares back in order."""
    return list(items[rank::world_size])


def unshard(shares: Sequence[Sequence[T]]) -> list[T]:
    """The items :func:`shard` split into ``shares`` (rank order), in their original order."""
    world_size = len(shares)
    ordered: list[T] = []
    for i in range(max((len(s) for s in shares), default=0)):
        ordered.extend(shares[r][i] for r in range(world_size) if i < len(shares[r]))
    return ordered


class CollectiveTimeout(UserError):
    """A rank waited longer than the configured timeout for the others."""


class ObjectGroup:
    """Python objects between ranks over a gloo group on the host, with a timeout of its own.

    Create it on every rank at the same point (``torch.distributed.new_group`` is collective). ``key`` names the
    setting that holds the timeout, for the error when it expires. In a single process every method is the identity.
    """

    def __init__(self, timeout_s: float, key: str) -> None:
        self.timeout_s, self.key = timeout_s, key
        self.group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s)) if distributed() else None

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj`` in rank order, on every rank."""
        if self.group is None:
            return [obj]
        gathered: list[Any] = [None] * dist.get_world_size()
        self._run(lambda: dist.all_gather_object(gathered, obj, group=self.group), "gather")
        return gathered

    def broadcast(self, obj: T, src: int = 0) -> T:
        """Rank ``src``'s ``obj`` on every rank."""
        if self.group is None:
            return obj
        holder = [obj]
        self._run(lambda: dist.broadcast_object_list(holder, src=src, group=self.group), "broadcast")
        return holder[0]

    def _run(self, collective, what: str) -> None:
        try:
            collective()
        except RuntimeError as e:  # gloo's timeout (DistBackendError) and a peer that died waiting on its own
            raise CollectiveTimeout(
                f"{self.key}={self.timeout_s:g} s: rank {dist.get_rank()} gave up in a {what} with the other ranks "
                f"(one of them took longer, or failed: see its log); raise {self.key} if a round takes that long. "
                f"torch.distributed said: {str(e).splitlines()[0][:200]}"
            ) from e


def all_reduce_sum(value: float, device: torch.device) -> float:
    """``value`` summed over ranks (itself in a single process)."""
    if not distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor)


def all_gather_rows(tensor: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, int]:
    """Every rank's ``tensor`` (the same shape on each) stacked along dim 0 in rank order, and the row where this
    rank's own rows start; in a single process ``(tensor, 0)``.

    The collective runs on ``device``, the rank's own (NCCL takes only CUDA tensors, gloo any); the result comes back
    where ``tensor`` was.
    """
    if not distributed():
        return tensor, 0
    local = tensor.to(device)
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return torch.cat(gathered).to(tensor.device), dist.get_rank() * len(tensor)


def all_reduce_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum the gradients over ranks in one flat buffer; a rank that skipped its backward sends zeros.

    Every rank calls this exactly once per optimizer step however many backwards it ran (zero when
    all its groups were skipped), so uneven skipping cannot leave a rank waiting in a collective.
    """
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not distributed():
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def all_ranks_agree(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on every rank (``flag`` itself in a single process); a collective on ``device``.

    FSDP's lockstep decoding asks it once per step ("has every rank stopped?"), so all ranks run the same number of
    forwards and their all-gathers line up.
    """
    if not distributed():
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor)


def require_same_count(count: int, device: torch.device, what: str) -> None:
    """Raise unless every rank has the same ``count`` of ``what`` (forwards that must line up across ranks)."""
    if not distributed():
        return
    tensor = torch.tensor([count, -count], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    if int(tensor[0]) != -int(tensor[1]):
        raise RuntimeError(
            f"{what}: rank {dist.get_rank()} has {count}, others between {-int(tensor[1])} and {int(tensor[0])}; "
            "under FSDP every rank must run the same number of forwards (give every rank the same batch size)"
        )
