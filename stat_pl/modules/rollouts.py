"""One GRPO rollout batch: prompts, their groups of completions, rewards and advantages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

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

    def generated_tokens(self) -> int:
        """Completion tokens of the whole batch."""
        return sum(len(c.token_ids) for group in self.completions for c in group)

    def summary(self) -> dict[str, float]:
        """What a run logs about its rollouts each step: rewards, their parts, lengths, truncation."""
        flat = [c for group in self.completions for c in group]
        lengths = torch.tensor([len(c.token_ids) for c in flat], dtype=torch.float32)
        groups = len(self.completions)
        return {
            "reward/mean": float(self.rewards.mean()),
            "reward/std": float(self.rewards.std()),
            **{f"reward/{name}": float(part.mean()) for name, part in self.parts.items()},
            "zero_variance_groups": 1.0 - len(self.informative(range(groups))) / groups,
            "completion/length_mean": float(lengths.mean()),
            "completion/length_max": float(lengths.max()),
            "completion/truncated": sum(c.finish_reason == "length" for c in flat) / len(flat),
        }
