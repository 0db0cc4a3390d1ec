"""Final-answer extraction and equivalence: the one grader behind evaluation, GRPO rewards,
consistency votes and the teacher's answer agreement (DESIGN.md, "Grading").

``extract_answer`` reads the final answer out of a response; ``is_equivalent`` decides whether it
means the gold answer. Equivalence is math-verify's (``parse`` + ``verify``), behind two things of
ours:

* a cheap path that settles the common cases in microseconds without math-verify: the same string
  once ``$``, spacing, ``\\text{}``, ``\\dfrac``, ``^\\circ`` are normalised away, and plain numbers
  (``12``, ``1,000``, ``0.5``, ``3/4``, ``\\frac{3}{4}``, optionally followed by a unit such as
  ``cm``) compared exactly;
* a time limit that holds in any thread (:mod:`stat_pl.math_verify_workers`: math-verify runs in
  worker processes, and an answer it cannot settle in time is "not equivalent").

Decisions a user may trip on: decimals equal fractions when they agree to 6 places (math-verify's
rounding), so ``0.5`` is ``\\frac12`` and ``0.333333`` is ``\\frac13`` but ``0.333`` is not; a
percent equals the bare number and its fraction (``50\\%`` is ``50`` and ``\\frac12``); ``\\pi`` is
not ``3.14``; ``(1,2)`` is an open interval, which is neither the tuple ``(2,1)`` nor ``(1,2]``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from fractions import Fraction

from stat_pl import math_verify_workers

DEFAULT_TIMEOUT_S = 5.0
# Longer "answers" are runaway generations, not answers; refusing them keeps hostile input away from
# sympy and keeps requests to the worker small.
MAX_ANSWER_CHARS = 1000

# ----------------------------------------------------------------------------------------------------
# Extraction

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# A backslash escapes the next character (``\{`` is a literal brace), so it is consumed as a pair.
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)
_BARE_BOX_TOKEN = re.compile(r"\s+([^\s$]+)")
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
_NUMBER_IN_TEXT = re.compile(r"-?\d+(?:,\d{3}(?!\d))*(?:\.\d+)?(?:/\d+)?")
# Anchors tried in this order when there is no box; the last occurrence of each counts.
_ANSWER_ANCHORS = ("final answer is", "answer:", "####", "answer is")
_MATH_DELIMITERS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))


def extract_answer(text: str) -> str | None:
    """The final answer of a response, or None when it states none.

    In this order, the first that yields a non-empty answer:

    1. the content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces matched, ``\\{``
       is a literal brace), or ``\\boxed 5``, the one-token form;
    2. after the last "final answer is" (the Minerva format, ``The final answer is $x$. I hope it
       is correct.``), then "answer:", then "####" (GSM8K), then "answer is": the math in ``$...$``,
       ``\\(...\\)``, ``\\[...\\]`` right after the anchor, else the rest of that line up to the end of
       the sentence;
    3. the last number in the text (``-1,234.5`` or ``3/4``).

    Every step is a linear scan, so a 100k-character runaway generation costs milliseconds.
    """
    answer = _last_boxed(text)
    if answer:
        return answer
    lowered = text.lower()
    for anchor in _ANSWER_ANCHORS:
        index = lowered.rfind(anchor)
        if index != -1:
            answer = _clip_answer(text[index + len(anchor) :])
            if answer:
                return answer
    numbers = [match.group() for match in _NUMBER_IN_TEXT.finditer(text)]
    return numbers[-1] if numbers else None


def _last_boxed(text: str) -> str | None:
    """The content of the last non-empty box that is closed, or None."""
    span = last_boxed_span(text)
    return text[span[0] : span[1]] if span else None


def last_boxed_span(text: str) -> tuple[int, int] | None:
    """Where the content of the last non-empty, closed ``\\boxed{...}`` (or ``\\boxed 5``) lies in ``text``:
    ``(start, end)`` character offsets of the content without its surrounding spaces, or None.

    :func:`extract_answer` reads the same box; the teacher-forced answer metrics
    (:mod:`stat_pl.evaluation.answer_metrics`) score the tokens of this span in a gold solution.
    """
    boxes = list(_BOX_COMMAND.finditer(text))
    closing = _closing_braces(text) if boxes else {}
    for box in reversed(boxes):
        start = box.end()
        if text.startswith("{", start):
            end = closing.get(start)
            if end is None:
                continue
            content = text[start + 1 : end]
            stripped = content.strip()
            if stripped:
                first = start + 1 + len(content) - len(content.lstrip())
                return first, first + len(stripped)
        else:
            token = _BARE_BOX_TOKEN.match(text, start)
            if token:
                return token.start(1), token.end(1)
    return None


def _closing_braces(text: str) -> dict[int, int]:
    """Position of each ``{`` -> position of its ``}``, in one pass (unclosed braces are absent)."""
    closing: dict[int, int] = {}
    open_positions: list[int] = []
    for token in _BRACE_TOKEN.finditer(text):
        if token.group() == "{":
            open_positions.append(token.start())
        elif token.group() == "}" and open_positions:
            closing[open_positions.pop()] = token.start()
    return closing


def _clip_answer(after_anchor: str) -> str | None:
    """The answer that follows an anchor: delimited math if it starts with some, else the sentence."""
    line = after_anchor.lstrip(" \t:*").lstrip("\n").partition("\n")[0].strip()
    for opener, closer in _MATH_DELIMITERS:
        if line.startswith(opener):
            end = line.find(closer, len(opener))
            if end != -1:
                return line[len(opener) : end].strip() or None
    sentence_end = _SENTENCE_END.search(line)
    if sentence_end:
        line = line[: sentence_end.start()]
    return line.strip(" *") or None


# ----------------------------------------------------------------------------------------------------
# Cheap equivalence, before math-verify

_DOLLARS = re.compile(r"\\?\$")
_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{([^{}]*)\}")
_NORMALISED_AWAY = re.compile(
    r"\\(?:left|right)(?![A-Za-z])"  # sizing of delimiters
    r"|\^\s*\{?\s*\\circ\s*\}?|°|\\degree"  # degree marks
    r"|\\[!,;: ]|~|\s"  # spacing
)
_UNIT = (
    r"(?:degrees?|cm|mm|km|m|meters?|inch(?:es)?|feet|ft|units?|squareunits|sq\.?units"
    r"|dollars?|cents?|hours?|minutes?|seconds?|days?|years?)(?:\^\{?[23]\}?)?"
)
_PLAIN_NUMBER = re.compile(
    r"(?P<sign>-?)(?:"
    r"(?P<integer>\d{1,3}(?:,\d{3})+|\d+)(?P<decimals>\.\d+)?"
    r"|(?P<slash_num>\d+)/(?P<slash_den>\d+)"
    r"|\\frac\{(?P<frac_num>\d+)\}\{(?P<frac_den>\d+)\}"
    r"|\\frac(?P<short_num>\d)(?P<short_den>\d)"
    rf")(?:{_UNIT})?"
)


def _normalise(answer: str) -> str:
    """A spelling of ``answer`` that two writings of the same answer usually share.

    Used only to say "equal"; spaces are dropped everywhere, which is harmless because both sides are
    normalised the same way.
    """
    answer = _DOLLARS.sub("", answer)
    answer = _TEXT_COMMAND.sub(r"\1", answer)
    answer = answer.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", ",")
    return _NORMALISED_AWAY.sub("", answer).rstrip(".")


def _as_number(normalised: str) -> tuple[Fraction, bool] | None:
    """The value of a plain number and whether it is exact (no decimal point), or None."""
    match = _PLAIN_NUMBER.fullmatch(normalised)
    if match is None:
        return None
    parts = match.groupdict()
    if parts["integer"] is not None:
        value = Fraction(parts["integer"].replace(",", "") + (parts["decimals"] or ""))
    else:
        numerator = parts["slash_num"] or parts["frac_num"] or parts["short_num"]
        denominator = parts["slash_den"] or parts["frac_den"] or parts["short_den"]
        if int(denominator) == 0:
            return None
        value = Fraction(int(numerator), int(denominator))
    return (-value if parts["sign"] else value), parts["decimals"] is None


def _cheap_verdict(pred: str, gold: str) -> bool | None:
    """True or False where it is certain without math-verify, else None.

    A verdict of False is given only for two exact rationals, where math-verify agrees; decimals that
    differ go to math-verify, which rounds to 6 places.
    """
    normalised_pred, normalised_gold = _normalise(pred), _normalise(gold)
    if normalised_pred == normalised_gold:
        return True
    pred_number, gold_number = _as_number(normalised_pred), _as_number(normalised_gold)
    if pred_number is None or gold_number is None:
        return None
    if pred_number[0] == gold_number[0]:
        return True
    return False if pred_number[1] and gold_number[1] else None


# ----------------------------------------------------------------------------------------------------
# Public API


def is_equivalent(pred: str | None, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether the predicted final answer means the gold answer (both bare answers, not responses).

    Never raises for any input and returns within ``timeout_s`` of getting a worker (False on
    timeout), from any thread or process. The first call in a process starts a worker (about half a
    second, not counted in ``timeout_s``; a worker that cannot start at all raises RuntimeError);
    when all workers are busy, a call waits for one, at most the other calls' time limits.
    Answers longer than ``MAX_ANSWER_CHARS`` are not equivalent unless identical.
    """
    if pred is None or not pred.strip() or not gold.strip():
        return False
    if pred.strip() == gold.strip():
        return True
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    verdict = _cheap_verdict(pred, gold)
    if verdict is not None:
        return verdict
    return _verified_by_math_verify(pred.strip(), gold.strip(), timeout_s)


