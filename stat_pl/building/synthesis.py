"""New questions from the teacher, kept only when the teacher answers them consistently.

Shared by STAT-Syn and Embed-Syn (paper Sec. 3.3): each :class:`ProposalTask` asks the teacher for
``n`` new questions; every new question passes the :class:`ContaminationGuard`; the teacher then
solves it ``solutions_per_question`` times (paper: 3), and the question is kept when its majority
final answer has at least ``min_votes`` votes (paper: 2), with only the solutions that agree with that
answer. Answers are compared by :func:`stat_pl.grading.majority_answer` (math-verify equivalence: ``0.5``
and ``\\frac12`` agree), never by string equality.

The question-writing prompt (``propose_question``) asks for the paper's steps, each in its tag: a
``<reason>`` about the skill and the examples, a ``<draft>``, then the final ``<question>``.
:func:`final_question` reads the last non-empty ``<question>``; the reason and the draft are never
trained on and are not kept in the rows (the full answers stay in the teacher's cache). An answer
without a ``<question>`` is rejected and counted (``no_question_tag``), never replaced by its draft.

The questions can come from a separate ``question_teacher`` (the paper writes STAT-Syn's questions
with GPT-4o); the solving requests always go to ``teacher``. Both rounds of calls go through
``complete_many`` (cached, retried, concurrent), so a rerun of the same build pays for nothing already
answered.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from stat_pl.building.base import BuiltRow
from stat_pl.building.contamination import ContaminationGuard
from stat_pl.errors import UserError
from stat_pl.grading import extract_answer, is_equivalent, majority_answer
from stat_pl.records import ProblemRecord
from stat_pl.teacher.base import Message, Teacher, TeacherFailure, TeacherRequest
from stat_pl.teacher.parsing import extract_tags
from stat_pl.teacher.templates import PromptTemplates


@dataclass(frozen=True)
class SynthesisSettings:
    """How new questions are asked for and checked.

    Args:
        solutions_per_question: teacher solutions per new question (paper: 3).
        min_votes: the least votes of the majority answer for a question to be kept (paper: 2).
        propose_temperature: sampling temperature of the question-writing requests (above 0 so that
            the ``n`` questions of one request differ).
        solve_temperature: sampling temperature of the solving requests (above 0 so that the votes are
            independent samples).
        max_tokens: the answer budget of each request.
    """

    solutions_per_question: int = 3
    min_votes: int = 2
    propose_temperature: float = 1.0
    solve_temperature: float = 0.7
    max_tokens: int = 2048

    def __post_init__(self) -> None:
        if not 1 <= self.min_votes <= self.solutions_per_question:
            raise UserError(
                f"min_votes must be in [1, solutions_per_question={self.solutions_per_question}], got {self.min_votes}"
            )


@dataclass(frozen=True)
class ProposalTask:
    """One question-writing request and what its questions are for.

    ``provenance`` (difficult question, target skill, example ids) is copied onto every kept row.
    ``seed`` is the request's sampling seed; tasks whose messages are identical (a skill with few
    linked questions shows every pair the same examples) are sent with ``seed``, ``seed + 1``, ...,
    so they are separate samples with separate cache entries, not one answer repeated.
    """

    messages: tuple[Message, ...]
    n: int
    subject: str
    skills: tuple[str, ...]
    provenance: Mapping[str, Any]
    seed: int = 0


@dataclass
class _Candidate:
    task: ProposalTask
    question: str
    solutions: list[str] = field(default_factory=list)


def synthesize(
    tasks: Sequence[ProposalTask],
    teacher: Teacher,
    guard: ContaminationGuard | None,
    settings: SynthesisSettings,
    templates: PromptTemplates,
    builder: str,
    question_teacher: Teacher | None = None,
) -> tuple[list[BuiltRow], dict[str, Any]]:
    """Rows for the new questions that pass the guard and the consistency vote, and the counters.

    ``question_teacher`` answers the question-writing requests (None: ``teacher`` does); ``teacher``
    solves the new questions. Counters: ``proposed`` (questions asked for), ``accepted``, ``rejected``
    by reason (``teacher_failure_propose``, ``no_question_tag``, ``contaminated``,
    ``duplicate_synthetic``, ``teacher_failure_solve``, ``inconsistent``), ``questions_without_steps``
    (readable questions whose answer lacks the ``<reason>`` or ``<draft>`` step; they are kept), and
    ``contaminated_examples`` (up to 20 new questions with the reference they copy).
    """
    rejected: Counter[str] = Counter()
    contaminated: list[dict[str, Any]] = []
    writer = question_teacher if question_teacher is not None else teacher
    candidates, without_steps = _proposals(tasks, writer, guard, settings, rejected, contaminated, builder)
    requests = [
        TeacherRequest(
            tuple(templates.render("solve", question=c.question)),
            n=settings.solutions_per_question,
            temperature=settings.solve_temperature,
            max_tokens=settings.max_tokens,
        )
        for c in candidates
    ]
    rows = []
    answers = teacher.complete_many(requests)
    for candidate, answer in tqdm(
        list(zip(candidates, answers, strict=True)),
        desc=f"{builder}: voting",
        unit="question",
        disable=None,
        leave=False,
    ):
        if isinstance(answer, TeacherFailure):
            rejected["teacher_failure_solve"] += 1
            continue
        row = _voted_row(candidate, answer, settings, builder)
        if row is None:
            rejected["inconsistent"] += 1
        else:
            rows.append(row)
    stats = {
        "proposed": sum(t.n for t in tasks),
        "accepted": len(rows),
        "rejected": dict(rejected),
        "questions_without_steps": without_steps,
        "contaminated_examples": contaminated[:20],
    }
    return rows, stats


def _proposals(
    tasks: Sequence[ProposalTask],
    teacher: Teacher,
    guard: ContaminationGuard | None,
    settings: SynthesisSettings,
    rejected: Counter[str],
    contaminated: list[dict[str, Any]],
    builder: str,
) -> tuple[list[_Candidate], int]:
    """Ask every task; the new questions that are readable and not near-duplicates, and how many
    readable answers skipped the reason or draft step."""
    occurrences: Counter[tuple[str, ...]] = Counter()
    requests = []
    for task in tasks:
        key = tuple(m["content"] for m in task.messages)
        requests.append(
            TeacherRequest(
                task.messages,
                n=task.n,
                temperature=settings.propose_temperature,
                max_tokens=settings.max_tokens,
                seed=task.seed + occurrences[key],
            )
        )
        occurrences[key] += 1
    seen = guard if guard is not None else ContaminationGuard()
    candidates = []
    without_steps = 0
    for task, answer in zip(tasks, teacher.complete_many(requests), strict=True):
        if isinstance(answer, TeacherFailure):
            rejected["teacher_failure_propose"] += task.n
            continue
        for text in answer:
            question = final_question(text)
            if question is None:
                rejected["no_question_tag"] += 1
                continue
            if not (any(extract_tags(text, "reason")) and any(extract_tags(text, "draft"))):
                without_steps += 1
            match = seen.check(question)
            if match is not None and match.synthetic:
                rejected["duplicate_synthetic"] += 1
            elif match is not None:
                rejected["contaminated"] += 1
                contaminated.append({"question": question, "copies": match.reference_id, "overlap": match.overlap})
            else:
                seen.add(synthetic_row_id(builder, question), question, synthetic=True)
                candidates.append(_Candidate(task, question))
    return candidates, without_steps


def final_question(text: str) -> str | None:
    """The question of one question-writing answer: its last non-empty ``<question>`` (the final step,
    after ``<reason>`` and ``<draft>``), or None when it has none. The draft is never taken instead."""
    questions = [q for q in extract_tags(text, "question") if q]
    return questions[-1] if questions else None


def _voted_row(
    candidate: _Candidate, solutions: list[str], settings: SynthesisSettings, builder: str
) -> BuiltRow | None:
    """The row of a consistently answered question (agreeing solutions only), or None."""
    answers = [extract_answer(s) for s in solutions]
    majority, votes = majority_answer(answers)
    if majority is None or votes < settings.min_votes:
        return None
    agreeing = tuple(s for s, a in zip(solutions, answers, strict=True) if a is not None and is_equivalent(a, majority))
    task = candidate.task
    record = ProblemRecord(
        id=synthetic_row_id(builder, candidate.question),
        problem=candidate.question,
        answer=majority,
        solutions=agreeing,
        subject=task.subject,
        skills=task.skills,
        source=builder,
    )
    return BuiltRow(record, {"builder": builder, **task.provenance, "origin": "synthetic", "votes": votes})


def synthetic_row_id(builder: str, question: str) -> str:
    """A stable id from the question text: a rerun gives each question the same id."""
    return f"{builder}/{hashlib.sha1(question.encode('utf-8')).hexdigest()[:12]}"
