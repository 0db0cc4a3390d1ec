"""Input checks shared by the builders: each failure names the file and the field to fix."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from stat_pl.building.base import BuildInputError, BuildInputs
from stat_pl.missing_skill_profile import MissingSkillProfile
from stat_pl.records import ProblemRecord


def check_pool(inputs: BuildInputs, builder: str, need_skills: bool = False) -> None:
    """The pool is non-empty, its ids are unique, every question has a solution (and, when
    ``need_skills``, some question has skill labels)."""
    where = inputs.pool_path
    if not inputs.pool:
        raise BuildInputError(f"{builder}: the training pool {where} has no rows")
    duplicates = [i for i, n in Counter(r.id for r in inputs.pool).items() if n > 1]
    if duplicates:
        raise BuildInputError(
            f"{builder}: pool {where}: field 'id': {duplicates[:3]} appear(s) more than once; ids must be unique"
        )
    unsolved = next((r for r in inputs.pool if not r.solutions), None)
    if unsolved is not None:
        raise BuildInputError(
            f"{builder}: pool {where}: question {unsolved.id!r} has no 'solution' (or "
            "'solutions'); every pool question needs one to train on and to show the teacher"
        )
    if need_skills and not any(r.skills for r in inputs.pool):
        raise BuildInputError(
            f"{builder}: pool {where}: no question has field 'skills'; label the pool first "
            "(Stage 0, stat_pl.profiling.teacher_profiler.label_skills)"
        )


def check_profile(profile: MissingSkillProfile, where: str, builder: str) -> None:
    """The profile names at least one difficult question with at least one missing skill."""
    if not profile.questions:
        raise BuildInputError(
            f"{builder}: profile {where}: field 'questions' is empty; there is no difficult question to build data for"
        )
    if not any(profile.questions.values()):
        raise BuildInputError(f"{builder}: profile {where}: field 'questions' names no missing skill for any question")


def check_linked(profile: MissingSkillProfile, inputs: BuildInputs, builder: str) -> None:
    """At least one of the profile's skills is linked to a pool question (else the pool is unlabelled
    or labelled with another catalog)."""
    if not any(inputs.skill_map.problems_with(s) for s in profile.histogram):
        raise BuildInputError(
            f"{builder}: none of the skills of profile {inputs.profile_path} (field 'histogram') labels a question "
            f"of the pool {inputs.pool_path} (field 'skills'); are both from the same skill catalog?"
        )


def difficult_records(profile: MissingSkillProfile, inputs: BuildInputs, builder: str) -> list[ProblemRecord]:
    """The difficult questions' records, in the profile's (sorted) order; every one must be found."""
    missing = [q for q in sorted(profile.questions) if q not in inputs.questions]
    if missing:
        raise BuildInputError(
            f"{builder}: profile {inputs.profile_path}: field 'questions' names {len(missing)} question(s) not in "
            f"{inputs.questions_path} (field 'id'), e.g. {missing[:3]}; set `questions:` to the file the "
            "difficult questions came from"
        )
    return [inputs.questions[q] for q in sorted(profile.questions)]


def check_positive(builder: str, **values: int | None) -> None:
    """Each named count is None or >= 1 (the config key is named in the error)."""
    for key, value in values.items():
        if value is not None and value < 1:
            raise BuildInputError(f"{builder}.{key} must be >= 1, got {value}")


def distinct_ids(records: Sequence[ProblemRecord]) -> list[ProblemRecord]:
    """``records`` without repeats of an id, first occurrence kept."""
    return list({r.id: r for r in records}.values())
