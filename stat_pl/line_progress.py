"""LineProgress: one plain line of training progress every N optimizer steps, for logs that are files.

Rich and tqdm bars redraw one terminal line; with stdout going to a file (CI, ``nohup ... > log``)
Rich draws nothing until the end and tqdm writes carriage returns. This bar prints whole lines
(``epoch 1/3  step 12/96  train/loss 1.234  train/tokens_per_s 115.2``) with whatever the module
logs with ``prog_bar=True``, so a person reading the file sees the run move. stat-pl's trainer
(:class:`stat_pl.trainer.StatTrainer`) uses it by default when stdout is not a terminal.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar


class LineProgress(ProgressBar):
    """Print training progress as plain lines.

    Args:
        every_n_steps: print after every n-th optimizer step (default: the trainer's ``log_every_n_steps``).
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self._enabled = True
        self._started = 0.0
        self._last_printed_step = -1

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, text: str) -> None:
        if self._enabled and self.trainer.is_global_zero:
            print(text, file=sys.stdout, flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()
        total = trainer.estimated_stepping_batches
        epochs = f"{trainer.max_epochs} epoch(s)" if _bounded(trainer.max_epochs) else "epochs until max_steps"
        self._print(f"training: {epochs}, {total} optimizer steps")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        every = self.every_n_steps or trainer.log_every_n_steps
        if step == self._last_printed_step or step == 0 or step % max(1, every):
            return
        self._last_printed_step = step
        metrics = "  ".join(f"{k} {_fmt(v)}" for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num")
        elapsed = time.perf_counter() - self._started
        self._print(
            f"epoch {_of(trainer.current_epoch + 1, trainer.max_epochs)}  "
            f"step {step}/{trainer.estimated_stepping_batches}  {elapsed:.0f}s  {metrics}"
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print(
            f"training done: {trainer.global_step} optimizer steps in {time.perf_counter() - self._started:.0f}s"
        )


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _bounded(max_epochs: int | None) -> bool:
    """Whether ``max_epochs`` limits the run (Lightning uses -1 or None for "until max_steps")."""
    return max_epochs is not None and max_epochs >= 0


def _of(epoch: int, max_epochs: int | None) -> str:
    return f"{epoch}/{max_epochs}" if _bounded(max_epochs) else str(epoch)
