"""Benchmark metrics as torchmetrics ``Metric``s: pass@k, avg@k and accuracy per group (DESIGN.md, Evaluation).

The paper reports pass@1 at temperature 0.1, avg@64 on AMC23 and pass@64 on AIME at temperature 1.0
(Table 3), and accuracy per subject and per skill (Figures 4 and 7). Every metric here is updated with
per-question counts, ``num_correct`` out of ``num_samples``, so one set of generations serves all of
them. The states are sums, so under DDP each rank can score its own shard and ``compute`` adds them up.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchmetrics import Metric

from stat_pl.errors import UserError

_METRIC_NAME = re.compile(r"(pass|avg)@(\d+)")


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """The unbiased pass@k estimate ``1 - C(n-c, k) / C(n, k)`` for one question (Chen et al., 2021).

    Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``, which never forms the binomials, so it stays exact
    in floating point for n in the thousands where ``C(n, k)`` overflows.
    """
    if not 1 <= k <= num_samples:
        raise ValueError(f"pass@{k} needs at least {k} samples per question, got {num_samples}")
    if not 0 <= num_correct <= num_samples:
        raise ValueError(f"num_correct must be in [0, {num_samples}], got {num_correct}")
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(num_samples - num_correct + 1, num_samples + 1))


@dataclass(frozen=True)
class MetricName:
    """A parsed metric name: ``pass@1``, ``pass@64`` (unbiased estimator) or ``avg@64`` (mean accuracy)."""

    kind: str
    k: int

    @classmethod
    def parse(cls, name: str) -> MetricName:
        match = _METRIC_NAME.fullmatch(name.strip().lower())
        if match is None or int(match.group(2)) < 1:
            raise UserError(f"unknown metric {name!r}; use pass@K (e.g. pass@1, pass@64) or avg@K (e.g. avg@64)")
        return cls(match.group(1), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.kind}@{self.k}"

    def build(self, **metric_kwargs) -> Metric:
        """The metric; ``metric_kwargs`` go to torchmetrics' ``Metric`` (e.g. ``sync_on_compute``)."""
        return AvgAtK(**metric_kwargs) if self.kind == "avg" else PassAtK(self.k, **metric_kwargs)


def _as_counts(
    num_correct: torch.Tensor | Sequence[int], num_samples: torch.Tensor | Sequence[int]
) -> tuple[list[int], list[int]]:
    correct = torch.as_tensor(num_correct).flatten().tolist()
    samples = torch.as_tensor(num_samples).flatten().tolist()
    if len(correct) != len(samples):
        raise ValueError(f"num_correct has {len(correct)} entries but num_samples has {len(samples)}")
    return [int(c) for c in correct], [int(n) for n in samples]


class PassAtK(Metric):
    """Mean over questions of the unbiased pass@k estimate; ``k=1`` is the plain accuracy (pass@1).

    ``update(num_correct, num_samples)`` takes one entry per question; each question needs at least
    ``k`` samples. With n > k samples the estimate has lower variance than drawing exactly k.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"pass@k needs k >= 1, got {k}")
        self.k = k
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("questions", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _score(self, num_correct: int, num_samples: int) -> float:
        return pass_at_k(num_samples, num_correct, self.k)

    def update(self, num_correct: torch.Tensor | Sequence[int], num_samples: torch.Tensor | Sequence[int]) -> None:
        correct, samples = _as_counts(num_correct, num_samples)
        self.total += sum(self._score(c, n) for c, n in zip(correct, samples, strict=True))
        self.questions += len(correct)

    def compute(self) -> torch.Tensor:
        if int(self.questions) == 0:
            raise ValueError(f"{type(self).__name__}.compute() before any update: no question was scored")
        return self.total / self.questions


class AvgAtK(PassAtK):
    """avg@k: the accuracy averaged over all k samples of every question (the paper's AMC23 avg@64).

    It is the unbiased pass@1 estimate from k samples, so it is :class:`PassAtK` with ``k=1`` read over
    however many samples each question has.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(k=1, **kwargs)


class GroupedAccuracy(Metric):
    """Accuracy per group (subject, level or skill): the mean per-question score of the questions in it.

    ``groups`` is the fixed list of group names (fixed so the states are tensors that DDP can sum).
    ``update(memberships, scores)`` takes each question's groups and its score in [0, 1] (its share of
    correct samples); a question with several skills counts once in each. ``compute`` returns
    ``{"accuracy": [G], "questions": [G]}`` (0-d tensors when G = 1: torchmetrics squeezes them);
    :meth:`as_table` turns that into ``{group: {...}}``.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, groups: Sequence[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.groups = list(dict.fromkeys(groups))
        self._index = {g: i for i, g in enumerate(self.groups)}
        size = len(self.groups)
        self.add_state("score_sum", default=torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("questions", default=torch.zeros(size, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, memberships: Sequence[Sequence[str]], scores: torch.Tensor | Sequence[float]) -> None:
        values = torch.as_tensor(scores, dtype=torch.float64).flatten().tolist()
        if len(values) != len(memberships):
            raise ValueError(f"{len(memberships)} memberships but {len(values)} scores")
        for groups, score in zip(memberships, values, strict=True):
            for group in dict.fromkeys(groups):
                if group not in self._index:
                    raise KeyError(f"group {group!r} is not one of this metric's {len(self.groups)} groups")
                self.score_sum[self._index[group]] += score
                self.questions[self._index[group]] += 1

    def compute(self) -> dict[str, torch.Tensor]:
        questions = self.questions.to(torch.float64)
        return {"accuracy": self.score_sum / questions, "questions": self.questions.clone()}

    def as_table(self, computed: dict[str, torch.Tensor] | None = None) -> dict[str, dict[str, float]]:
        """``{group: {"accuracy": a, "questions": n}}`` for the groups that have at least one question."""
        computed = computed if computed is not None else self.compute()
        # torchmetrics squeezes one-element results to 0-d tensors, so a single group needs the reshape
        accuracy, questions = computed["accuracy"].reshape(-1).tolist(), computed["questions"].reshape(-1).tolist()
        return {
            group: {"accuracy": accuracy[i], "questions": int(questions[i])}
            for i, group in enumerate(self.groups)
            if questions[i] > 0
        }
