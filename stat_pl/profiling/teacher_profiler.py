"""Skills named by an LLM teacher: Stage 2's Missing-Skill-Profile and Stage 0's skill labels.

Both stages ask the same kind of question ("which skills of this subject's list?") and read the same
kind of answer (``<skill>`` tags, :mod:`stat_pl.teacher.parsing`), so they share one loop: every
question is sent at once through ``teacher.complete_many`` (bounded concurrency, cached); an answer
without a usable tag is asked again as a new sample (``seed = 1, 2, ...`` at ``retry_temperature``)
up to ``max_attempts`` times in all; what is still unusable, and what the teacher failed to answer,
is recorded as unlabelled and counted, never dropped. Skill names outside the subject's list are
counted in ``stats["unmatched_skills"]`` and never added.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stat_pl.errors import UserError
from stat_pl.profiling.base import Attempt, Diagnosis
from stat_pl.records import ProblemRecord
from stat_pl.skills import SkillCatalog
from stat_pl.teacher.base import DEFAULT_MAX_TOKENS, Message, Teacher, TeacherFailure, TeacherRequest
from stat_pl.teacher.parsing import DEFAULT_MATCH_THRESHOLD, SkillAnswer, SkillMatcher, parse_skill_answer
from stat_pl.teacher.templates import PromptTemplates, format_skill_list

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Asking:
    """How to ask: the sampling of the first try and of the re-asks, and how names are matched."""

    max_skills: int
    max_attempts: int
    temperature: float
    retry_temperature: float
    max_tokens: int
    skills_required: bool  # labelling: an answer without skills is unusable, even one judging "correct"


@dataclass(frozen=True)
class _Outcome:
    answer: SkillAnswer | None  # None when the teacher never produced a usable answer
    failure: str | None = None


class TeacherProfiler:
    """Stage 2 (paper Sec. 3.2): the teacher reads question + student response, names missing skills.

    As in the paper, the teacher is not shown the gold answer by default: the paper's point is that a
    Missing-Skill-Profile needs no ground truth (the teacher judges the response itself).
    ``show_reference_answer=True`` adds the record's answer to the prompt (template
    ``missing_skills_with_reference``); this is a departure from the paper, for users whose teacher
    judges poorly without it, and it requires every diagnosed record to have an answer.

    Args:
        teacher: any :class:`~stat_pl.teacher.base.Teacher` (HTTP, local engine).
        catalog: a :class:`SkillCatalog` or the path of its JSON file.
        benchmark: the catalog entry to read from a path (``MATH``, ``GSM8K``).
        templates: prompt files; the ``missing_skills`` template is used (``missing_skills_with_reference``
            with ``show_reference_answer``).
        max_skills: the most skills kept per question (the prompt asks for at most this many).
        max_attempts: tries per question in all, re-asking after answers without a usable tag.
        temperature: sampling temperature of the first try (0: reproducible and cache-friendly).
        retry_temperature: temperature of the re-asks; above 0 so that a re-ask can differ.
        max_tokens: the answer budget per try.
        match_threshold: the difflib ratio above which a misspelt skill name is accepted.
        show_reference_answer: show the teacher the reference answer (a departure from the paper;
            default False, the paper's prompt).

    A question whose response the teacher judges correct is ``labelled`` with no skills. The counters
    of the last :meth:`diagnose` call are in :attr:`stats`.
    """

    def __init__(
        self,
        teacher: Teacher,
        catalog: SkillCatalog | str,
        benchmark: str = "MATH",
        templates: PromptTemplates | None = None,
        max_skills: int = 3,
        max_attempts: int = 3,
        temperature: float = 0.0,
        retry_temperature: float = 0.7,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        match_threshold: float = DEFAULT_MATCH_THRESHOLD,
        show_reference_answer: bool = False,
    ) -> None:
        self.teacher = teacher
        self.catalog = _load_catalog(catalog, benchmark)
        self.templates = templates or PromptTemplates()
        self.show_reference_answer = show_reference_answer
        self.template_name = "missing_skills_with_reference" if show_reference_answer else "missing_skills"
        self.templates.load(self.template_name)
        self.asking = _asking(max_skills, max_attempts, temperature, retry_temperature, max_tokens)
        self.match_threshold = match_threshold
        self.stats: dict[str, Any] = {}

    def diagnose(self, attempts: Sequence[Attempt]) -> list[Diagnosis]:
        """One :class:`Diagnosis` per attempt, in order: ``labelled`` or ``unlabelled``."""
        subjects = [_subject_of(a.record, self.catalog) for a in attempts]
        prompts = [self._prompt(a, s) for a, s in zip(attempts, subjects, strict=True)]
        matchers = _matchers(self.catalog, subjects, self.match_threshold)
        outcomes, self.stats = _ask_for_skills(self.teacher, prompts, [matchers[s] for s in subjects], self.asking)
        _log_summary("teacher profiler", self.stats)
        return [
            Diagnosis(
                question_id=a.record.id,
                skills=o.answer.skills if o.answer else (),
                status="labelled" if o.answer else "unlabelled",
            )
            for a, o in zip(attempts, outcomes, strict=True)
        ]

    def _prompt(self, attempt: Attempt, subject: str) -> list[Message]:
        if not attempt.responses:
            raise ValueError(f"question {attempt.record.id}: the attempt has no student response to diagnose")
        values: dict[str, object] = dict(
            question=attempt.record.problem,
            response=attempt.responses[0],
            subject=subject,
            max_skills=self.asking.max_skills,
            skills=format_skill_list(self.catalog.skills(subject)),
        )
        if self.show_reference_answer:
            if not attempt.record.answer:
                raise UserError(
                    f"question {attempt.record.id} has no answer, but show_reference_answer=True "
                    "asks to show it to the teacher; give the records answers or set it False"
                )
            values["answer"] = attempt.record.answer
        return self.templates.render(self.template_name, **values)


def label_skills(
    records: Sequence[ProblemRecord],
    teacher: Teacher,
    catalog: SkillCatalog | str,
    benchmark: str = "MATH",
    templates: PromptTemplates | None = None,
    max_skills: int = 5,
    max_attempts: int = 3,
    temperature: float = 0.0,
    retry_temperature: float = 0.7,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    match_threshold: float = DEFAULT_MATCH_THRESHOLD,
    relabel: bool = False,
    include_solution: bool = False,
) -> tuple[list[ProblemRecord], dict[str, Any]]:
    """Stage 0 (Didolkar et al. 2024): label each question with up to ``max_skills`` skills of its subject.

    The prompt (template ``label_skills``) shows the question and its subject's skill list, the inputs
    of the paper's labelling; ``include_solution=True`` also shows the record's first reference solution
    (template ``label_skills_with_solution``), and then every record asked about must have one. The
    teacher's first ``max_skills`` catalog names are kept (the prompt asks for the most important
    first); an answer that names none is unusable, whatever else it says.

    Returns every record, in order, and the run's counters. Records that already have skills are kept
    as they are and not asked about unless ``relabel``; with ``relabel`` the teacher's labels replace
    them. A record the teacher could not label keeps its input skills (possibly none) and is counted
    in ``stats["unlabelled"]``. ``catalog`` is a :class:`SkillCatalog` or the path of its JSON file
    (entry ``benchmark``); the other arguments are those of :class:`TeacherProfiler`.
    """
    catalog = _load_catalog(catalog, benchmark)
    templates = templates or PromptTemplates()
    template_name = "label_skills_with_solution" if include_solution else "label_skills"
    templates.load(template_name)
    todo = [i for i, r in enumerate(records) if relabel or not r.skills]
    subjects = {i: _subject_of(records[i], catalog) for i in todo}
    prompts = [
        templates.render(
            template_name,
            question=records[i].problem,
            subject=subjects[i],
            max_skills=max_skills,
            skills=format_skill_list(catalog.skills(subjects[i])),
            **({"solution": _reference_solution(records[i])} if include_solution else {}),
        )
        for i in todo
    ]
    matchers = _matchers(catalog, list(subjects.values()), match_threshold)
    asking = _asking(max_skills, max_attempts, temperature, retry_temperature, max_tokens, skills_required=True)
    outcomes, stats = _ask_for_skills(teacher, prompts, [matchers[subjects[i]] for i in todo], asking)
    labelled = list(records)
    for i, outcome in zip(todo, outcomes, strict=True):
        if outcome.answer is not None:
            labelled[i] = dataclasses.replace(records[i], skills=outcome.answer.skills)
    stats["kept_existing_labels"] = len(records) - len(todo)
    _log_summary("skill labelling", stats)
    return labelled, stats


def _reference_solution(record: ProblemRecord) -> str:
    if not record.solutions:
        raise UserError(
            f"question {record.id} (source {record.source!r}) has no solution, but include_solution=True "
            "asks to show it to the teacher; give the records a 'solution' field or set include_solution false"
        )
    return record.solutions[0]


def _load_catalog(catalog: SkillCatalog | str, benchmark: str) -> SkillCatalog:
    return catalog if isinstance(catalog, SkillCatalog) else SkillCatalog.from_json(catalog, benchmark)


def _asking(
    max_skills: int,
    max_attempts: int,
    temperature: float,
    retry_temperature: float,
    max_tokens: int,
    skills_required: bool = False,
) -> _Asking:
    if max_skills < 1:
        raise UserError(f"max_skills must be >= 1, got {max_skills}")
    if max_attempts < 1:
        raise UserError(f"max_attempts must be >= 1, got {max_attempts}")
    return _Asking(max_skills, max_attempts, temperature, retry_temperature, max_tokens, skills_required)


def _subject_of(record: ProblemRecord, catalog: SkillCatalog) -> str:
    """The record's subject as the catalog names it; a catalog of one subject serves every record."""
    if not record.subject and len(catalog.subjects) == 1:
        return catalog.subjects[0]
    if not record.subject:
        raise UserError(
            f"question {record.id} has no subject and the catalog {catalog.source} has "
            f"several ({catalog.subjects}); give the records a subject"
        )
    try:
        catalog.skills(record.subject)
    except KeyError as err:
        raise type(err)(f"question {record.id}: {err.args[0]}") from None
    return record.subject


