"""How well a Skill-Map covers its questions and its skills, before and after ``label-skills``.

STAT-Sel draws training questions per missing skill (paper Sec. 3.3), so a Skill-Map is useful when
every question has skills and every skill has questions to draw. Two views say whether it does:

* **skills per question**: how many questions have 0, 1, ..., ``max_skills`` skills, and the mean
  (the shipped MATH labels: almost all 1, 948 with none; the paper labels up to 5);
* **questions per skill**: over every catalog skill of the records' subjects (a skill no question
  is linked to counts as 0), the min, median and max, and the skills with the fewest questions, the
  ones STAT-Sel can draw least from.

``label-skills`` computes both for its input ("before") and its output ("after"), writes them into
``summary.md`` / ``summary.json`` and draws them as ``skills_per_question.png`` and
``questions_per_skill.png`` (the 40 least-linked skills).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stat_pl.plots import plot_bars
from stat_pl.records import ProblemRecord

#: How many least-linked skills ``questions_per_skill.png`` draws.
PLOTTED_SKILLS = 40


@dataclass(frozen=True)
class SkillCoverage:
    """Both views of one set of labels.

    ``skills_per_question`` maps a count of skills (0, 1, ...) to the number of questions with that
    many; ``questions_per_skill`` maps each skill to its number of questions, fewest first (ties by name).
    """

    questions: int
    skills_per_question: dict[int, int]
    mean_skills_per_question: float
    questions_per_skill: dict[str, int]

    @property
    def min_questions_per_skill(self) -> int:
        return min(self.questions_per_skill.values(), default=0)

    @property
    def median_questions_per_skill(self) -> float:
        return statistics.median(self.questions_per_skill.values()) if self.questions_per_skill else 0.0

    @property
    def max_questions_per_skill(self) -> int:
        return max(self.questions_per_skill.values(), default=0)

    @property
    def skills_without_questions(self) -> int:
        return sum(n == 0 for n in self.questions_per_skill.values())

    def fewest(self, k: int) -> list[tuple[str, int]]:
        """The ``k`` skills with the fewest questions, fewest first."""
        return list(self.questions_per_skill.items())[:k]

    def to_json(self, fewest: int) -> dict[str, Any]:
        """The summary.json entry: both views, the ``fewest`` least-linked skills, and every skill's count."""
        return {
            **asdict(self),
            "skills_per_question": {str(k): v for k, v in self.skills_per_question.items()},
            "questions_per_skill_min": self.min_questions_per_skill,
            "questions_per_skill_median": self.median_questions_per_skill,
            "questions_per_skill_max": self.max_questions_per_skill,
            "skills_without_questions": self.skills_without_questions,
            "fewest_questions": dict(self.fewest(fewest)),
        }


def skill_coverage(records: Sequence[ProblemRecord], skills: Iterable[str], max_skills: int) -> SkillCoverage:
    """Both views of ``records``' labels over ``skills`` (the catalog skills of their subjects).

    Counts 0 .. ``max_skills`` are always present (a record with more, kept from the input, adds its
    own count); a labelled skill outside ``skills`` is counted too rather than hidden.
    """
    lengths = Counter(len(r.skills) for r in records)
    per_question = {k: lengths.get(k, 0) for k in range(max(max_skills, *lengths, 0) + 1)}
    linked = Counter(s for r in records for s in r.skills)
    per_skill = {s: linked.get(s, 0) for s in {*skills, *linked}}
    ordered = dict(sorted(per_skill.items(), key=lambda item: (item[1], item[0])))
    mean = sum(k * n for k, n in per_question.items()) / len(records) if records else 0.0
    return SkillCoverage(len(records), per_question, round(mean, 3), ordered)


def coverage_markdown(before: SkillCoverage, after: SkillCoverage, fewest: int) -> str:
    """Three tables, before beside after: skills per question, questions per skill, the least-linked skills."""
    lines = ["### Skills per question", "", "| skills | before | after |", "|---|---|---|"]
    lines += [
        f"| {k} | {before.skills_per_question.get(k, 0)} | {after.skills_per_question.get(k, 0)} |"
        for k in _counts_of_skills(before, after)
    ]
    lines += [f"| mean | {before.mean_skills_per_question} | {after.mean_skills_per_question} |", ""]
    lines += [f"### Questions per skill ({len(after.questions_per_skill)} skills)", ""]
    lines += ["| | before | after |", "|---|---|---|"]
    for name, value in (
        ("min", lambda c: c.min_questions_per_skill),
        ("median", lambda c: c.median_questions_per_skill),
        ("max", lambda c: c.max_questions_per_skill),
        ("skills without questions", lambda c: c.skills_without_questions),
    ):
        lines.append(f"| {name} | {value(before)} | {value(after)} |")
    lines += ["", f"### The {fewest} skills with the fewest questions after labelling", ""]
    lines += ["| skill | before | after |", "|---|---|---|"]
    lines += [f"| {s} | {before.questions_per_skill.get(s, 0)} | {n} |" for s, n in after.fewest(fewest)]
    return "\n".join(lines) + "\n"


def plot_coverage(before: SkillCoverage, after: SkillCoverage, output_dir: Path) -> list[Path]:
    """``skills_per_question.png`` and ``questions_per_skill.png``: the :data:`PLOTTED_SKILLS` skills with
    the fewest questions after labelling, fewest first (all 114 MATH skill names would make a chart six
    thousand pixels tall; every count is in ``summary.json``)."""
    counts = _counts_of_skills(before, after)
    per_question = {
        name: {f"{k} skills": float(c.skills_per_question.get(k, 0)) for k in counts}
        for name, c in (("before", before), ("after", after))
    }
    per_skill = {
        name: {s: float(n) for s, n in c.questions_per_skill.items()}
        for name, c in (("before", before), ("after", after))
    }
    return [
        plot_bars(
            per_question,
            output_dir / "skills_per_question.png",
            "Skills per question",
            "questions",
            rows=list(per_question["after"]),
        ),
        plot_bars(
            per_skill,
            output_dir / "questions_per_skill.png",
            f"Questions per skill: the {PLOTTED_SKILLS} with the fewest after labelling",
            "questions",
            rows=list(after.questions_per_skill)[:PLOTTED_SKILLS],
        ),
    ]


def _counts_of_skills(before: SkillCoverage, after: SkillCoverage) -> list[int]:
    """The rows of the skills-per-question table: every count either side has."""
    return sorted({*before.skills_per_question, *after.skills_per_question})
