"""STAT-Syn (paper Sec. 3.3): new questions written by the teacher for each missing skill.

For each (difficult question, missing skill) pair of the profile, the teacher sees
``examples_per_prompt`` training questions linked to the skill, with their solutions (paper: 3), and
writes ``questions_per_pair`` new questions that emphasise the skill (paper: 2). The questions then
go through :func:`stat_pl.building.synthesis.synthesize`: contamination guard, three teacher
solutions, majority vote with at least two agreeing, only the agreeing solutions kept. The QA pairs
(one per kept solution) are cut to ``target_size`` (paper: 9.5k, as STAT-Sel) with each skill's share
equal to its share of the profile.

:meth:`StatSyn.synthesize_for_profile` is the same method, with the same settings, for the live loop:
the SkillReprofiler callback calls it after a profiling round and hands the rows to
``SFTDataModule.add_synthetic``.

Teachers: the run's ``teacher`` solves the new questions; ``question_teacher``, when set, writes them
(the paper writes STAT-Syn's questions with GPT-4o), else the run's teacher writes them too. The
question-writing prompt asks for the paper's steps (``<reason>``, ``<draft>``, final ``<question>``);
only the final question is kept (:func:`stat_pl.building.synthesis.final_question`).
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stat_pl.building.base import BuildInputs, BuiltDataset, BuiltRow
from stat_pl.building.checks import check_linked, check_pool, check_positive, check_profile
from stat_pl.building.contamination import ContaminationGuard
from stat_pl.building.selection import cut_synthetic, draw_per_missing_skill
from stat_pl.building.synthesis import ProposalTask, SynthesisSettings, synthesize
from stat_pl.missing_skill_profile import MissingSkillProfile
from stat_pl.records import ProblemRecord
from stat_pl.teacher.base import Teacher
from stat_pl.teacher.templates import PromptTemplates, format_examples

log = logging.getLogger(__name__)

#: Request seeds of live round ``r`` start at ``r * ROUND_SEED_STRIDE``: a later round asks for new samples.
ROUND_SEED_STRIDE = 100_000


@dataclass
class StatSyn:
    """STAT-Syn as a builder (YAML: ``class_path: stat_pl.building.StatSyn``); needs a teacher.

    Args:
        name: the dataset's name: its folder, and each row's ``source`` and id prefix.
        questions_per_pair: new questions asked for per (difficult question, missing skill).
        examples_per_prompt: training questions (with solutions) shown in each prompt.
        seed: seeds the choice of examples and the cut.
        target_size: QA pairs kept (paper: 9500; None: every accepted solution, one row per question).
        synthesis: sampling and the consistency filter (solutions per question, votes).
        templates: the teacher's prompt files (``propose_question`` and ``solve`` are used).
        question_teacher: the teacher that writes the new questions (class_path / init_args, as the
            run's ``teacher``); None: the run's teacher writes and solves. Its calls are counted in the
            dataset's ``stats.question_teacher`` (the manifest's ``teacher`` counts the run's teacher).
    """

    name: str = "stat_syn"
    questions_per_pair: int = 2
    examples_per_prompt: int = 3
    seed: int = 0
    target_size: int | None = 9500
    synthesis: SynthesisSettings = field(default_factory=SynthesisSettings)
    templates: PromptTemplates = field(default_factory=PromptTemplates)
    question_teacher: Teacher | None = None

    def build(self, inputs: BuildInputs) -> BuiltDataset:
        """The accepted new questions for every pair of ``inputs.profile``."""
        check_positive(
            self.name,
            questions_per_pair=self.questions_per_pair,
            examples_per_prompt=self.examples_per_prompt,
            target_size=self.target_size,
        )
        profile = inputs.require_profile(self.name)
        check_profile(profile, inputs.profile_path, self.name)
        check_pool(inputs, self.name, need_skills=True)
        check_linked(profile, inputs, self.name)
        teacher = inputs.require_teacher(self.name, "it writes and solves the new questions")
        tasks, stats = stat_syn_tasks(
            profile, inputs, self.templates, self.examples_per_prompt, self.questions_per_pair, self.seed
        )
        before = self.question_teacher.stats() if self.question_teacher is not None else {}
        accepted, synthesis_stats = synthesize(
            tasks, teacher, inputs.guard, self.synthesis, self.templates, self.name, self.question_teacher
        )
        if self.question_teacher is not None:
            after = self.question_teacher.stats()
            stats["question_teacher"] = {k: v - before.get(k, 0) for k, v in after.items()}
        rows, cut_stats = cut_synthetic(
            accepted, "target_skill", profile.histogram, self.target_size, self.seed, self.name
        )
        stats.update(synthesis_stats, **cut_stats)
        return BuiltDataset(self.name, rows, stats)

    def synthesize_for_profile(
        self,
        profile: MissingSkillProfile,
        teacher: Teacher,
        pool: Sequence[ProblemRecord],
        max_new: int,
        guard: ContaminationGuard | None = None,
        round_index: int = 0,
    ) -> list[BuiltRow]:
        """Up to ``max_new`` new consistent questions targeted at ``profile``: STAT-Syn for the live loop.

        ``teacher`` solves the new questions and, unless ``question_teacher`` is set, writes them.

        Pairs are drawn uniformly (seeded by ``seed`` and ``round_index``), so the skills' shares of the
        prompts follow the profile; ``ceil(max_new / questions_per_pair)`` pairs are asked, and questions
        lost to the filters are not replaced, so fewer than ``max_new`` may come back. Pass the same
        ``guard`` every round (built once from the training pool, the test sets and the synthetic rows
        already in the run) and increase ``round_index``: a later round then asks for new samples and a
        question already accepted is rejected as ``duplicate_synthetic``. Pool questions need skills and
        solutions; raises :class:`~stat_pl.building.base.BuildInputError` otherwise.
        """
        check_positive(self.name, max_new=max_new, questions_per_pair=self.questions_per_pair)
        inputs = BuildInputs(
            pool=list(pool),
            pool_path="<pool given to synthesize_for_profile>",
            profile=profile,
            profile_path="<profile given to synthesize_for_profile>",
        )
        check_pool(inputs, self.name, need_skills=True)
        tasks, _ = stat_syn_tasks(
            profile, inputs, self.templates, self.examples_per_prompt, self.questions_per_pair, self.seed, round_index
        )
        wanted = math.ceil(max_new / self.questions_per_pair)
        if len(tasks) > wanted:
            tasks = random.Random(f"{self.seed}/round{round_index}").sample(tasks, wanted)
        rows, stats = synthesize(
            tasks, teacher, guard, self.synthesis, self.templates, self.name, self.question_teacher
        )
        log.info(
            "%s round %d: %d of %d new questions accepted; rejected %s",
            self.name,
            round_index,
            stats["accepted"],
            stats["proposed"],
            stats["rejected"],
        )
        return rows[:max_new]


def stat_syn_tasks(
    profile: MissingSkillProfile,
    inputs: BuildInputs,
    templates: PromptTemplates,
    examples_per_prompt: int,
    questions_per_pair: int,
    seed: int,
    round_index: int = 0,
) -> tuple[list[ProposalTask], dict[str, Any]]:
    """One question-writing task per (difficult question, missing skill) linked to the pool.

    The examples of a pair are STAT-Sel's draw (:func:`~stat_pl.building.selection.draw_per_missing_skill`,
    Algorithm 1, with k = ``examples_per_prompt``), seeded by ``(seed, question, skill)``, so a rerun
    sends the same prompts (and is answered from the cache); live round ``r`` sends them with request
    seeds from ``r * ROUND_SEED_STRIDE``, so every round asks for new samples.
    """
    tasks = []
    draws, unlinked = draw_per_missing_skill(profile, inputs.skill_map, examples_per_prompt, seed)
    for draw in draws:
        skill = draw.skill
        examples = [inputs.pool_by_id[p] for p in draw.drawn_ids]
        subject = Counter(e.subject for e in examples).most_common(1)[0][0]
        messages = tuple(
            templates.render(
                "propose_question",
                skill=skill.replace("_", " "),
                subject=subject.replace("_", " "),
                examples=format_examples(
                    [f"{e.problem.strip()}\n\nSolution:\n{e.solutions[0].strip()}" for e in examples]
                ),
            )
        )
        provenance = {
            "difficult_question": draw.question_id,
            "target_skill": skill,
            "example_ids": [e.id for e in examples],
        }
        tasks.append(
            ProposalTask(
                messages, questions_per_pair, subject, (skill,), provenance, seed=round_index * ROUND_SEED_STRIDE
            )
        )
    if unlinked:
        log.warning(
            "STAT-Syn: %d missing skill(s) label no pool question and get no prompt: %s",
            len(unlinked),
            sorted(unlinked),
        )
    return tasks, {
        "pairs": len(tasks) + sum(unlinked.values()),
        "prompts": len(tasks),
        "skills_without_pool_questions": dict(unlinked),
    }