def _matchers(catalog: SkillCatalog, subjects: Sequence[str], threshold: float) -> dict[str, SkillMatcher]:
    return {s: SkillMatcher(catalog.skills(s), threshold) for s in set(subjects)}


def _ask_for_skills(
    teacher: Teacher, prompts: Sequence[list[Message]], matchers: Sequence[SkillMatcher], asking: _Asking
) -> tuple[list[_Outcome], dict[str, Any]]:
    """Ask every prompt, re-ask the unusable ones; one outcome per prompt and the run's counters."""
    before = teacher.stats()
    outcomes: dict[int, _Outcome] = {}
    unmatched: Counter[str] = Counter()
    pending = list(range(len(prompts)))
    re_asked = 0
    for attempt in range(asking.max_attempts):
        if not pending:
            break
        re_asked += len(pending) if attempt else 0
        answers = teacher.complete_many([_request(prompts[i], attempt, asking) for i in pending])
        still_pending = []
        for i, answer in zip(pending, answers, strict=True):
            if isinstance(answer, TeacherFailure):
                outcomes[i] = _Outcome(answer=None, failure=answer.reason)
                continue
            parsed = parse_skill_answer(answer[0], matchers[i], asking.max_skills)
            unmatched.update(parsed.unmatched)
            if parsed.skills if asking.skills_required else parsed.usable:
                outcomes[i] = _Outcome(answer=parsed)
            else:
                still_pending.append(i)
        pending = still_pending
    outcomes.update((i, _Outcome(answer=None)) for i in pending)
    ordered = [outcomes[i] for i in range(len(prompts))]
    return ordered, _stats(ordered, unmatched, re_asked, before, teacher.stats())


