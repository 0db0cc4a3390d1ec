"""Callbacks the resume tests put into CLI runs (importable there: the tests put this folder on PYTHONPATH)."""

import os
import signal

from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    """SIGKILL this process as the micro-batch after optimizer step ``step`` starts: after that step's checkpoint
    (checkpoints are written at the end of a batch), with no chance to clean up, as a preempted job dies."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class StopAtStep(Callback):
    """Stop the run after optimizer step ``step``, on every rank (a graceful interruption: the schedule's horizon stays
    the configured ``max_steps``, as for a run that was stopped, not one that was shorter)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True
