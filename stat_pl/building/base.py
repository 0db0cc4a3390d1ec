"""What every Stage 3 builder shares: its inputs, its output rows with provenance, and its protocol.

A builder (STAT-Sel, STAT-Syn, the paper's baselines) turns a Missing-Skill-Profile and a training
pool into training rows. Every row says why it is there (:attr:`BuiltRow.provenance`: the difficult
question, the skill, where the question and the answer came from), so a built dataset can be audited
and its skill distribution compared with the profile (paper Figure 2).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from stat_pl.errors import UserError
from stat_pl.missing_skill_profile import MissingSkillProfile
from stat_pl.records import ORIGINS, PROVENANCE_KEYS, BuiltRow, ProblemRecord  # noqa: F401 (re-exported)
from stat_pl.skills import SkillMap

if TYPE_CHECKING:
    from stat_pl.building.contamination import ContaminationGuard
    from stat_pl.teacher.base import Teacher


class BuildInputError(UserError):
    """A profile, pool or config that a builder cannot use; the message names the file and field."""


@dataclass
class BuiltDataset:
    """A builder's output: its rows, in the order written, and its counters (rejections, shortfall...)."""

    name: str
    rows: list[BuiltRow]
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuildInputs:
    """Everything a builder may read; each builder checks that what it needs is there.

    Args:
        pool: the training questions to select from or to show the teacher (paper: MATH train).
        pool_path: where ``pool`` was read, for error messages.
        profile: the Missing-Skill-Profile (absent for MATH-Train / -Augment / -Hard).
        profile_path: where ``profile`` was read.
        questions: the difficult questions' records by id (Embed-Sel and Embed-Syn need their text).
        questions_path: where ``questions`` were read.
        teacher: the teacher for answers and synthesis (absent: builders that need one refuse).
        guard: the contamination guard synthetic questions must pass (training + test questions).
    """

    pool: list[ProblemRecord]
    pool_path: str
    profile: MissingSkillProfile | None = None
    profile_path: str = "<no profile>"
    questions: dict[str, ProblemRecord] = field(default_factory=dict)
    questions_path: str = "<no questions>"
    teacher: Teacher | None = None
    guard: ContaminationGuard | None = None

    @functools.cached_property
    def skill_map(self) -> SkillMap:
        return SkillMap.from_records(self.pool)

    @functools.cached_property
    def pool_by_id(self) -> dict[str, ProblemRecord]:
        return {r.id: r for r in self.pool}

    def require_profile(self, builder: str) -> MissingSkillProfile:
        if self.profile is None:
            raise BuildInputError(f"builder {builder!r} needs a Missing-Skill-Profile: set `profile:` in the config")
        return self.profile

    def require_teacher(self, builder: str, why: str) -> Teacher:
        if self.teacher is None:
            raise BuildInputError(
                f"builder {builder!r} needs a teacher ({why}): set `teacher:` in the config "
                "(class_path: stat_pl.teacher.OpenAICompatibleTeacher, init_args: ...)"
            )
        return self.teacher


class DataBuilder(Protocol):
    """A Stage 3 method: ``build(inputs)`` returns the rows and counters of one dataset named ``name``."""

    name: str

    def build(self, inputs: BuildInputs) -> BuiltDataset:
        """All rows of the dataset; raises :class:`BuildInputError` when ``inputs`` lack what it needs."""
        ...
