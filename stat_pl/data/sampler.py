"""Skill-weighted sampling (STAT-Sel as a sampler) with length grouping, seeded and resumable.

:class:`SkillWeightedSampler` draws each epoch's training indices from per-record weights (made by
:meth:`MissingSkillProfile.to_weights`); :class:`LengthGroupedBatchSampler` cuts that stream into
batches of similar length (the paper's group-by-length) so dynamic padding wastes little.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import Sampler


class SkillWeightedSampler(Sampler[int]):
    """Draws ``num_samples`` indices per epoch, with replacement, with probability proportional to ``weights``.

    Reproducible: epoch ``e`` uses a generator seeded with ``(seed, e)``, so the same seed gives the same
    order and a resumed run redraws exactly the same epoch. Distributed-aware: one global draw per epoch
    is dealt round-robin, rank ``r`` of ``R`` taking positions ``r, r + R, ...``, so the ranks' shares are
    disjoint slices of the same draw and together are exactly the single-process draw.
    :meth:`set_weights` replaces the weights for the *next* epoch: an epoch in progress keeps the
    indices it drew when its iteration started.
    """

    def __init__(self, weights: Sequence[float], num_samples: int, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0) -> None:
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.num_samples = num_samples
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.weights = self._checked(weights)

    @staticmethod
    def _checked(weights: Sequence[float]) -> torch.Tensor:
        w = torch.as_tensor(list(weights), dtype=torch.float64)
        if w.ndim != 1 or len(w) == 0:
            raise ValueError("weights must be a non-empty 1-D sequence")
        if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
        return w

    def set_weights(self, weights: Sequence[float], resize: bool = False) -> None:
        """Replace the sampling weights; they apply from the next epoch's iteration on.

        ``resize=True`` accepts a pool that changed size (synthetic rows added during the run).
        """
        w = self._checked(weights)
        if len(w) != len(self.weights) and not resize:
            raise ValueError(f"got {len(w)} weights for a pool of {len(self.weights)} records")
        self.weights = w

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_indices(self) -> list[int]:
        """This rank's indices for the current epoch (the global draw, dealt round-robin)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        total = self.num_samples * self.num_replicas
        draw = torch.multinomial(self.weights, total, replacement=True, generator=generator)
        return draw[self.rank :: self.num_replicas].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices())

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed, "weights": self.weights.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.seed = state["seed"]
        self.set_weights(state["weights"])


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar length from a sampler's stream, in a seeded order; can skip consumed batches.

    The stream is cut into mega-batches of ``batch_size * group_batches`` indices; each is sorted by
    length and split into batches, and the batches are shuffled (seeded by epoch) so the epoch does not
    run from longest to shortest. With ``group_by_length=False`` batches are consecutive slices.
    ``epoch_source``, when given, is asked for the epoch at the start of each iteration (the DataModule
    passes the trainer's ``current_epoch``): Lightning's own ``set_epoch`` calls run ahead by one epoch
    after a mid-epoch resume (Lightning 2.6). :meth:`resume_at` overrides both for the next iteration
    only: a resumed run starts at the checkpoint's epoch and skips the batches it already trained on.
    """

    def __init__(self, sampler: SkillWeightedSampler, lengths: Sequence[int], batch_size: int,
                 group_by_length: bool = True, group_batches: int = 64,
                 epoch_source: Callable[[], int] | None = None) -> None:
        self.sampler = sampler
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.group_by_length = group_by_length
        self.group_batches = group_batches
        self.epoch_source = epoch_source
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Make the next iteration draw ``epoch`` and skip its first ``batches_done`` batches."""
        self._resume = (epoch, batches_done)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def epoch_batches(self) -> list[list[int]]:
        indices = self.sampler.epoch_indices()
        if not self.group_by_length:
            return [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        generator = torch.Generator().manual_seed(self.sampler.seed * 7_919 + self.sampler.epoch)
        group = self.batch_size * self.group_batches
        batches: list[list[int]] = []
        for start in range(0, len(indices), group):
            mega = sorted(indices[start : start + group], key=lambda i: -self.lengths[i])
            chunk = [mega[i : i + self.batch_size] for i in range(0, len(mega), self.batch_size)]
            order = torch.randperm(len(chunk), generator=generator).tolist()
            batches.extend(chunk[j] for j in order)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        epoch, skip = self._resume or (self.epoch_source() if self.epoch_source else self.sampler.epoch, 0)
        self._resume = None
        self.sampler.set_epoch(epoch)
        return iter(self.epoch_batches()[skip:])

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)