def grade(response: str, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether a full response's final answer (see :func:`extract_answer`) is the gold answer."""
    return is_equivalent(extract_answer(response), gold, timeout_s)


def majority_answer(answers: Sequence[str | None], timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[str | None, int]:
    """The most common answer, counting equivalent answers as one, and its number of votes.

    Used by the consistency detector (DESIGN.md Stage 1: difficult if the top answer has < 2 votes)
    and by STAT-Syn's filter (keep questions whose majority answer has >= 2 votes). ``"1/2"``,
    ``"0.5"`` and ``"\\frac{1}{2}"`` are one answer with 3 votes. The returned answer is the first
    one given of its group; an answer joins the first group whose first answer it equals, because
    equivalence is not transitive (``50\\%`` equals both ``50`` and ``0.5``). On a tie the group
    that appeared first wins; None answers (nothing extracted) get no vote, and ``(None, 0)`` means
    there was no answer at all.
    """
    groups: list[tuple[str, list[str]]] = []
    for answer in answers:
        if answer is None or not answer.strip():
            continue
        group = next((g for g in groups if is_equivalent(answer, g[0], timeout_s)), None)
        if group is None:
            groups.append((answer, [answer]))
        else:
            group[1].append(answer)
    if not groups:
        return None, 0
    representative, members = max(groups, key=lambda g: len(g[1]))
    return representative, len(members)


@functools.lru_cache(maxsize=16384)
def _verified_by_math_verify(pred: str, gold: str, timeout_s: float) -> bool:
    """math-verify's verdict from a worker; cached, since votes and rewards repeat the same pairs."""
    return math_verify_workers.verdict(pred, gold, timeout_s)
