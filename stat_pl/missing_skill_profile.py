"""The Missing-Skill-Profile (DESIGN.md, Stage 2) and its use as STAT-Sel sampling weights.

A profile maps each difficult question to the skills the student is missing on it; its histogram
(skill -> count) is what targets training. Across re-profiling rounds the histogram can be an
exponential moving average, so it holds fractional counts.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stat_pl.errors import MissingFileError, UserError
from stat_pl.records import ProblemRecord
from stat_pl.skills import SkillCatalog, SkillMap, normalize_skill


@dataclass
class MissingSkillProfile:
    """Question id -> missing skills, plus the skill histogram that drives sampling.

    ``histogram`` defaults to the counts over ``questions``; after :meth:`ema` it is the smoothed
    histogram and no longer a plain count. ``meta`` records how the profile was made (round, epoch,
    detector, accuracy ...) and is written to JSON as is.
    """

    questions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    histogram: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.questions = {
            qid: tuple(dict.fromkeys(normalize_skill(s) for s in skills)) for qid, skills in self.questions.items()
        }
        if not self.histogram:
            self.histogram = dict(Counter(s for skills in self.questions.values() for s in skills))
        self.histogram = {normalize_skill(s): float(c) for s, c in self.histogram.items() if c > 0}

    @classmethod
    def from_questions(cls, questions: Mapping[str, Sequence[str]], **meta: Any) -> MissingSkillProfile:
        return cls(questions={q: tuple(s) for q, s in questions.items()}, meta=dict(meta))

    # ---- reading -------------------------------------------------------------------------------
    def top_k(self, k: int) -> list[tuple[str, float]]:
        """The k skills with the largest counts, ties broken by name so the order is stable."""
        return sorted(self.histogram.items(), key=lambda kv: (-kv[1], kv[0]))[:k]

    def shares(self) -> dict[str, float]:
        """Each skill's share of the histogram (sums to 1; empty for an empty profile)."""
        total = sum(self.histogram.values())
        return {s: c / total for s, c in self.histogram.items()} if total else {}

    def validate(self, catalog: SkillCatalog, where: str = "profile") -> None:
        """Raise :class:`~stat_pl.skills.UnknownSkillError` if a skill is not in ``catalog``."""
        catalog.check(self.histogram, where)
        for qid, skills in self.questions.items():
            catalog.check(skills, f"{where}: question {qid!r}")

    # ---- combining rounds ----------------------------------------------------------------------
    def merge(self, other: MissingSkillProfile) -> MissingSkillProfile:
        """Union of questions (``other`` wins on the same id) and the sum of both histograms."""
        counts = Counter(self.histogram)
        counts.update(other.histogram)
        return MissingSkillProfile({**self.questions, **other.questions}, dict(counts), {**self.meta, **other.meta})

    def ema(self, other: MissingSkillProfile, alpha: float) -> MissingSkillProfile:
        """Exponential moving average toward ``other``: ``alpha * new + (1 - alpha) * old`` per skill.

        ``other`` is the newer round; its questions replace this profile's. ``alpha = 1`` keeps only
        the new round, ``alpha = 0`` never moves.
        """
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"ema alpha must be in [0, 1], got {alpha}")
        skills = set(self.histogram) | set(other.histogram)
        histogram = {s: alpha * other.histogram.get(s, 0.0) + (1 - alpha) * self.histogram.get(s, 0.0) for s in skills}
        profile = MissingSkillProfile(dict(other.questions), histogram, {**self.meta, **other.meta})
        if not profile.histogram:  # both empty: keep an explicitly empty histogram, not a recount
            profile.histogram = {}
        return profile

    # ---- STAT-Sel weights ----------------------------------------------------------------------
    def to_weights(
        self, records: Sequence[ProblemRecord], skill_map: SkillMap | None = None, floor: float = 0.05
    ) -> list[float]:
        """A sampling weight per training record so each skill's share of the data follows the profile.

        STAT-Sel (paper Algorithm 1) draws training questions per missing skill, so a skill's share of
        the selected data is proportional to its count in the profile. Here skill ``s`` with share
        ``p_s`` spreads ``p_s`` evenly over the ``N_s`` records linked to it (a record with several
        skills collects from each). Skills with no linked record are dropped and the rest
        renormalised. ``floor`` mixes in the uniform distribution, ``w = (1 - floor) * targeted +
        floor * uniform``, so no record's weight is exactly zero unless ``floor=0``; an empty profile
        (nothing missing) gives uniform weights. The weights sum to 1.
        """
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"floor must be in [0, 1], got {floor}")
        if not records:
            raise ValueError("to_weights: the training pool is empty")
        skill_map = skill_map or SkillMap.from_records(records)
        index = {r.id: i for i, r in enumerate(records)}
        linked = {s: [index[p] for p in skill_map.problems_with(s) if p in index] for s in self.histogram}
        shares = {s: c for s, c in self.histogram.items() if linked[s]}
        total = sum(shares.values())
        uniform = 1.0 / len(records)
        if not total:
            return [uniform] * len(records)
        targeted = [0.0] * len(records)
        for skill, count in shares.items():
            per_record = count / total / len(linked[skill])
            for i in linked[skill]:
                targeted[i] += per_record
        return [(1 - floor) * t + floor * uniform for t in targeted]

    # ---- files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (histogram largest first); ``MissingSkillProfile(**d)`` rebuilds it."""
        return {
            "histogram": dict(self.top_k(len(self.histogram))),
            "questions": {q: list(s) for q, s in self.questions.items()},
            "meta": self.meta,
        }

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, default=str))
        return path

    @classmethod
    def from_json(cls, path: str | Path, catalog: SkillCatalog | None = None) -> MissingSkillProfile:
        """Load a profile; with ``catalog``, every skill must be in it (else an error naming the file)."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"profile {path} does not exist")
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(payload, dict):
            raise UserError(f"{path}: expected a profile object with 'questions' and 'histogram'")
        questions = payload.get("questions")
        if not isinstance(questions, dict) or not all(
            isinstance(s, list) and all(isinstance(x, str) for x in s) for s in questions.values()
        ):
            raise UserError(f"{path}: field 'questions' must map question ids to lists of skill names")
        histogram = payload.get("histogram") or {}
        if not isinstance(histogram, dict) or not all(isinstance(c, (int, float)) for c in histogram.values()):
            raise UserError(f"{path}: field 'histogram' must map skill names to numbers")
        profile = cls(questions, histogram, payload.get("meta") or {})
        if catalog is not None:
            profile.validate(catalog, where=str(path))
        return profile
