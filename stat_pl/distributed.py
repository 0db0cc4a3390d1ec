"""The few collectives GRPO needs across DDP ranks, each a no-op in a single process.

GRPO sums its gradients itself, once per optimizer step (:func:`all_reduce_gradients`), instead of letting
DDP reduce after every backward: a rank whose groups were all skipped runs no backward at all, and DDP's
per-backward reduction would leave the other ranks waiting for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


def distributed() -> bool:
    """Whether more than one process takes part (a process group of size 1 counts as none)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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
