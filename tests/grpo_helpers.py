"""Test helpers importable by class_path from a subprocess: a reward a tiny random model can earn; a rollout log."""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from stat_pl.engines.base import Completion


@dataclass
class CharReward:
    """1.0 when the completion's text contains ``char``: about half of a tiny random model's samples do."""

    char: str = "1"
    weight: float = 1.0
    name: str = "char"

    def score(self, completions: Sequence[Completion], answers: Sequence[str]) -> list[float]:
        return [float(self.char in c.text) for c in completions]


class RolloutRecorder(Callback):
    """Appends one JSON line per rollout batch: step, rank, the completions' token ids and the rewards."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rollouts = outputs["rollouts"]
        row = {
            "step": trainer.global_step,
            "rank": trainer.global_rank,
            "index": batch["index"].tolist(),
            "ids": [[list(c.token_ids) for c in group] for group in rollouts.completions],
            "rewards": rollouts.rewards.tolist(),
        }
        path = self.path.with_suffix(f".rank{trainer.global_rank}.jsonl") if trainer.world_size > 1 else self.path
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")


@dataclass
class QuietOnRankOne(CharReward):
    """CharReward on rank 0; 0 for everything on rank 1, so rank 1 skips every group of every step."""

    def score(self, completions: Sequence[Completion], answers: Sequence[str]) -> list[float]:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return super().score(completions, answers) if rank == 0 else [0.0] * len(completions)


class FirstStepRecorder(Callback):
    """Saves the initial adapter, and per rank the first batch's rollouts and the gradients of its step."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.grads: dict | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        from peft import get_peft_model_state_dict

        if trainer.global_rank == 0:
            torch.save(get_peft_model_state_dict(pl_module.model), self.path.with_suffix(".initial.pt"))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.grads is None:
            self.grads = {n: p.grad.clone() for n, p in pl_module.model.named_parameters() if p.requires_grad}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            rollouts = outputs["rollouts"]
            torch.save(
                {
                    "prompt_ids": rollouts.prompt_ids,
                    "advantages": rollouts.advantages,
                    "ids": [[list(c.token_ids) for c in group] for group in rollouts.completions],
                    "grads": self.grads,
                },
                self.path.with_suffix(f".rank{trainer.global_rank}.pt"),
            )
