"""Final-answer extraction and equivalence: the one grader behind evaluation, GRPO rewards,
consistency votes and the teacher's answer agreement (DESIGN.md, "Grading").

``extract_answer`` reads the final answer out of a response; ``is_equivalent`` decides whether it
means the gold answer. Equivalence is math-verify's (``parse`` + ``verify``), behind two things of
ours:

* a cheap path that settles the common cases in microseconds without math-verify: the same string
  once ``$``, spacing, ``\\text{}``, ``\\dfrac``, ``^\\circ`` are normalised away, and plain numbers
  (``12``, ``1,000``, ``0.5``, ``3/4``, ``\\frac{3}{4}``, optionally followed by a unit such as
  ``cm``) compared exactly;
* a time limit that holds in any thread. math-verify's own limit is ``signal.alarm``, which works
  only in the main thread, and our callers are teacher threads and DataLoader workers. So math-verify
  runs in a small pool of worker processes, one request at a time each; a worker that misses the
  deadline is killed and restarted on the next call, and the answer is then "not equivalent". The
  worker stops itself a little earlier with a timer signal, so that a kill (and a restart of about
  half a second) is needed only when it is stuck where signals do not reach.

Decisions a user may trip on: decimals equal fractions when they agree to 6 places (math-verify's
rounding), so ``0.5`` is ``\\frac12`` and ``0.333333`` is ``\\frac13`` but ``0.333`` is not; a
percent equals the bare number and its fraction (``50\\%`` is ``50`` and ``\\frac12``); ``\\pi`` is
not ``3.14``; ``(1,2)`` is an open interval, which is neither the tuple ``(2,1)`` nor ``(1,2]``.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from fractions import Fraction

logger = logging.getLogger(__name__)

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
    boxes = list(_BOX_COMMAND.finditer(text))
    closing = _closing_braces(text) if boxes else {}
    for box in reversed(boxes):
        start = box.end()
        if text.startswith("{", start):
            end = closing.get(start)
            content = text[start + 1 : end].strip() if end is not None else ""
        else:
            token = _BARE_BOX_TOKEN.match(text, start)
            content = token.group(1) if token else ""
        if content:
            return content
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


# ----------------------------------------------------------------------------------------------------
# math-verify in worker processes

# The worker interrupts itself at this share of the limit, so that it usually survives and answers
# "no"; the caller kills it at the full limit when it cannot (C code that ignores signals).
_SOFT_LIMIT_SHARE = 0.8
_STARTUP_LIMIT_S = 120.0
# The file is run as a script, not imported as ``stat_pl.grading``: the worker needs math-verify only,
# not whatever ``stat_pl/__init__`` may import (torch, lightning), which would slow every restart.
_WORKER_COMMAND = (
    sys.executable,
    "-c",
    "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')",
    os.path.abspath(__file__),
)


@functools.lru_cache(maxsize=16384)
def _verified_by_math_verify(pred: str, gold: str, timeout_s: float) -> bool:
    """math-verify's verdict from a worker; cached, since votes and rewards repeat the same pairs."""
    return _shared_pool().verdict(pred, gold, timeout_s)


class _Worker:
    """One math-verify process answering one request at a time over its stdin/stdout."""

    def __init__(self) -> None:
        # A subprocess, not multiprocessing: DataLoader workers are daemonic processes, and those may
        # not have multiprocessing children. Its own session keeps Ctrl-C for the parent.
        self._process = subprocess.Popen(
            _WORKER_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
        )
        # poll, not select: select fails on descriptors above 1024, common in big training processes.
        self._reply_ready = select.poll()
        self._reply_ready.register(self._process.stdout, select.POLLIN)
        self._ready = False

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def verdict(self, pred: str, gold: str, timeout_s: float) -> bool:
        """math-verify's verdict, or False (and this worker killed) after ``timeout_s``."""
        self._wait_until_ready()
        request = json.dumps([pred, gold, _SOFT_LIMIT_SHARE * timeout_s]) + "\n"
        try:
            self._process.stdin.write(request.encode())
            self._process.stdin.flush()
        except OSError:  # the worker died (a crash inside sympy); the pool replaces it
            self.stop()
            return False
        reply = self._read_line(timeout_s)
        if reply is None:
            logger.warning("grading gave up after %.1f s: pred=%.80r gold=%.80r", timeout_s, pred, gold)
            self.stop()
            return False
        return reply == b"1\n"

    def stop(self) -> None:
        self._process.kill()
        self._process.wait()

    def _wait_until_ready(self) -> None:
        if self._ready:
            return
        if self._read_line(_STARTUP_LIMIT_S) != b"ready\n":
            self.stop()
            raise RuntimeError(
                f"the math-verify worker process ({' '.join(_WORKER_COMMAND[:2])} ...) did not start "
                f"within {_STARTUP_LIMIT_S:.0f} s; its error, if any, is printed above. Check that "
                "math-verify imports in this environment: python -c 'import math_verify'"
            )
        self._ready = True

    def _read_line(self, timeout_s: float) -> bytes | None:
        """One reply line (b"" if the worker died), or None when none came within ``timeout_s``."""
        events = self._reply_ready.poll(math.ceil(timeout_s * 1000))
        return self._process.stdout.readline() if events else None


