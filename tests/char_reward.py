"""Test helpers importable by class_path from a subprocess: a reward a tiny random model can earn; a rollout log."""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
        row = {"step": trainer.global_step, "rank": trainer.global_rank, "index": batch["index"].tolist(),
               "ids": [[list(c.token_ids) for c in group] for group in rollouts.completions],
               "rewards": rollouts.rewards.tolist()}
        path = self.path.with_suffix(f".rank{trainer.global_rank}.jsonl") if trainer.world_size > 1 else self.path
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
