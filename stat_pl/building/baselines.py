"""The paper's baselines (Sec. 4): MATH-Train, MATH-Augment, MATH-Hard, Embed-Sel and Embed-Syn.

They share STAT-Sel's and STAT-Syn's machinery and differ only in which questions they take: all of
them, all of them with teacher answers, the hard ones, or the ones nearest to the difficult questions
by embedding similarity (no skills involved). That is what makes the comparison with STAT fair.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from stat_pl.building.base import BuildInputError, BuildInputs, BuiltDataset
from stat_pl.building.checks import check_pool, check_positive, check_profile, difficult_records
from stat_pl.building.embedding import EmbeddingModel, nearest_neighbours
from stat_pl.building.selection import AnswerSettings, Pick, expand, subsample, teacher_answers
from stat_pl.building.synthesis import ProposalTask, SynthesisSettings, synthesize
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
    """MATH-Hard: the pool questions of the given levels (paper: 4 and 5), one solution each."""

    name: str = "math_hard"
    levels: list[int] = field(default_factory=lambda: [4, 5])

    def build(self, inputs: BuildInputs) -> BuiltDataset:
        check_pool(inputs, self.name)
        hard = [r for r in inputs.pool if r.level in self.levels]
        if not hard:
            raise BuildInputError(f"{self.name}: no question of pool {inputs.pool_path} has field 'level' in "
                                  f"{self.levels}")
        candidates = expand([Pick(r, _ALL, {}) for r in hard], {}, 1, self.name)
        rows, stats = subsample(candidates, {_ALL: 1.0}, None, 0, self.name)
        return BuiltDataset(self.name, rows, stats)


@dataclass
class MathAugment:
    """MATH-Augment: every pool question with its solution and ``rewrites_per_solution`` teacher
    solutions (verified against the gold answer; paper: 3), subsampled to ``target_size``."""

    name: str = "math_augment"
    rewrites_per_solution: int = 3
    target_size: int | None = 9500
    seed: int = 0
    answers: AnswerSettings = field(default_factory=AnswerSettings)
    templates: PromptTemplates = field(default_factory=PromptTemplates)

    def build(self, inputs: BuildInputs) -> BuiltDataset:
        check_positive(self.name, rewrites_per_solution=self.rewrites_per_solution, target_size=self.target_size)
        check_pool(inputs, self.name)
        teacher = inputs.require_teacher(self.name, "it writes the rewrites")
        extra, rejected = teacher_answers(inputs.pool, teacher, self.rewrites_per_solution, self.answers,
                                          self.templates)
        picks = [Pick(r, _ALL, {}) for r in inputs.pool]
        candidates = expand(picks, extra, 1 + self.rewrites_per_solution, self.name)
        rows, stats = subsample(candidates, {_ALL: 1.0}, self.target_size, self.seed, self.name)
        return BuiltDataset(self.name, rows, {**stats, "rejected": dict(rejected)})


@dataclass
class EmbedSel:
    """Embed-Sel: for each difficult question, its ``neighbours`` nearest pool questions by embedding
    similarity, up to ``answers_per_question`` answers each, subsampled to ``target_size`` with an
    equal share per difficult question. Needs the difficult questions' text (``questions:``)."""

    name: str = "embed_sel"
    neighbours: int = 5
    answers_per_question: int = 3
    target_size: int | None = 9500
    seed: int = 0
    embedding_model: EmbeddingModel = field(default_factory=EmbeddingModel)
    answers: AnswerSettings = field(default_factory=AnswerSettings)
    templates: PromptTemplates = field(default_factory=PromptTemplates)

    def build(self, inputs: BuildInputs) -> BuiltDataset:
        check_positive(self.name, neighbours=self.neighbours, answers_per_question=self.answers_per_question,
                       target_size=self.target_size)
        picks = [Pick(record, question.id, {"difficult_question": question.id, "similarity": similarity})
                 for question, near in neighbours_of_difficult(inputs, self.embedding_model, self.neighbours,
                                                                self.name)
                 for record, similarity in near]
        extra: dict[str, list[str]] = {}
        rejected: Counter[str] = Counter()
        if self.answers_per_question > 1 and inputs.teacher is not None:
            extra, rejected = teacher_answers([p.record for p in picks], inputs.teacher,
                                              self.answers_per_question - 1, self.answers, self.templates)
        candidates = expand(picks, extra, self.answers_per_question, self.name)
        shares = {group: 1.0 for group in candidates}
        rows, stats = subsample(candidates, shares, self.target_size, self.seed, self.name)
        return BuiltDataset(self.name, rows, {**stats, "picked_questions": len(picks), "rejected": dict(rejected)})


@dataclass
class EmbedSyn:
    """Embed-Syn: the teacher writes ``questions_per_question`` new questions from the
    ``examples_per_prompt`` pool questions nearest to each difficult question, with STAT-Syn's
    contamination guard and consistency filter. The prompt is STAT-Syn's with the subject in place of a
    skill, so the only difference from STAT-Syn is how the examples were chosen; rows carry the
    examples' skill labels."""

    name: str = "embed_syn"
    examples_per_prompt: int = 3
    questions_per_question: int = 2
    embedding_model: EmbeddingModel = field(default_factory=EmbeddingModel)
    synthesis: SynthesisSettings = field(default_factory=SynthesisSettings)
    templates: PromptTemplates = field(default_factory=PromptTemplates)

    def build(self, inputs: BuildInputs) -> BuiltDataset:
        check_positive(self.name, examples_per_prompt=self.examples_per_prompt,
                       questions_per_question=self.questions_per_question)
        teacher = inputs.require_teacher(self.name, "it writes and solves the new questions")
        tasks = [self._task(question, [record for record, _ in near])
                 for question, near in neighbours_of_difficult(inputs, self.embedding_model,
                                                                self.examples_per_prompt, self.name)]
        rows, stats = synthesize(tasks, teacher, inputs.guard, self.synthesis, self.templates, self.name)
        return BuiltDataset(self.name, rows, {"prompts": len(tasks), **stats})

    def _task(self, question: ProblemRecord, examples: list[ProblemRecord]) -> ProposalTask:
        subject = (question.subject or examples[0].subject).replace("_", " ")
        messages = self.templates.render(
            "propose_question", skill=subject, subject=subject,
            examples=format_examples([f"{e.problem.strip()}\n\nSolution:\n{e.solutions[0].strip()}"
                                      for e in examples]))
        skills = tuple(dict.fromkeys(s for e in examples for s in e.skills))
        return ProposalTask(tuple(messages), self.questions_per_question, question.subject, skills,
                            {"difficult_question": question.id, "example_ids": [e.id for e in examples]})


def neighbours_of_difficult(inputs: BuildInputs, model: EmbeddingModel, k: int,
                            builder: str) -> list[tuple[ProblemRecord, list[tuple[ProblemRecord, float]]]]:
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