class _WorkerPool:
    """Up to ``size`` workers, each started on first need and again after it was killed."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._started = 0
        self._idle: list[_Worker] = []
        self._changed = threading.Condition()

    def verdict(self, pred: str, gold: str, timeout_s: float) -> bool:
        worker = self._take()
        try:
            return worker.verdict(pred, gold, timeout_s)
        finally:
            self._give_back(worker)

    def close(self) -> None:
        with self._changed:
            for worker in self._idle:
                worker.stop()
            self._idle.clear()

    def _take(self) -> _Worker:
        with self._changed:
            while not self._idle and self._started >= self._size:
                self._changed.wait()
            if self._idle:
                return self._idle.pop()
            self._started += 1
        try:
            return _Worker()
        except BaseException:
            self._release_slot()
            raise

    def _give_back(self, worker: _Worker) -> None:
        """Keep a live worker; a killed one is restarted on demand by the next :meth:`_take`."""
        if not worker.alive:
            self._release_slot()
            return
        with self._changed:
            self._idle.append(worker)
            self._changed.notify()

    def _release_slot(self) -> None:
        with self._changed:
            self._started -= 1
            self._changed.notify()


# One pool per process, like a connection pool: a forked child (a DataLoader worker) must not talk to
# its parent's workers over inherited pipes, so it forgets the pool and starts its own on first use.
_pool: _WorkerPool | None = None
_pool_lock = threading.Lock()


def _shared_pool() -> _WorkerPool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = _WorkerPool(size=min(4, os.cpu_count() or 1))
        return _pool


def _forget_pool_after_fork() -> None:
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


def _close_pool() -> None:
    if _pool is not None:
        _pool.close()


os.register_at_fork(after_in_child=_forget_pool_after_fork)
atexit.register(_close_pool)


# ----------------------------------------------------------------------------------------------------
# Inside the worker process


class _SoftDeadline(BaseException):
    """Raised by the worker's timer; a BaseException so math-verify's ``except Exception`` lets it by."""


def _math_verify_equal(pred: str, gold: str) -> bool:
    """math-verify's verdict on two bare answers, boxed so that any LaTeX or plain expression parses."""
    # Imported here: only the worker process needs sympy.
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    targets = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
    # Timeouts off: math-verify's are signal.alarm, whole seconds, per step; the worker has its own.
    parsed_gold = parse(f"\\boxed{{{gold}}}", targets, parsing_timeout=None)
    parsed_pred = parse(f"\\boxed{{{pred}}}", targets, parsing_timeout=None)
    return bool(parsed_gold and parsed_pred and verify(parsed_gold, parsed_pred, timeout_seconds=None))


def _verdict_within(pred: str, gold: str, soft_limit_s: float) -> bool:
    signal.setitimer(signal.ITIMER_REAL, soft_limit_s)
    try:
        return _math_verify_equal(pred, gold)
    except Exception:  # math-verify catches most of its errors; sympy's recursion errors may escape
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _raise_soft_deadline(signum: int, frame: object) -> None:
    raise _SoftDeadline


def _serve() -> None:
    """Answer ``[pred, gold, soft_limit_s]`` JSON lines with ``1`` / ``0`` until stdin closes."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the replies
    logging.basicConfig(level=logging.ERROR)  # math-verify warns that its own timeouts are off
    signal.signal(signal.SIGALRM, _raise_soft_deadline)
    _math_verify_equal("(1,2]", "\\{1\\}")  # sympy's first interval and set cost ~100 ms; pay them now
    replies.write(b"ready\n")
    for request in sys.stdin:
        pred, gold, soft_limit_s = json.loads(request)
        try:
            verdict = _verdict_within(pred, gold, soft_limit_s)
        except _SoftDeadline:
            verdict = False
        replies.write(b"1\n" if verdict else b"0\n")


if __name__ == "__main__":
    _serve()
