"""Skill catalog and Skill-Map (DESIGN.md, Stage 0).

A skill is identified by its normalised name everywhere in stat-pl: profiles, skill maps, teacher
output and plots all go through :func:`normalize_skill`, so ``"Counting Principals"`` and
``"counting_principals"`` are the same skill.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from stat_pl.errors import MissingFileError, UserError

_SEPARATORS = re.compile(r"[\s\-_]+")


class UnknownSkillError(UserError):
    """A skill name that the catalog does not contain."""


class CatalogKeyError(UserError, KeyError):
    """A benchmark or subject that the skill catalog does not have; the message names the catalog."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def normalize_skill(name: str) -> str:
    """The one normalisation of skill names: lower case, runs of spaces/hyphens/underscores -> ``_``."""
    return _SEPARATORS.sub("_", name.strip().lower()).strip("_")


class SkillCatalog:
    """Subject -> skill names, e.g. the 118 MATH skills of Didolkar et al. (2024) in 7 subjects.

    A skill may belong to several subjects (``solving_equations`` is both algebra and prealgebra).
    """

    def __init__(self, subjects: Mapping[str, Sequence[str]], source: str = "<in-memory>") -> None:
        self.source = source
        self._subjects = {
            normalize_skill(subject): tuple(dict.fromkeys(normalize_skill(s) for s in skills))
            for subject, skills in subjects.items()
        }
        self._all = frozenset(s for skills in self._subjects.values() for s in skills)

    @classmethod
    def from_json(cls, path: str | Path, benchmark: str = "MATH") -> SkillCatalog:
        """Load ``{benchmark: {subject: [skill, ...]}}`` (or ``{benchmark: [skill, ...]}``, one subject).

        The catalog is a file the user provides: no Hub dataset holds one. docs/data_sources.md says where
        the paper's MATH catalog (Didolkar et al. 2024, as princeton-pli/AdaptMI publishes it) comes from.
        """
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(
                f"skill catalog {path} does not exist (resolved to {path.resolve()}); docs/data_sources.md "
                "says how to make it from princeton-pli/AdaptMI's skill lists"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"skill catalog {path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        if benchmark not in data:
            raise CatalogKeyError(f"{path}: no benchmark {benchmark!r}; the file has {sorted(data)}")
        entry = data[benchmark]
        subjects = entry if isinstance(entry, dict) else {benchmark: entry}
        return cls(subjects, source=str(path))

    @property
    def subjects(self) -> list[str]:
        return list(self._subjects)

    def skills(self, subject: str | None = None) -> list[str]:
        """The skills of one subject, or of all subjects (sorted) when ``subject`` is None."""
        if subject is None:
            return sorted(self._all)
        key = normalize_skill(subject)
        if key not in self._subjects:
            raise CatalogKeyError(f"subject {subject!r} is not in the catalog {self.source} ({self.subjects})")
        return list(self._subjects[key])

    def __contains__(self, skill: object) -> bool:
        return isinstance(skill, str) and normalize_skill(skill) in self._all

    def __len__(self) -> int:
        return len(self._all)

    def check(self, skills: Iterable[str], where: str) -> None:
        """Raise :class:`UnknownSkillError` naming ``where`` if any skill is not in the catalog."""
        unknown = sorted({s for s in skills if s not in self})
        if unknown:
            raise UnknownSkillError(
                f"{where}: skill(s) {unknown} are not in the catalog {self.source}; "
                "fix the name or add the skill to the catalog"
            )


class LabelledProblem(Protocol):
    """What a Skill-Map reads of a problem (a :class:`~stat_pl.records.ProblemRecord` is one): its id and skills.

    Named here rather than imported, so skills (the names records are labelled with) do not depend on records.
    """

    @property
    def id(self) -> str: ...

    @property
    def skills(self) -> tuple[str, ...]: ...


class SkillMap:
    """Skill <-> problem ids, built from the records' ``skills`` labels."""

    def __init__(self, problems_by_skill: Mapping[str, Sequence[str]]) -> None:
        self._problems = {normalize_skill(k): tuple(v) for k, v in problems_by_skill.items()}
        skills_by_problem: dict[str, list[str]] = defaultdict(list)
        for skill, ids in self._problems.items():
            for pid in ids:
                skills_by_problem[pid].append(skill)
        self._skills = {pid: tuple(s) for pid, s in skills_by_problem.items()}

    @classmethod
    def from_records(cls, records: Iterable[LabelledProblem]) -> SkillMap:
        problems: dict[str, list[str]] = defaultdict(list)
        for record in records:
            for skill in record.skills:
                problems[skill].append(record.id)
        return cls(problems)

    @property
    def skills(self) -> list[str]:
        return sorted(self._problems)

    def problems_with(self, skill: str) -> tuple[str, ...]:
        return self._problems.get(normalize_skill(skill), ())

    def skills_of(self, problem_id: str) -> tuple[str, ...]:
        return self._skills.get(problem_id, ())
