"""Epoch samplers, seeded and resumable, and length-grouped batches.

Three ways to go through the training rows in an epoch, named by what they do:

- :class:`EpochPermutationSampler` ("permutation"): every row exactly once per epoch, in a seeded
  random order. This is the paper's training (Sec. 4: 3 epochs over the built 9.5k STAT-Sel /
  STAT-Syn set); a fixed built dataset is trained this way.
- :class:`SkillWeightedSampler` ("weighted"): ``num_samples`` draws with replacement in proportion to
  per-row weights (made by :meth:`MissingSkillProfile.to_weights`): STAT-Sel as sampling over the
  whole training pool, which the online loop (the SkillReprofiler) re-weights between epochs. With
  replacement, about 1/e (37%) of the rows go unseen in an epoch of as many draws as rows.
- :class:`StratifiedSampler` ("stratified"): the same targeting with the mix realised exactly. The rows
  fall into strata (one per skill, made by ``SkillWeightedDataModule.skill_strata``), each stratum gets
  exactly its share of the epoch's draws, and each draws from its own seeded stream, so two runs whose
  mixes give a skill 30 and 50 draws share those 30 examples: the mix is a controlled variable.

:func:`resolve_sampling` says which one ``SFTDataModule(sampling="auto")`` uses, and
:func:`epoch_sampler` builds it. :class:`LengthGroupedBatchSampler` cuts any of these streams into batches of
similar length (the paper's group-by-length) so dynamic padding wastes little.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch.utils.data import Sampler

from stat_pl.errors import UserError

Sampling = Literal["auto", "permutation", "weighted", "stratified"]
ResolvedSampling = Literal["permutation", "weighted", "stratified"]
SAMPLINGS: tuple[str, ...] = ("auto", "permutation", "weighted", "stratified")


class SkillWeightedSampler(Sampler[int]):
    """Draws ``num_samples`` indices per epoch, with replacement, with probability proportional to ``weights``.

    Reproducible: epoch ``e`` uses a generator seeded with ``(seed, e)``, so the same seed gives the same
    order and a resumed run redraws exactly the same epoch. Distributed-aware: one global draw per epoch
    is dealt round-robin, rank ``r`` of ``R`` taking positions ``r, r + R, ...``, so the ranks' shares are
    disjoint slices of the same draw and together are exactly the single-process draw.
    :meth:`set_weights` replaces the weights for the *next* epoch: an epoch in progress keeps the
    indices it drew when its iteration started.
    """

    def __init__(
        self, weights: Sequence[float], num_samples: int, seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
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
        return {"kind": "weighted", "epoch": self.epoch, "seed": self.seed, "weights": self.weights.tolist()}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(state, "weighted")
        self.epoch = state["epoch"]
        self.seed = state["seed"]
        self.set_weights(state["weights"])


class EpochPermutationSampler(Sampler[int]):
    """Every one of ``num_rows`` rows exactly once per epoch, in a seeded random order (no replacement).

    Epoch ``e`` is the permutation drawn by a generator seeded with ``(seed, e)``: the same seed gives
    the same order, and a resumed run redraws exactly the same epoch (the batch sampler then skips the
    batches already trained on). Distributed-aware like :class:`SkillWeightedSampler`: the epoch's
    permutation is dealt round-robin, rank ``r`` of ``R`` taking positions ``r, r + R, ...``, so the
    ranks' shares are disjoint and together cover every row. When ``R`` does not divide the row count,
    the permutation is padded with its own first ``R - (num_rows mod R)`` rows (as torch's
    ``DistributedSampler`` does) so every rank runs the same number of steps; those few rows are seen
    twice that epoch.

    There are no weights: a profile has already shaped a built dataset. :meth:`set_weights` only
    follows a pool that grew (``resize=True``, synthetic rows added); asked to re-weight, it refuses and
    names ``data.sampling``.
    """

    def __init__(self, num_rows: int, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        if num_rows <= 0:
            raise ValueError(f"num_rows must be positive, got {num_rows}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.num_rows = num_rows
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_weights(self, weights: Sequence[float], resize: bool = False) -> None:
        """Follow a pool that grew to ``len(weights)`` rows (from the next epoch); never re-weight."""
        if not resize:
            raise UserError(
                "data.sampling: permutation goes through every row once per epoch and "
                "takes no sampling weights; set data.sampling: weighted to sample by a profile "
                "(initial_profile, the SkillReprofiler)"
            )
        if len(weights) == 0:
            raise ValueError("the training pool is empty")
        self.num_rows = len(weights)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_indices(self) -> list[int]:
        """This rank's indices for the current epoch (the padded permutation, dealt round-robin)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_rows, generator=generator).tolist()
        padded = order + order[: len(self) * self.num_replicas - self.num_rows]
        return padded[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices())

    def __len__(self) -> int:
        return -(-self.num_rows // self.num_replicas)

    def state_dict(self) -> dict:
        return {"kind": "permutation", "epoch": self.epoch, "seed": self.seed, "num_rows": self.num_rows}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(state, "permutation")
        self.epoch = state["epoch"]
        self.seed = state["seed"]
        self.num_rows = state["num_rows"]


@dataclass(frozen=True)
class Stratum:
    """One part of a stratified epoch: the rows it draws from (in a fixed order) and its share of the draws."""

    members: tuple[int, ...]
    share: float


def exact_counts(shares: Mapping[str, float], total: int) -> dict[str, int]:
    """``total`` split in proportion to ``shares`` into whole counts that sum to ``total`` (largest remainder:
    each key gets the floor of its quota, the keys with the largest remainders one more, ties by key;
    remainders are compared to 9 decimals, so shares summed in another order break ties the same way)."""
    norm = sum(shares.values())
    if norm <= 0:
        raise ValueError("the strata's shares must not be all zero")
    quotas = {key: total * share / norm for key, share in shares.items()}
    counts = {key: int(quota) for key, quota in quotas.items()}
    left = total - sum(counts.values())
    for key in sorted(quotas, key=lambda k: (round(counts[k] - quotas[k], 9), k))[:left]:
        counts[key] += 1
    return counts


class StratifiedSampler(Sampler[int]):
    """Each epoch, stratum ``k`` gets exactly its share of the ``num_samples`` draws, from its own seeded stream.

    The epoch's counts are :func:`exact_counts` of the strata's shares over the global draw
    (``num_samples * num_replicas``). Stratum ``k`` draws its count from a stream seeded by
    ``(seed, epoch, k)`` alone: seeded permutations of its members, one after another (without
    replacement until every member was drawn). The stream does not depend on the other strata or on
    the counts, so two runs with the same rows and seed whose mixes give ``k`` 30 and 50 draws share the
    first 30. The draws are then shuffled (seeded by ``(seed, epoch)``) and dealt round-robin across ranks
    like :class:`SkillWeightedSampler`'s. :meth:`set_strata` replaces the mix (and the members, for a pool
    that grew) from the next epoch; the state in the checkpoint replays an interrupted epoch exactly.
    """

    def __init__(
        self, strata: Mapping[str, Stratum], num_samples: int, seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.num_samples = num_samples
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.set_strata(strata)

    def set_strata(self, strata: Mapping[str, Stratum]) -> None:
        """Replace the strata; they apply from the next epoch's iteration on. Empty strata are dropped."""
        if any(not math.isfinite(s.share) or s.share < 0 for s in strata.values()):
            raise ValueError("strata shares must be finite and non-negative")
        kept = {key: s for key, s in strata.items() if s.members and s.share > 0}
        if not kept:
            raise ValueError("no stratum has both a member and a positive share")
        self.strata = dict(sorted(kept.items()))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_counts(self) -> dict[str, int]:
        """How many draws each stratum gets in every epoch, over all ranks together."""
        return exact_counts({key: s.share for key, s in self.strata.items()}, self.num_samples * self.num_replicas)

    def stream(self, key: str, count: int) -> list[int]:
        """The first ``count`` rows of stratum ``key``'s stream in the current epoch."""
        members = self.strata[key].members
        digest = hashlib.blake2b(f"{self.seed}/{self.epoch}/{key}".encode(), digest_size=8).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest, "big") >> 1)
        drawn: list[int] = []
        while len(drawn) < count:
            drawn += [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        return drawn[:count]

    def epoch_indices(self) -> list[int]:
        """This rank's indices for the current epoch (every stratum's draws, shuffled, dealt round-robin)."""
        draws = [i for key, count in self.epoch_counts().items() for i in self.stream(key, count)]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(draws), generator=generator).tolist()
        return [draws[j] for j in order][self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices())

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict:
        strata = {key: {"members": list(s.members), "share": s.share} for key, s in self.strata.items()}
        return {"kind": "stratified", "epoch": self.epoch, "seed": self.seed, "strata": strata}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(state, "stratified")
        self.epoch = state["epoch"]
        self.seed = state["seed"]
        self.set_strata({key: Stratum(tuple(s["members"]), s["share"]) for key, s in state["strata"].items()})


