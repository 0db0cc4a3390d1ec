"""Test helpers importable by class_path from a subprocess: a profiler that takes its time (a slow teacher), a
callback that reports how many questions each rank answered in a round."""

import time
from collections.abc import Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback

from stat_pl.callbacks.skill_reprofiler import SkillReprofiler
from stat_pl.profiling.base import Attempt, Diagnosis
from stat_pl.profiling.oracle import SkillWorldOracle


class SlowProfiler:
    """The skill-world oracle after ``seconds`` of waiting, as a teacher round on rank 0 would take."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.oracle = SkillWorldOracle()

    def diagnose(self, attempts: Sequence[Attempt]) -> list[Diagnosis]:
        time.sleep(self.seconds)
        return self.oracle.diagnose(attempts)


class AnswerCounter(Callback):
    """Appends to ``<path>.rank<r>`` one line per profiling round of rank r: how many questions its engine answered."""

    def __init__(self, path: str) -> None:
        self.path = path

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        reprofiler = next(c for c in trainer.callbacks if isinstance(c, SkillReprofiler))
        answer_share = reprofiler._answer

        def counted(trainer, pl_module, questions):
            with open(f"{self.path}.rank{trainer.global_rank}", "a") as f:
                f.write(f"{len(questions)}\n")
            return answer_share(trainer, pl_module, questions)

        reprofiler._answer = counted
