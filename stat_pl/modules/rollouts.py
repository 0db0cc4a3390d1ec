"""One GRPO rollout batch: prompts, their groups of completions, rewards and advantages; and phase timing."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from stat_pl.engines.base import Completion


@dataclass
class Rollouts:
    """What one Lightning batch generated and how it scored; callbacks (RolloutProfiler) read it.

    ``record[b]`` is the prompt's position in the data module's ``records`` (for its skills).
    """

    prompt_ids: list[list[int]]  # [B] prompts
    completions: list[list[Completion]]  # [B][G]
    record: torch.Tensor  # [B]
    answers: list[str]  # [B] gold answers
    rewards: torch.Tensor  # [B, G] weighted total
    parts: dict[str, torch.Tensor]  # name -> [B, G], unweighted
    advantages: torch.Tensor  # [B, G]

    @property
    def group_size(self) -> int:
        return self.rewards.shape[1]

    def completion_ids(self, groups: Sequence[int]) -> list[list[int]]:
        """Token ids of the completions of ``groups``, group after group."""
        return [list(c.token_ids) for g in groups for c in self.completions[g]]

    def informative(self, groups: Sequence[int]) -> list[int]:
        """The groups whose advantages are not all zero (the others add nothing to the policy gradient)."""
        return [g for g in groups if bool(self.advantages[g].ne(0).any())]


def pad_values(rows: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    """Stack 1-D float tensors, right-padded with 0 to ``width``: ``[N, width]``."""
    out = torch.zeros(len(rows), width, dtype=torch.float32, device=rows[0].device if rows else None)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


class PhaseTimer:
    """Wall seconds per named phase (sync, generation, reward, train) of one step."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - started


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(value: float, device: torch.device) -> float:
    """``value`` summed over ranks (itself in a single process)."""
    if not distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor)


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
