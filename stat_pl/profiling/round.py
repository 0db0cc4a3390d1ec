"""One profiling round (DESIGN.md, Stages 1-2): the student answers, a detector picks the difficult
questions, a profiler names their missing skills.

The ``SkillReprofiler`` callback runs :func:`answer` on each rank's share of its validation subset with the live
model and :func:`judge` on all of them on rank 0; ``python -m stat_pl profile`` generates through its resumable
response store (each rank its share) and then runs :func:`judge`, the same Stages 1-2, on the stored responses.
"""

from __future__ import annotations

from collections.abc import Sequence

from stat_pl.data.formatting import prompt_messages
from stat_pl.engines.base import Engine, SamplingParams
from stat_pl.errors import UserError
from stat_pl.profiling.base import Attempt, Diagnosis, DifficultyDetector, Profiler
from stat_pl.records import ProblemRecord


def judge(
    attempts: Sequence[Attempt], detector: DifficultyDetector, profiler: Profiler
) -> tuple[list[Attempt], list[Diagnosis]]:
    """(the difficult attempts, one diagnosis per difficult attempt): Stage 1, then Stage 2 on its verdicts."""
    verdicts = detector.detect(attempts)
    difficult = [attempt for attempt, hard in zip(attempts, verdicts, strict=True) if hard]
    return difficult, profiler.diagnose(difficult)


def answer(
    engine: Engine, questions: Sequence[ProblemRecord], sampling: SamplingParams, system_prompt: str | None = None
) -> list[Attempt]:
    """The student's responses to ``questions`` (0-shot), one :class:`Attempt` each, in question order.

    A rank with no questions still calls the engine: engines split over a group of ranks generate together.
    """
    completions = engine.generate([prompt_messages(r.problem, system_prompt) for r in questions], sampling)
    return [Attempt(r, tuple(c.text for c in samples)) for r, samples in zip(questions, completions, strict=True)]


def check_samples(detector: DifficultyDetector, sampling: SamplingParams) -> None:
    """``sampling.n`` must be the number of responses per question ``detector`` judges."""
    if sampling.n != detector.samples_per_question:
        raise UserError(
            f"profile_round: {type(detector).__name__} judges {detector.samples_per_question} "
            f"response(s) per question but sampling.n is {sampling.n}"
        )


def profile_round(
    engine: Engine,
    questions: Sequence[ProblemRecord],
    detector: DifficultyDetector,
    profiler: Profiler,
    sampling: SamplingParams,
    system_prompt: str | None = None,
) -> tuple[list[Attempt], list[Attempt], list[Diagnosis]]:
    """(attempts, difficult attempts, diagnoses) of one round: the student answers every question 0-shot.

    ``sampling.n`` must be the detector's ``samples_per_question``; the engine generates with whatever
    weights it holds (the live training model for the callback).
    """
    check_samples(detector, sampling)
    attempts = answer(engine, questions, sampling, system_prompt)
    difficult, diagnoses = judge(attempts, detector, profiler)
    return attempts, difficult, diagnoses
