"""Protocols of Stages 1 and 2: which questions are difficult, and which skills are missing.

Detectors (ground truth, consistency, length, PRM, ORM) and profilers (skill-map proxy, skill-world
oracle, LLM teacher) are interchangeable behind these two small interfaces, so the
``SkillReprofiler`` callback and ``python -m stat_pl profile`` take any of them from config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from stat_pl.records import ProblemRecord


@dataclass(frozen=True)
class Attempt:
    """A question and the student's responses to it (one, or k samples for consistency voting)."""

    record: ProblemRecord
    responses: tuple[str, ...]


DiagnosisStatus = Literal["labelled", "unlabelled", "unreadable"]


@dataclass(frozen=True)
class Diagnosis:
    """The missing skills named for one difficult question.

    ``status`` is ``"labelled"`` when skills were named, ``"unlabelled"`` when the profiler gave up
    (a teacher that never produced usable tags), ``"unreadable"`` when the response could not be
    read (the skill-world oracle on garbage). Nothing is dropped: every difficult question gets one.
    """

    question_id: str
    skills: tuple[str, ...]
    status: DiagnosisStatus = "labelled"


class DifficultyDetector(Protocol):
    """Stage 1: one verdict per attempt, True when the question is difficult for the student."""

    #: How many responses per question the detector needs (consistency voting needs k > 1).
    samples_per_question: int

    def detect(self, attempts: Sequence[Attempt]) -> list[bool]: ...


class Profiler(Protocol):
    """Stage 2: the missing skills of each difficult attempt, one :class:`Diagnosis` per attempt."""

    def diagnose(self, attempts: Sequence[Attempt]) -> list[Diagnosis]: ...