def _request(messages: list[Message], attempt: int, asking: _Asking) -> TeacherRequest:
    """The first try as configured; re-ask ``k`` is a new sample (seed ``k``, ``retry_temperature``)."""
    if attempt == 0:
        return TeacherRequest(tuple(messages), temperature=asking.temperature, max_tokens=asking.max_tokens)
    return TeacherRequest(
        tuple(messages), temperature=asking.retry_temperature, max_tokens=asking.max_tokens, seed=attempt
    )


def _stats(
    outcomes: Sequence[_Outcome], unmatched: Counter[str], re_asked: int, before: dict[str, int], after: dict[str, int]
) -> dict[str, Any]:
    labelled = [o.answer for o in outcomes if o.answer is not None]
    failures = sum(o.failure is not None for o in outcomes)
    return {
        "questions": len(outcomes),
        "labelled": len(labelled),
        "unlabelled": len(outcomes) - len(labelled),
        "unlabelled_no_usable_tags": len(outcomes) - len(labelled) - failures,
        "unlabelled_teacher_failures": failures,
        "judged_correct": sum(a.judged_correct is True and not a.skills for a in labelled),
        "re_asked": re_asked,
        "unmatched_skill_names": sum(unmatched.values()),
        "unmatched_skills": dict(unmatched.most_common()),
        "teacher_calls": after.get("requests", 0) - before.get("requests", 0),
        "cache_hits": after.get("cache_hits", 0) - before.get("cache_hits", 0),
    }


def _log_summary(what: str, stats: dict[str, Any]) -> None:
    log.info(
        "%s: %d questions, %d labelled, %d unlabelled (%d without usable tags, %d teacher failures), "
        "%d unmatched skill names, %d teacher calls, %d cache hits",
        what,
        stats["questions"],
        stats["labelled"],
        stats["unlabelled"],
        stats["unlabelled_no_usable_tags"],
        stats["unlabelled_teacher_failures"],
        stats["unmatched_skill_names"],
        stats["teacher_calls"],
        stats["cache_hits"],
    )
