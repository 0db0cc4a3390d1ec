"""Selected data with several answers per question, cut to a target size with fixed group shares.

STAT-Sel (paper Algorithm 1, Sec. B.2), Embed-Sel and MATH-Augment all pick training questions, give
each up to ``answers_per_question`` answers (the pool's solution, then teacher solutions whose final
answer is equivalent to the gold one) and subsample the QA pairs to a fixed size. The subsample keeps
each group's share (a skill's share of the profile for STAT-Sel; one share per difficult question for
Embed-Sel): quotas are apportioned by largest remainder, so every group is within one row of its
exact share; a group that has fewer rows than its quota gives all it has, and its deficit is spread
over the others in proportion to their shares, so the target is met exactly whenever the candidates
allow, and the shortfall is reported when they do not.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from stat_pl.building.base import BuiltRow
from stat_pl.building.checks import distinct_ids
from stat_pl.errors import UserError
from stat_pl.grading import grade
from stat_pl.missing_skill_profile import MissingSkillProfile
from stat_pl.records import ProblemRecord
from stat_pl.skills import SkillMap
from stat_pl.teacher.base import Teacher, TeacherFailure, TeacherRequest
from stat_pl.teacher.templates import PromptTemplates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pick:
    """A pool question chosen for ``group`` (a skill, a difficult question), with why it was chosen."""

    record: ProblemRecord
    group: str
    provenance: Mapping[str, Any]


@dataclass(frozen=True)
class SkillDraw:
    """The training questions drawn for one (difficult question, missing skill) pair of a profile."""

    question_id: str
    skill: str
    drawn_ids: tuple[str, ...]


def draw_per_missing_skill(
    profile: MissingSkillProfile, skill_map: SkillMap, k: int, seed: int
) -> tuple[list[SkillDraw], Counter[str]]:
    """The paper's Algorithm 1 (STAT-Sel) draw: for each difficult question q of ``profile`` and each
    skill s it is missing, ``k`` training questions linked to s in ``skill_map``, without replacement
    within the pair (all of them when fewer than ``k`` are linked).

    Pairs are independent: pair (q, s) draws with a generator seeded by ``(seed, q, s)``, so a rerun
    draws the same questions and one pair's draw does not depend on the others. A question linked to a
    frequent missing skill can be drawn by several pairs; that repetition is what makes a skill's share
    of the data follow its count in the profile. STAT-Sel keeps the drawn questions (paper: k = 5 for
    data building, Algorithm 1 writes 3); STAT-Syn shows them to the teacher as examples (paper: 3).

    Returns the draws in (question id, profile skill order) order, and skill -> number of pairs whose
    skill labels no question of ``skill_map`` (those pairs draw nothing and are left out).
    """
    if k < 1:
        raise UserError(f"k (questions drawn per missing skill) must be >= 1, got {k}")
    draws: list[SkillDraw] = []
    unlinked: Counter[str] = Counter()
    for qid in sorted(profile.questions):
        for skill in profile.questions[qid]:
            linked = skill_map.problems_with(skill)
            if not linked:
                unlinked[skill] += 1
                continue
            rng = random.Random(f"{seed}/{qid}/{skill}")
            draws.append(SkillDraw(qid, skill, tuple(rng.sample(linked, min(k, len(linked))))))
    return draws, unlinked


@dataclass(frozen=True)
class AnswerSettings:
    """How pool questions get extra answers from the teacher.

    The teacher solves the question with the ``solve`` prompt, several samples at ``temperature`` (so
    the solutions differ); a solution is kept only when its final answer is equivalent to the gold
    answer, so no wrong answer enters the data.
    """

    temperature: float = 0.7
    max_tokens: int = 2048


def teacher_answers(
    records: Sequence[ProblemRecord], teacher: Teacher, count: int, settings: AnswerSettings, templates: PromptTemplates
) -> tuple[dict[str, list[str]], Counter[str]]:
    """Up to ``count`` verified teacher solutions per distinct question (one request each, ``n=count``).

    Returns question id -> kept solutions, and the rejections by reason: ``teacher_failure`` (the
    request failed; counts its ``count`` answers), ``teacher_answer_wrong`` (final answer not the gold
    one), ``teacher_answer_duplicate`` (the same text twice, or the pool's own solution).
    """
    unique = distinct_ids(records)
    requests = [
        TeacherRequest(
            tuple(templates.render("solve", question=r.problem)),
            n=count,
            temperature=settings.temperature,
            max_tokens=settings.max_tokens,
        )
        for r in unique
    ]
    kept: dict[str, list[str]] = {}
    rejected: Counter[str] = Counter()
    for record, answer in zip(unique, teacher.complete_many(requests), strict=True):
        kept[record.id] = []
        if isinstance(answer, TeacherFailure):
            rejected["teacher_failure"] += count
            continue
        for text in answer:
            if text in record.solutions or text in kept[record.id]:
                rejected["teacher_answer_duplicate"] += 1
            elif grade(text, record.answer):
                kept[record.id].append(text)
            else:
                rejected["teacher_answer_wrong"] += 1
    return kept, rejected


def expand(
    picks: Sequence[Pick], extra: Mapping[str, Sequence[str]], answers_per_question: int, builder: str
) -> dict[str, list[BuiltRow]]:
    """Group -> candidate QA rows: each pick's pool solution, then its teacher answers, at most
    ``answers_per_question`` in all (ids are given later, after the subsample)."""
    groups: dict[str, list[BuiltRow]] = {}
    for pick in picks:
        answers = [(s, "pool") for s in pick.record.solutions[:1]]
        answers += [(s, "teacher_answer") for s in extra.get(pick.record.id, ())]
        for solution, origin in answers[:answers_per_question]:
            record = replace(pick.record, solutions=(solution,), source=builder)
            provenance = {"builder": builder, **pick.provenance, "origin": origin, "origin_id": pick.record.id}
            groups.setdefault(pick.group, []).append(BuiltRow(record, provenance))
    return groups


def allocate(shares: Mapping[str, float], available: Mapping[str, int], target: int) -> dict[str, int]:
    """Rows per group: ``target`` split by ``shares``, no group above ``available`` (water-filling).

    Groups that cannot fill their ideal quota take everything they have; the rest of the target is
    split again over the remaining groups by their shares. The final split is by largest remainder
    (ties by group name), so the quotas sum to ``min(target, sum(available))``.
    """
    quotas = {g: 0 for g in shares}
    open_groups = sorted(g for g, s in shares.items() if s > 0 and available.get(g, 0) > 0)
    left = target
    while open_groups and left > 0:
        total = sum(shares[g] for g in open_groups)
        ideal = {g: left * shares[g] / total for g in open_groups}
        full = [g for g in open_groups if ideal[g] >= available[g]]
        if not full:
            quotas.update(_largest_remainder(ideal, left))
            break
        for g in full:
            quotas[g] = available[g]
            left -= available[g]
        open_groups = [g for g in open_groups if g not in full]
    return quotas


def _largest_remainder(ideal: Mapping[str, float], total: int) -> dict[str, int]:
    floors = {g: math.floor(x) for g, x in ideal.items()}
    by_remainder = sorted(ideal, key=lambda g: (-(ideal[g] - floors[g]), g))
    for g in by_remainder[: total - sum(floors.values())]:
        floors[g] += 1
    return floors


def subsample(
    candidates: Mapping[str, Sequence[BuiltRow]],
    shares: Mapping[str, float],
    target: int | None,
    seed: int,
    builder: str,
) -> tuple[list[BuiltRow], dict[str, Any]]:
    """A seeded subsample of ``target`` rows (all rows when None) with the groups' ``shares``.

    Rows keep their candidate order within a group, groups come in name order. Returns the rows,
    numbered ``<builder>/000000``..., and the counters: ``target_size``,
    ``candidates``, ``rows``, ``shortfall`` (rows missing to the target), and ``short_groups``
    (group -> rows wanted at its exact share vs rows available) for groups that could not fill theirs.
    """
    available = {g: len(rows) for g, rows in candidates.items()}
    total = sum(available.values())
    quotas = dict(available) if target is None else allocate(shares, available, target)
    rng = random.Random(seed)
    chosen = [
        candidates[g][i]
        for g in sorted(candidates)
        for i in sorted(rng.sample(range(len(candidates[g])), quotas.get(g, 0)))
    ]
    rows = [BuiltRow(replace(r.record, id=f"{builder}/{i:06d}"), r.provenance) for i, r in enumerate(chosen)]
    stats: dict[str, Any] = {
        "target_size": target,
        "candidates": total,
        "rows": len(rows),
        "shortfall": 0,
        "short_groups": {},
    }
    if target is not None:
        share_total = sum(shares.values()) or 1.0
        wanted = {g: target * s / share_total for g, s in shares.items()}
        stats["shortfall"] = max(0, target - len(rows))
        stats["short_groups"] = {
            g: {"wanted": round(w, 2), "available": available.get(g, 0)}
            for g, w in sorted(wanted.items())
            if available.get(g, 0) < w
        }
        if stats["shortfall"]:
            log.warning(
                "%s: only %d candidate rows for a target of %d: %d short", builder, total, target, stats["shortfall"]
            )
    return rows, stats


def cut_synthetic(
    rows: Sequence[BuiltRow],
    group_of: str,
    shares: Mapping[str, float] | None,
    target: int | None,
    seed: int,
    builder: str,
) -> tuple[list[BuiltRow], dict[str, Any]]:
    """Accepted synthetic questions as QA pairs cut to ``target`` (paper: STAT-Syn and Embed-Syn at 9.5k).

    A synthetic row holds every agreeing solution of its question; here each solution becomes its own
    row (one QA pair, as STAT-Sel counts them), grouped by ``provenance[group_of]`` (the target skill,
    the difficult question) and subsampled with the groups' ``shares`` (None: equal shares). With
    ``target`` None the rows are returned as they are.
    """
    if target is None:
        return list(rows), {"target_size": None, "rows": len(rows), "shortfall": 0}
    groups: dict[str, list[BuiltRow]] = {}
    for row in rows:
        for solution in row.record.solutions:
            pair = BuiltRow(replace(row.record, solutions=(solution,)), {**row.provenance, "origin_id": row.record.id})
            groups.setdefault(str(row.provenance[group_of]), []).append(pair)
    return subsample(groups, shares if shares is not None else {g: 1.0 for g in groups}, target, seed, builder)
