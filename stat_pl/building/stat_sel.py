"""STAT-Sel (paper Algorithm 1 and Sec. B.2): training questions drawn per missing skill.

For each difficult question of the profile and each skill it is missing, ``questions_per_skill``
training questions linked to that skill are drawn (paper: 5 for data building; Algorithm 1 says 3),
each gets up to ``answers_per_question`` answers (the pool's solution plus verified teacher
solutions when a teacher is given; paper: 3), and the QA pairs are subsampled to ``target_size``
(paper: 9.5k) with each skill's share equal to its share of the profile's histogram.

The draw is :func:`stat_pl.building.selection.draw_per_missing_skill` (Algorithm 1), the same one
STAT-Syn uses to pick its example questions.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from stat_pl.building.base import BuildInputs, BuiltDataset
from stat_pl.building.checks import check_linked, check_pool, check_positive, check_profile
from stat_pl.building.selection import AnswerSettings, Pick, draw_per_missing_skill, expand, subsample, teacher_answers
from stat_pl.missing_skill_profile import MissingSkillProfile
from stat_pl.teacher.templates import PromptTemplates

log = logging.getLogger(__name__)


@dataclass
class StatSel:
    """STAT-Sel as a builder (YAML: ``class_path: stat_pl.building.StatSel``).

    Args:
        name: the dataset's name: its folder, and each row's ``source`` and id prefix.
        questions_per_skill: training questions drawn per (difficult question, missing skill); k.
        answers_per_question: answers per drawn question, the pool's solution included; teacher
            solutions are asked for only when the run has a teacher (else one answer per question).
        target_size: QA pairs in the dataset (None: keep every candidate).
        seed: seeds the draws and the subsample.
        answers: how teacher solutions are sampled (temperature, max_tokens).
        templates: the teacher's prompt files (the ``solve`` prompt is used).
    """

    name: str = "stat_sel"
    questions_per_skill: int = 5
    answers_per_question: int = 3
    target_size: int | None = 9500
    seed: int = 0
    answers: AnswerSettings = field(default_factory=AnswerSettings)
    templates: PromptTemplates = field(default_factory=PromptTemplates)

    def build(self, inputs: BuildInputs) -> BuiltDataset:
        """The STAT-Sel rows for ``inputs.profile`` drawn from ``inputs.pool``."""
        check_positive(
            self.name,
            questions_per_skill=self.questions_per_skill,
            answers_per_question=self.answers_per_question,
            target_size=self.target_size,
        )
        profile = inputs.require_profile(self.name)
        check_profile(profile, inputs.profile_path, self.name)
        check_pool(inputs, self.name, need_skills=True)
        check_linked(profile, inputs, self.name)
        picks, stats = self.picks(profile, inputs)
        extra, rejected = self._teacher_answers(picks, inputs)
        candidates = expand(picks, extra, self.answers_per_question, self.name)
        rows, subsample_stats = subsample(candidates, profile.histogram, self.target_size, self.seed, self.name)
        stats.update(
            subsample_stats,
            rejected=dict(rejected),
            teacher_answers=inputs.teacher is not None and self.answers_per_question > 1,
        )
        return BuiltDataset(self.name, rows, stats)

    def picks(self, profile: MissingSkillProfile, inputs: BuildInputs) -> tuple[list[Pick], dict[str, Any]]:
        """The drawn pool questions, one :class:`Pick` per (pair, question), and the draw counters."""
        draws, unlinked = draw_per_missing_skill(profile, inputs.skill_map, self.questions_per_skill, self.seed)
        picks = [
            Pick(inputs.pool_by_id[pid], d.skill, {"difficult_question": d.question_id, "target_skill": d.skill})
            for d in draws
            for pid in d.drawn_ids
        ]
        few_questions = {d.skill: len(d.drawn_ids) for d in draws if len(d.drawn_ids) < self.questions_per_skill}
        if unlinked:
            log.warning(
                "%s: %d missing skill(s) label no pool question and get no data: %s",
                self.name,
                len(unlinked),
                sorted(unlinked),
            )
        stats = {
            "pairs": sum(len(s) for s in profile.questions.values()),
            "picked_questions": len(picks),
            "distinct_questions": len({p.record.id for p in picks}),
            "skills_without_pool_questions": dict(unlinked),
            "skills_with_fewer_questions": few_questions,
        }
        return picks, stats

    def _teacher_answers(self, picks: list[Pick], inputs: BuildInputs) -> tuple[dict[str, list[str]], Counter[str]]:
        if self.answers_per_question == 1:
            return {}, Counter()
        if inputs.teacher is None:
            log.info(
                "%s: no teacher, so one answer per question (the pool's solution), not %d",
                self.name,
                self.answers_per_question,
            )
            return {}, Counter()
        return teacher_answers(
            [p.record for p in picks], inputs.teacher, self.answers_per_question - 1, self.answers, self.templates
        )
