"""The paper's baselines (Sec. 4): MATH-Train, MATH-Augment, MATH-Hard, Embed-Sel and Embed-Syn.

They share STAT-Sel's and STAT-Syn's machinery and differ only in which questions they take: all of
them, all of them with teacher answers, the hard ones, or the ones nearest to the difficult questions
by embedding similarity (no skills involved). Sizes match STAT's so the comparison is fair: 3 answers
per question and 9.5k QA pairs for MATH-Hard, MATH-Augment and Embed-Sel; Embed-Syn cut to 9.5k pairs
like STAT-Syn.

Departure: a teacher "rewrite" (MATH-Augment, and the extra answers of MATH-Hard / Embed-Sel /
STAT-Sel) is a new teacher solution from the ``solve`` prompt, kept only when its final answer equals
the gold one; the teacher is not shown the original solution to paraphrase.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

from stat_pl.building.base import BuildInputError, BuildInputs, BuiltDataset
from stat_pl.building.checks import check_pool, check_positive, check_profile, difficult_records
from stat_pl.building.embedding import EmbeddingModel, nearest_neighbours
from stat_pl.building.selection import AnswerSettings, Pick, cut_synthetic, expand, subsample, teacher_answers
from stat_pl.building.synthesis import ProposalTask, SynthesisSettings, synthesize
from stat_pl.errors import UserError
from stat_pl.records import ProblemRecord
from stat_pl.teacher.templates import PromptTemplates, format_examples

_ALL = "all"


@dataclass
class MathTrain:
    """MATH-Train: every pool question once, with its one solution (plain SFT on the training set)."""

    name: str = "math_train"

    def build(self, inputs: BuildInputs) -> BuiltDataset:
        check_pool(inputs, self.name)
        candidates = expand([Pick(r, _ALL, {}) for r in inputs.pool], {}, 1, self.name)
        rows, stats = subsample(candidates, {_ALL: 1.0}, None, 0, self.name)
        return BuiltDataset(self.name, rows, stats)


@dataclass
class MathHard:
    """MATH-Hard: the pool questions of the given levels (paper: 4 and 5), up to ``answers_per_question``
    answers each (the pool's solution, then verified teacher solutions when the run has a teacher;
    paper: 3), subsampled to ``target_size`` (paper: 9.5k, as STAT-Sel)."""

    name: str = "math_hard"
    levels: list[int] = field(default_factory=lambda: [4, 5])
    answers_per_question: int = 3
    target_size: int | None = 9500
    seed: int = 0
    answers: AnswerSettings = field(default_factory=AnswerSettings)
    templates: PromptTemplates = field(default_factory=PromptTemplates)

    def build(self, inputs: BuildInputs) -> BuiltDataset:
        check_positive(self.name, answers_per_question=self.answers_per_question, target_size=self.target_size)
        check_pool(inputs, self.name)
        hard = [r for r in inputs.pool if r.level in self.levels]
        if not hard:
            raise BuildInputError(
                f"{self.name}: no question of pool {inputs.pool_path} has field 'level' in {self.levels}"
            )
        extra: dict[str, list[str]] = {}
        rejected: Counter[str] = Counter()
        if self.answers_per_question > 1 and inputs.teacher is not None:
            extra, rejected = teacher_answers(
                hard, inputs.teacher, self.answers_per_question - 1, self.answers, self.templates
            )
        candidates = expand([Pick(r, _ALL, {}) for r in hard], extra, self.answers_per_question, self.name)
        rows, stats = subsample(candidates, {_ALL: 1.0}, self.target_size, self.seed, self.name)
        return BuiltDataset(self.name, rows, {**stats, "hard_questions": len(hard), "rejected": dict(rejected)})


@dataclass
class MathAugment:
    """MATH-Augment: every pool question with ``rewrites_per_solution`` teacher solutions (verified
    against the gold answer; paper: 3) as its answers, subsampled to ``target_size`` (paper: 9.5k).
    ``include_original`` also keeps the pool's own solution (not the paper's construction)."""

    name: str = "math_augment"
    rewrites_per_solution: int = 3
    target_size: int | None = 9500
    seed: int = 0
    include_original: bool = False
    answers: AnswerSettings = field(default_factory=AnswerSettings)
    templates: PromptTemplates = field(default_factory=PromptTemplates)

    def build(self, inputs: BuildInputs) -> BuiltDataset:
        check_positive(self.name, rewrites_per_solution=self.rewrites_per_solution, target_size=self.target_size)
        check_pool(inputs, self.name)
        teacher = inputs.require_teacher(self.name, "it writes the rewrites")
        extra, rejected = teacher_answers(
            inputs.pool, teacher, self.rewrites_per_solution, self.answers, self.templates
        )
        pool = inputs.pool if self.include_original else [dataclasses.replace(r, solutions=()) for r in inputs.pool]
        picks = [Pick(r, _ALL, {}) for r in pool]
        candidates = expand(picks, extra, int(self.include_original) + self.rewrites_per_solution, self.name)
        rows, stats = subsample(candidates, {_ALL: 1.0}, self.target_size, self.seed, self.name)
        return BuiltDataset(self.name, rows, {**stats, "rejected": dict(rejected)})


@dataclass
class EmbedSel:
    """Embed-Sel: for each difficult question, its ``neighbours`` nearest pool questions by embedding
    similarity, up to ``answers_per_question`` answers each, subsampled to ``target_size`` with an
    equal share per difficult question. Needs the difficult questions' text (``questions:``).
    ``embedding_model`` (as Embed-Syn's) is all-MiniLM-L6-v2 by default, offline and on CPU; the
    paper's gte-Qwen2-7B-instruct and the settings it needs are in
    ``configs/paper/build_baselines_llama32_3b.yaml`` (:mod:`stat_pl.building.embedding`)."""

    name: str = "embed_sel"
    neighbours: int = 5
    answers_per_question: int = 3
    target_size: int | None = 9500
    seed: int = 0
    embedding_model: EmbeddingModel = field(default_factory=EmbeddingModel)
    answers: AnswerSettings = field(default_factory=AnswerSettings)
    templates: PromptTemplates = field(default_factory=PromptTemplates)

    def build(self, inputs: BuildInputs) -> BuiltDataset:
        check_positive(
            self.name,
            neighbours=self.neighbours,
            answers_per_question=self.answers_per_question,
            target_size=self.target_size,
        )
        picks = [
            Pick(record, question.id, {"difficult_question": question.id, "similarity": similarity})
            for question, near in neighbours_of_difficult(inputs, self.embedding_model, self.neighbours, self.name)
            for record, similarity in near
        ]
        extra: dict[str, list[str]] = {}
        rejected: Counter[str] = Counter()
        if self.answers_per_question > 1 and inputs.teacher is not None:
            extra, rejected = teacher_answers(
                [p.record for p in picks], inputs.teacher, self.answers_per_question - 1, self.answers, self.templates
            )
        candidates = expand(picks, extra, self.answers_per_question, self.name)
        shares = {group: 1.0 for group in candidates}
        rows, stats = subsample(candidates, shares, self.target_size, self.seed, self.name)
        return BuiltDataset(self.name, rows, {**stats, "picked_questions": len(picks), "rejected": dict(rejected)})


@dataclass
class EmbedSyn:
    """Embed-Syn: for each difficult question, its ``neighbours`` nearest pool questions (paper: 5) and
    ``questions_per_question`` new questions (paper: 5), each written from a group of
    ``examples_per_prompt`` of the neighbours (paper: 3), with STAT-Syn's contamination guard and
    consistency filter; the QA pairs are cut to ``target_size`` (paper: 9.5k) with an equal share per
    difficult question. New question ``i`` is shown neighbours ``i, i+1, ...`` (cyclically), so every
    neighbour is used equally often. The prompt is STAT-Syn's with the subject in place of a skill, so
    the only difference from STAT-Syn is how the examples were chosen; rows carry the examples' skill
    labels."""

    name: str = "embed_syn"
    neighbours: int = 5
    examples_per_prompt: int = 3
    questions_per_question: int = 5
    target_size: int | None = 9500
    seed: int = 0
    embedding_model: EmbeddingModel = field(default_factory=EmbeddingModel)
    synthesis: SynthesisSettings = field(default_factory=SynthesisSettings)
    templates: PromptTemplates = field(default_factory=PromptTemplates)

    def build(self, inputs: BuildInputs) -> BuiltDataset:
        check_positive(
            self.name,
            neighbours=self.neighbours,
            examples_per_prompt=self.examples_per_prompt,
            questions_per_question=self.questions_per_question,
            target_size=self.target_size,
        )
        if self.examples_per_prompt > self.neighbours:
            raise UserError(
                f"{self.name}: examples_per_prompt={self.examples_per_prompt} is more than neighbours={self.neighbours}"
            )
        teacher = inputs.require_teacher(self.name, "it writes and solves the new questions")
        tasks = [
            self._task(question, [record for record, _ in near], i)
            for question, near in neighbours_of_difficult(inputs, self.embedding_model, self.neighbours, self.name)
            for i in range(self.questions_per_question)
        ]
        accepted, stats = synthesize(tasks, teacher, inputs.guard, self.synthesis, self.templates, self.name)
        rows, cut_stats = cut_synthetic(accepted, "difficult_question", None, self.target_size, self.seed, self.name)
        return BuiltDataset(self.name, rows, {"prompts": len(tasks), **stats, **cut_stats})

    def _task(self, question: ProblemRecord, near: list[ProblemRecord], index: int) -> ProposalTask:
        """The prompt of new question ``index``: the group of neighbours starting at ``index``, cyclically."""
        examples = [near[(index + j) % len(near)] for j in range(min(self.examples_per_prompt, len(near)))]
        subject = (question.subject or examples[0].subject).replace("_", " ")
        messages = self.templates.render(
            "propose_question",
            skill=subject,
            subject=subject,
            examples=format_examples([f"{e.problem.strip()}\n\nSolution:\n{e.solutions[0].strip()}" for e in examples]),
        )
        skills = tuple(dict.fromkeys(s for e in examples for s in e.skills))
        return ProposalTask(
            tuple(messages),
            1,
            question.subject,
            skills,
            {"difficult_question": question.id, "example_ids": [e.id for e in examples]},
        )


def neighbours_of_difficult(
    inputs: BuildInputs, model: EmbeddingModel, k: int, builder: str
) -> list[tuple[ProblemRecord, list[tuple[ProblemRecord, float]]]]:
    """Each difficult question with its ``k`` nearest pool questions and their cosine similarities."""
    profile = inputs.require_profile(builder)
    check_profile(profile, inputs.profile_path, builder)
    check_pool(inputs, builder)
    difficult = difficult_records(profile, inputs, builder)
    pool_vectors = model.encode([r.problem for r in inputs.pool])
    query_vectors = model.encode([q.problem for q in difficult], query=True)
    order, similarity = nearest_neighbours(query_vectors, pool_vectors, k)
    result: list[tuple[ProblemRecord, list[tuple[ProblemRecord, float]]]] = []
    for i, question in enumerate(difficult):
        near = [(inputs.pool[j], round(float(s), 4)) for j, s in zip(order[i], similarity[i], strict=True)]
        result.append((question, near))
    return result
