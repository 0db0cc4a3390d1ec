"""Difficulty detectors that need no reward model: ground truth, consistency and length.

DESIGN.md, Stage 1: the student answers the validation questions, and a question is *difficult* when
its response is judged bad. The paper judges with a PRM, an ORM, self-consistency over 5 samples,
response length, or the gold answer; these three need only :mod:`stat_pl.grading`.
"""

from __future__ import annotations

from collections.abc import Sequence

from stat_pl.errors import UserError
from stat_pl.grading import extract_answer, grade, majority_answer
from stat_pl.profiling.base import Attempt


def _responses(attempt: Attempt, detector: str) -> tuple[str, ...]:
    if not attempt.responses:
        raise ValueError(
            f"{detector}: question {attempt.record.id!r} has no responses; generate "
            "samples_per_question responses for every question before detecting"
        )
    return attempt.responses


class GroundTruthDetector:
    """Difficult when the student is not mostly right against the gold answer (DESIGN.md, Stage 1).

    With one response (the paper's greedy answer), difficult when it is wrong. With several, difficult
    unless more than half of them are right: a question the student solves only half the time is one
    it has not learnt. Correctness is :func:`stat_pl.grading.grade` (last ``\\boxed{}``, math-verify).
    """

    def __init__(self, samples_per_question: int = 1) -> None:
        if samples_per_question < 1:
            raise UserError(f"GroundTruthDetector.samples_per_question must be >= 1, got {samples_per_question}")
        self.samples_per_question = samples_per_question

    def detect(self, attempts: Sequence[Attempt]) -> list[bool]:
        verdicts = []
        for attempt in attempts:
            responses = _responses(attempt, "GroundTruthDetector")
            right = sum(grade(response, attempt.record.answer) for response in responses)
            verdicts.append(2 * right <= len(responses))
        return verdicts


class ConsistencyDetector:
    """Difficult when the student's k samples do not agree (DESIGN.md, Stage 1; needs no gold answer).

    The paper samples k = 5 responses and calls a question difficult when its most common final answer
    appears fewer than 2 times. Answers are clustered by equivalence (``1/2`` and ``\\frac{1}{2}`` are
    one answer, see :func:`stat_pl.grading.majority_answer`); a response with no final answer never
    counts as a vote.

    Args:
        k: responses sampled per question (at temperature > 0, or they agree trivially).
        min_votes: the most common answer needs at least this many votes for the question to be easy.
    """

    def __init__(self, k: int = 5, min_votes: int = 2) -> None:
        if not 1 <= min_votes <= k:
            raise UserError(
                f"ConsistencyDetector needs 1 <= min_votes <= k, got min_votes={min_votes}, "
                f"k={k}: otherwise every question is difficult"
            )
        self.samples_per_question = k
        self.min_votes = min_votes

    def detect(self, attempts: Sequence[Attempt]) -> list[bool]:
        verdicts = []
        for attempt in attempts:
            answers = [extract_answer(r) for r in _responses(attempt, "ConsistencyDetector")]
            _, votes = majority_answer(answers)
            verdicts.append(votes < self.min_votes)
        return verdicts


class LengthDetector:
    """Difficult when the responses are long (DESIGN.md, Stage 1): a student that rambles is lost.

    The paper flags a question when the mean response length is at least 800 words; words are
    whitespace-separated tokens, so the verdict does not depend on any tokenizer.

    Args:
        min_words: a mean length of at least this many words makes the question difficult.
        samples_per_question: responses per question whose lengths are averaged.
    """

    def __init__(self, min_words: int = 800, samples_per_question: int = 1) -> None:
        if min_words < 1 or samples_per_question < 1:
            raise UserError(
                f"LengthDetector needs min_words >= 1 and samples_per_question >= 1, got "
                f"min_words={min_words}, samples_per_question={samples_per_question}"
            )
        self.min_words = min_words
        self.samples_per_question = samples_per_question

    def detect(self, attempts: Sequence[Attempt]) -> list[bool]:
        verdicts = []
        for attempt in attempts:
            responses = _responses(attempt, "LengthDetector")
            mean_words = sum(len(r.split()) for r in responses) / len(responses)
            verdicts.append(mean_words >= self.min_words)
        return verdicts
