"""GRPO rewards: answer correctness (the paper's only reward), an optional format reward, DAPO's overlong penalty.

Each reward scores a flat list of completions against their questions' gold answers; :func:`combine`
adds them with their weights and keeps each part, so the module logs every part on its own. Grading
is :func:`stat_pl.grading.grade` (math-verify behind a time limit that holds in any thread), so an
adversarial answer costs at most ``timeout_s`` and never hangs a training step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from stat_pl.engines.base import Completion
from stat_pl.errors import UserError
from stat_pl.grading import DEFAULT_TIMEOUT_S, extract_answer, grade


class Reward(Protocol):
    """One part of the reward: a score per completion; ``weight`` multiplies it in the total."""

    name: str
    weight: float

    def score(self, completions: Sequence[Completion], answers: Sequence[str]) -> list[float]: ...


@dataclass
class CorrectnessReward:
    """1.0 when the response's final answer is the gold answer, else 0.0 (the paper's GRPO reward).

    Args:
        weight: its weight in the total.
        timeout_s: the grading time limit per answer (math-verify).
    """

    weight: float = 1.0
    timeout_s: float = DEFAULT_TIMEOUT_S
    name: str = "correct"

    def score(self, completions: Sequence[Completion], answers: Sequence[str]) -> list[float]:
        return [float(grade(c.text, gold, self.timeout_s)) for c, gold in zip(completions, answers, strict=True)]


@dataclass
class FormatReward:
    """1.0 when the response has a final answer the grader can read (a ``\\boxed{}`` or an answer anchor).

    Not in the paper; a common shaping term for small students that forget to box their answer.
    """

    weight: float = 0.1
    name: str = "format"

    def score(self, completions: Sequence[Completion], answers: Sequence[str]) -> list[float]:
        return [float(extract_answer(c.text) is not None) for c in completions]


@dataclass
class OverlongPenalty:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), on completion lengths in tokens.

    0 up to ``max_new_tokens - buffer_tokens``, then falling linearly to -1 at ``max_new_tokens``;
    a completion cut by the token budget (finish reason ``"length"``) gets -1.

    Args:
        max_new_tokens: the generation budget (the module's ``max_new_tokens``).
        buffer_tokens: the length of the linear ramp (DAPO: 4,096 of 20,480).
        weight: its weight in the total.
    """

    max_new_tokens: int
    buffer_tokens: int
    weight: float = 1.0
    name: str = "overlong"

    def __post_init__(self) -> None:
        if not 0 < self.buffer_tokens <= self.max_new_tokens:
            raise UserError(
                f"OverlongPenalty.buffer_tokens must be in (0, max_new_tokens={self.max_new_tokens}], "
                f"got {self.buffer_tokens}"
            )

    def score(self, completions: Sequence[Completion], answers: Sequence[str]) -> list[float]:
        start = self.max_new_tokens - self.buffer_tokens
        return [
            -1.0 if c.finish_reason == "length" else min(0.0, (start - c.num_tokens) / self.buffer_tokens)
            for c in completions
        ]


def combine(
    rewards: Sequence[Reward], completions: Sequence[Completion], answers: Sequence[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted total reward per completion ``[N]`` and each part's unweighted scores ``{name: [N]}``."""
    if not rewards:
        raise UserError("model.rewards is empty: give at least one reward (e.g. CorrectnessReward)")
    parts = {r.name: torch.tensor(r.score(completions, answers), dtype=torch.float32) for r in rewards}
    if len(parts) != len(rewards):
        raise UserError(f"model.rewards: two rewards share a name ({[r.name for r in rewards]}); rename one")
    total = sum(r.weight * parts[r.name] for r in rewards)
    return total, parts
