"""The skill-world oracle: the true Missing-Skill-Profile of a student on skill-world problems.

In the paper a teacher LLM reads question + response and names the missing skills (DESIGN.md,
Stage 2). On the skill world (:mod:`stat_pl.data.skillworld`) the truth is known: every problem is a
chain of steps, one skill each, and the student was trained to answer one ``Step i [skill]: ... = v``
line per step. The skill of the first step whose value is wrong is the skill the student lacks. The
oracle is the reference a teacher's profile is scored against, and a free profiler for experiments.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from stat_pl.data.skillworld import SkillWorldProblem, problem_from_id
from stat_pl.grading import grade
from stat_pl.profiling.base import Attempt, Diagnosis

# Lenient on layout: markdown marks before "Step", any number, an optional skill tag with or without
# brackets, then ":" (or "." / ")"). Steps are matched by position, so the number and tag are not read.
_STEP_LINE = re.compile(
    r"^[ \t*#>-]*step[ \t]*\d+[ \t]*\[?[a-z_\- ]*\]?[ \t*]*[:.)][ \t]*(.*)$", re.IGNORECASE | re.MULTILINE
)
_NUMBER = re.compile(
    r"\\[dt]?frac\{(-?\d+)\}\{(\d+)\}"
    r"|(-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?)(?:\s*/\s*(\d+))?"
)


@dataclass(frozen=True)
class ResponseCheck:
    """What the oracle read in one response.

    ``blamed_step`` is the 0-based index into ``problem.steps`` of the step the student got wrong: the
    first step whose value is wrong or missing, else the last step when every step is right but the
    final answer is not. It is None when the response is fully right, and when it is unreadable.
    """

    readable: bool
    blamed_step: int | None = None


def check_response(problem: SkillWorldProblem, response: str) -> ResponseCheck:
    """Compare the response's step values with the problem's, by position, exactly (``7/10`` = ``0.7``).

    A response is unreadable when it has no step lines, or a step count other than the problem's and
    no step value in the right place: then nothing in it can be tied to a skill.
    """
    values = [_step_value(body) for body in _STEP_LINE.findall(response)]
    gold = [Fraction(step.value) for step in problem.steps]
    right = [value == expected for value, expected in zip(values, gold, strict=False)]
    if not values or (len(values) != len(gold) and not any(right)):
        return ResponseCheck(readable=False)
    for index in range(len(gold)):
        if index >= len(right) or not right[index]:
            return ResponseCheck(readable=True, blamed_step=index)
    if grade(response, problem.answer):
        return ResponseCheck(readable=True)
    return ResponseCheck(readable=True, blamed_step=len(gold) - 1)


def _step_value(body: str) -> Fraction | None:
    """The value a step line states: the first number after its last ``=``, else its last number."""
    head, equals, tail = body.rpartition("=")
    numbers = list(_NUMBER.finditer(tail))
    if not numbers:
        return None
    match = numbers[0] if equals else numbers[-1]
    frac_num, frac_den, number, slash_den = match.groups()
    if frac_num is not None:
        numerator, denominator = Fraction(frac_num), int(frac_den)
    else:
        numerator, denominator = Fraction(number.replace(",", "")), int(slash_den or 1)
    return numerator / denominator if denominator else None


class SkillWorldOracle:
    """A :class:`~stat_pl.profiling.base.Profiler` that names the skill of the first wrong step.

    With several responses per question (consistency sampling), each wrong response names one skill
    and the diagnosis lists them in order of first appearance; responses that are fully right name
    none, so a question every readable response got right has a ``"labelled"`` diagnosis with no
    skills. Questions must be skill-world records (their id regenerates the problem).

    Args:
        fallback_to_labels: when no response can be read (status ``"unreadable"``), name the question's
            own labelled skills, as a teacher that cannot tell would; False names none.
    """

    def __init__(self, fallback_to_labels: bool = True) -> None:
        self.fallback_to_labels = fallback_to_labels

    def diagnose(self, attempts: Sequence[Attempt]) -> list[Diagnosis]:
        return [self._diagnose_one(attempt) for attempt in attempts]

    def _diagnose_one(self, attempt: Attempt) -> Diagnosis:
        record = attempt.record
        problem = problem_from_id(record.id)
        checks = [check_response(problem, response) for response in attempt.responses]
        readable = [check for check in checks if check.readable]
        if not readable:
            fallback = record.skills if self.fallback_to_labels else ()
            return Diagnosis(record.id, tuple(fallback), status="unreadable")
        blamed = (problem.steps[c.blamed_step].skill for c in readable if c.blamed_step is not None)
        return Diagnosis(record.id, tuple(dict.fromkeys(blamed)), status="labelled")