EpochSampler = SkillWeightedSampler | EpochPermutationSampler | StratifiedSampler


def _check_kind(state: dict, kind: str) -> None:
    saved = state.get("kind", "weighted")  # checkpoints written before the permutation mode were weighted
    if saved != kind:
        raise UserError(
            f"the checkpoint's sampler is {saved!r} but this run's data.sampling resolves to {kind!r}; "
            f"resume with data.sampling: {saved}"
        )


def resolve_sampling(
    sampling: Sampling, *, initial_profile: bool, mix_ratios: bool, samples_per_epoch: bool, online_source: bool
) -> ResolvedSampling:
    """The sampler ``SFTDataModule(sampling=...)`` uses; ``auto`` is decided from the data module's arguments.

    ``auto`` is ``weighted`` when anything asks for weighted drawing: an ``initial_profile`` to sample
    by, ``mix_ratios`` between sources, a ``samples_per_epoch`` different from "the whole set", or a
    :class:`~stat_pl.data.synthetic_source.SyntheticSource` that the online loop fills. Otherwise the
    training set is a fixed (built) dataset and ``auto`` is ``permutation``: every row once per epoch,
    as the paper trains. The online loop with none of these (a SkillReprofiler re-weighting a plain
    pool) must say ``sampling: weighted``; the permutation sampler refuses new weights with that hint.
    ``stratified`` is never chosen by ``auto``: it is asked for by name, where the realised mix must be exact.
    """
    if sampling not in SAMPLINGS:
        raise UserError(f"data.sampling must be one of {', '.join(map(repr, SAMPLINGS))}, got {sampling!r}")
    if sampling == "permutation":
        asked = [
            name
            for name, given in [
                ("initial_profile", initial_profile),
                ("mix_ratios", mix_ratios),
                ("samples_per_epoch", samples_per_epoch),
            ]
            if given
        ]
        if asked:
            raise UserError(
                f"data.sampling: permutation goes through every row once per epoch, so it cannot use "
                f"{', '.join(asked)}; drop them or set data.sampling: weighted"
            )
        return "permutation"
    if sampling in ("weighted", "stratified"):
        return sampling
    return "weighted" if initial_profile or mix_ratios or samples_per_epoch or online_source else "permutation"


def epoch_sampler(
    sampling: ResolvedSampling,
    targets: Callable[[], Sequence[float] | Mapping[str, Stratum]],
    num_rows: int,
    samples_per_epoch: int | None,
    seed: int,
    num_replicas: int,
    rank: int,
) -> EpochSampler:
    """This rank's sampler for a resolved ``sampling``; ``targets`` (called unless ``permutation``) gives the
    weights of ``weighted`` or the strata of ``stratified``."""
    if sampling == "permutation":
        return EpochPermutationSampler(num_rows, seed=seed, num_replicas=num_replicas, rank=rank)
    per_rank = max(1, (samples_per_epoch or num_rows) // num_replicas)
    if sampling == "stratified":
        return StratifiedSampler(targets(), num_samples=per_rank, seed=seed, num_replicas=num_replicas, rank=rank)
    return SkillWeightedSampler(targets(), num_samples=per_rank, seed=seed, num_replicas=num_replicas, rank=rank)


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

    def __init__(
        self,
        sampler: EpochSampler,
        lengths: Sequence[int],
        batch_size: int,
        group_by_length: bool = True,
        group_batches: int = 64,
        epoch_source: Callable[[], int] | None = None,
    ) -> None:
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
