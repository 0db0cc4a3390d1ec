"""The Missing-Skill-Profile (DESIGN.md, Stage 2) and its use as STAT-Sel sampling weights.

A profile maps each difficult question to the skills the student is missing on it; its histogram
(skill -> count) is what targets training. Across re-profiling rounds the histogram can be an
exponential moving average, so it holds fractional counts. A profile made from a round also records
how many questions of each skill were asked (``asked``), so a skill's failure *rate* can target
training instead of its failure *count* (:meth:`MissingSkillProfile.skill_mix`, ``weighting: rate``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stat_pl.errors import MissingFileError, UserError
from stat_pl.records import ProblemRecord
from stat_pl.skills import SkillCatalog, SkillMap, normalize_skill

#: How a profile's histogram becomes each skill's share of the targeted draws (:meth:`MissingSkillProfile.skill_mix`).
Weighting = Literal["proportional", "rate", "power"]
WEIGHTINGS: tuple[str, ...] = ("proportional", "rate", "power")


@dataclass
class MissingSkillProfile:
    """Question id -> missing skills, plus the skill histogram that drives sampling.

    ``histogram`` defaults to the counts over ``questions``; after :meth:`ema` it is the smoothed
    histogram and no longer a plain count. ``meta`` records how the profile was made (round, epoch,
    detector, accuracy ...) and is written to JSON as is. ``asked`` is skill -> how many of the
    questions the student was asked have that skill (see :meth:`from_round`); None when the profile
    does not know (made by hand, or written before it was recorded), which only ``weighting: rate``
    needs.
    """

    questions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    histogram: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    asked: dict[str, float] | None = None

    def __post_init__(self) -> None:
        self.questions = {
            qid: tuple(dict.fromkeys(normalize_skill(s) for s in skills)) for qid, skills in self.questions.items()
        }
        if not self.histogram:
            self.histogram = dict(Counter(s for skills in self.questions.values() for s in skills))
        self.histogram = {normalize_skill(s): float(c) for s, c in self.histogram.items() if c > 0}
        if self.asked is not None:
            self.asked = {normalize_skill(s): float(c) for s, c in self.asked.items() if c > 0}

    @classmethod
    def from_questions(cls, questions: Mapping[str, Sequence[str]], **meta: Any) -> MissingSkillProfile:
        return cls(questions={q: tuple(s) for q, s in questions.items()}, meta=dict(meta))

    @classmethod
    def from_round(
        cls, asked: Sequence[ProblemRecord], questions: Mapping[str, Sequence[str]], **meta: Any
    ) -> MissingSkillProfile:
        """The profile of one round: ``questions`` maps each difficult question to its missing skills, and
        ``asked`` are all the questions the student answered in the round (difficult or not).

        ``asked[s]`` counts the asked questions that have skill ``s``: labelled with it, or blamed on it
        (a teacher may name a skill the question is not labelled with). So every question counted in the
        histogram is counted in ``asked`` too, and a skill's failure rate ``histogram[s] / asked[s]`` is
        in [0, 1].
        """
        missing = set(questions) - {r.id for r in asked}
        if missing:
            raise ValueError(f"from_round: difficult questions {sorted(missing)[:3]} are not among the asked questions")
        blamed = {q: {normalize_skill(s) for s in skills} for q, skills in questions.items()}
        counts = Counter(s for r in asked for s in {normalize_skill(x) for x in r.skills} | blamed.get(r.id, set()))
        return cls(questions={q: tuple(s) for q, s in questions.items()}, meta=dict(meta), asked=dict(counts))

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
        """Union of questions (``other`` wins on the same id), the sum of both histograms and of both
        ``asked`` counts (None unless both profiles record them)."""
        counts = Counter(self.histogram)
        counts.update(other.histogram)
        asked = None if self.asked is None or other.asked is None else dict(Counter(self.asked) + Counter(other.asked))
        meta = {**self.meta, **other.meta}
        return MissingSkillProfile({**self.questions, **other.questions}, dict(counts), meta, asked)

    def ema(self, other: MissingSkillProfile, alpha: float) -> MissingSkillProfile:
        """Exponential moving average toward ``other``: ``alpha * new + (1 - alpha) * old`` per skill.

        ``other`` is the newer round; its questions replace this profile's. ``alpha = 1`` keeps only
        the new round, ``alpha = 0`` never moves. ``asked`` is averaged the same way (None unless both
        profiles record it), so ``weighting: rate`` reads a ratio of two averages over the same rounds.
        """
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"ema alpha must be in [0, 1], got {alpha}")
        histogram = _ema(self.histogram, other.histogram, alpha)
        asked = None if self.asked is None or other.asked is None else _ema(self.asked, other.asked, alpha)
        profile = MissingSkillProfile(dict(other.questions), histogram, {**self.meta, **other.meta}, asked)
        if not profile.histogram:  # both empty: keep an explicitly empty histogram, not a recount
            profile.histogram = {}
        return profile

    # ---- STAT-Sel weights ----------------------------------------------------------------------
    def skill_mix(
        self,
        records: Sequence[ProblemRecord],
        skill_map: SkillMap | None = None,
        weighting: Weighting = "proportional",
        power: float = 2.0,
    ) -> dict[str, float]:
        """Each missing skill's share of the targeted draws from ``records`` (sums to 1; empty when nothing
        missing is linked to a record).

        Only skills of the histogram linked to at least one record count; the rest are dropped and the
        shares renormalised. ``weighting`` says how the histogram becomes shares:

        * ``proportional`` (the paper, Algorithm 1): ``histogram[s]``, the number of difficult questions
          blamed on ``s``. It grows with how many validation questions have ``s``, not only with how weak
          the student is at it;
        * ``rate``: ``histogram[s] / asked[s]``, the share of the questions with ``s`` that the student
          failed (needs ``asked``: a profile from :meth:`from_round`);
        * ``power``: ``histogram[s] ** power`` (``power > 1`` sharpens toward the most missed skills,
          ``power < 1`` flattens; 1 is ``proportional``).
        """
        check_weighting(weighting, power)
        skill_map = skill_map or SkillMap.from_records(records)
        ids = {r.id for r in records}
        linked = [s for s in self.histogram if any(p in ids for p in skill_map.problems_with(s))]
        if weighting == "rate":
            scores = {s: self.histogram[s] / self._asked(s) for s in linked}
        elif weighting == "power":
            scores = {s: self.histogram[s] ** power for s in linked}
        else:
            scores = {s: self.histogram[s] for s in linked}
        total = sum(scores.values())
        return {s: v / total for s, v in scores.items()} if total else {}

    def _asked(self, skill: str) -> float:
        """How many asked questions have ``skill``; an error naming the fix when the profile does not know."""
        if self.asked is None:
            raise UserError(
                "weighting: rate divides each skill's failures by the questions asked with it, but this profile "
                "records no 'asked' counts (a hand-made profile, or one written before they were recorded); make "
                "it with the profile stage or the SkillReprofiler, or set weighting: proportional"
            )
        asked = self.asked.get(skill, 0.0)
        if asked <= 0:
            raise UserError(
                f"weighting: rate: skill {skill!r} has {self.histogram[skill]:g} failures but no question asked with "
                "it in the profile's 'asked' counts; fix the profile's 'asked' field or set weighting: proportional"
            )
        return asked

    def to_weights(
        self,
        records: Sequence[ProblemRecord],
        skill_map: SkillMap | None = None,
        floor: float = 0.05,
        weighting: Weighting = "proportional",
        power: float = 2.0,
    ) -> list[float]:
        """A sampling weight per training record so each skill's share of the data follows the profile.

        STAT-Sel (paper Algorithm 1) draws training questions per missing skill, so a skill's share of
        the selected data is proportional to its count in the profile. Here skill ``s`` with share
        ``p_s`` (:meth:`skill_mix`; ``weighting`` and ``power`` are its) spreads ``p_s`` evenly over the
        ``N_s`` records linked to it (a record with several skills collects from each). ``floor`` mixes
        in the uniform distribution, ``w = (1 - floor) * targeted + floor * uniform``, so no record's
        weight is exactly zero unless ``floor=0``; an empty profile (nothing missing) gives uniform
        weights. The weights sum to 1.
        """
        check_floor(floor)
        if not records:
            raise ValueError("to_weights: the training pool is empty")
        skill_map = skill_map or SkillMap.from_records(records)
        mix = self.skill_mix(records, skill_map, weighting, power)
        uniform = 1.0 / len(records)
        if not mix:
            return [uniform] * len(records)
        index = {r.id: i for i, r in enumerate(records)}
        targeted = [0.0] * len(records)
        for skill, share in mix.items():
            linked = [index[p] for p in skill_map.problems_with(skill) if p in index]
            for i in linked:
                targeted[i] += share / len(linked)
        return [(1 - floor) * t + floor * uniform for t in targeted]

    # ---- files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (histogram largest first); ``MissingSkillProfile(**d)`` rebuilds it."""
        data: dict[str, Any] = {
            "histogram": dict(self.top_k(len(self.histogram))),
            "questions": {q: list(s) for q, s in self.questions.items()},
            "meta": self.meta,
        }
        if self.asked is not None:
            data["asked"] = dict(sorted(self.asked.items()))
        return data

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
        asked = payload.get("asked")
        if asked is not None and (
            not isinstance(asked, dict) or not all(isinstance(c, (int, float)) for c in asked.values())
        ):
            raise UserError(f"{path}: field 'asked' must map skill names to numbers of questions asked")
        profile = cls(questions, histogram, payload.get("meta") or {}, asked)
        if catalog is not None:
            profile.validate(catalog, where=str(path))
        return profile


def check_weighting(weighting: str, power: float) -> None:
    """``weighting`` is one of :data:`WEIGHTINGS` and ``power`` (used by ``power``) is positive."""
    if weighting not in WEIGHTINGS:
        raise UserError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    if not power > 0:
        raise UserError(f"weight_power must be positive, got {power}")


def check_floor(floor: float) -> None:
    """The uniform share mixed into profile weights is a fraction."""
    if not 0.0 <= floor <= 1.0:
        raise UserError(f"weight_floor must be in [0, 1], got {floor}")


def _ema(old: Mapping[str, float], new: Mapping[str, float], alpha: float) -> dict[str, float]:
    return {s: alpha * new.get(s, 0.0) + (1 - alpha) * old.get(s, 0.0) for s in set(old) | set(new)}
