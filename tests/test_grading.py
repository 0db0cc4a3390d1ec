"""The grader: answer extraction, equivalence (cheap path and math-verify), time limits, votes."""

from __future__ import annotations

import itertools
import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from stat_pl import grading
from stat_pl.grading import extract_answer, grade, is_equivalent, majority_answer

LIMIT_S = 0.5
# Covers reading the reply, killing a stuck worker and scheduling noise on a loaded 2-core machine.
SLACK_S = 0.5

EQUIVALENCE_CASES = [
    # fractions, and the decision on decimals: equal when they agree to 6 places
    ("\\frac{1}{2}", "\\frac12", True),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", True),
    ("1/2", "\\frac{1}{2}", True),
    ("0.5", "\\frac12", True),
    ("0.333333", "\\frac{1}{3}", True),
    ("0.333", "\\frac{1}{3}", False),
    ("0.1", "\\frac{1}{9}", False),
    ("1.5", "\\frac32", True),
    ("3", "3.0", True),
    ("\\frac{3}{4}", "\\frac{4}{3}", False),
    ("-\\frac{1}{2}", "-0.5", True),
    ("\\frac{-1}{2}", "-\\frac12", True),
    ("\\frac{1}{0}", "1", False),
    # degrees, units, currency, thousands separators
    ("30^\\circ", "30", True),
    ("30", "30^{\\circ}", True),
    ("45 degrees", "45", True),
    ("5\\text{ cm}", "5", True),
    ("12 inches", "12", True),
    ("5 cm", "6", False),
    ("\\$18.90", "18.90", True),
    ("1,000", "1000", True),
    ("10,\\!000", "10000", True),
    ("1{,}234{,}567", "1234567", True),
    # signs
    ("-3", "-3", True),
    ("-3", "3", False),
    ("3", "-3", False),
    # roots, pi, powers, complex numbers, expressions
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\sqrt{3}/2", "\\frac{\\sqrt{3}}{2}", True),
    ("\\sqrt{2}", "\\sqrt{3}", False),
    ("2\\pi", "2 \\pi", True),
    ("\\pi", "3.14", False),
    ("10^{3}", "1000", True),
    ("3+2i", "2i+3", True),
    ("3-2i", "3+2i", False),
    ("x^2+2x+1", "(x+1)^2", True),
    ("2x+1", "2y+1", False),
    ("x=3", "3", True),
    ("y = 2x + 1", "2x+1", True),
    ("\\infty", "\\infty", True),
    # percentages
    ("50\\%", "50", True),
    ("50\\%", "\\frac{1}{2}", True),
    ("5\\%", "50", False),
    # intervals, sets, tuples, matrices
    ("[1, 2)", "[1,2)", True),
    ("(1,2]", "[1,2)", False),
    ("(-\\infty, 3]", "(-\\infty,3]", True),
    ("x \\in [1,2)", "[1,2)", True),
    ("\\{1,2\\}", "\\{2, 1\\}", True),
    ("1, 2", "2, 1", True),
    ("(2,1)", "(1,2)", False),
    ("(3, -4)", "(3,-4)", True),
    ("(3, 4)", "(4, 3)", False),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    # text answers
    ("\\text{Monday}", "\\text{Monday}", True),
    ("Tuesday", "\\text{Monday}", False),
    ("\\text{(A)}", "A", True),
    ("(B)", "\\text{(A)}", False),
    # nothing to compare
    (None, "3", False),
    ("", "3", False),
    ("3", "5", False),
]


@pytest.mark.parametrize(("pred", "gold", "expected"), EQUIVALENCE_CASES)
def test_is_equivalent(pred: str | None, gold: str, expected: bool) -> None:
    assert is_equivalent(pred, gold) is expected


EXTRACTION_CASES = [
    ("so the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
    ("First \\boxed{1}, then corrected: \\boxed{2}", "2"),
    ("\\boxed{a}\\boxed{b}", "b"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\boxed{\\left\\{ x \\right\\}}", "\\left\\{ x \\right\\}"),
    ("\\boxed{\\boxed{8}}", "8"),
    ("\\boxed{\\text{(B)}}", "\\text{(B)}"),
    ("so $\\boxed 5$.", "5"),
    ("\\fbox{7}", "7"),
    ("\\boxed{3} and then \\boxed{4", "3"),
    ("\\boxed{2} \\boxed{}", "2"),
    ("$\\boxed{5}$ and later text with 6", "5"),
    ("The final answer is 5. But \\boxed{1}", "1"),
    ("The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
    ("The final answer is 3.5. I hope it is correct.", "3.5"),
    ("**Answer:** 42", "42"),
    ("Answer: $x^2$", "x^2"),
    ("Final answer:\n\\[ 7 \\]", "7"),
    ("The answer is: \\(\\sqrt{2}\\)", "\\sqrt{2}"),
    ("Natalia sold 48 clips.\n#### 1,234", "1,234"),
    ("So the answer is 12.", "12"),
    ("3 apples and 4 oranges make 7 fruit in total", "7"),
    ("It costs -2.5 dollars.", "-2.5"),
    ("half of them, then 3/4 of the rest", "3/4"),
    ("no numbers here", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACTION_CASES)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    ["{" * 100_000, "\\boxed{" * 14_000, "answer:" * 14_000, "1" * 100_000, "$" * 100_000],
    ids=["open-braces", "open-boxes", "anchors", "digits", "dollars"],
)
def test_extract_answer_is_linear_on_100k_characters(text: str) -> None:
    started = time.perf_counter()
    extract_answer(text)
    assert time.perf_counter() - started < 0.5


def test_grade_reads_the_last_box_of_a_response() -> None:
    response = "We try $x=2$, giving \\boxed{4}. That is wrong; redo: the area is \\boxed{\\dfrac{9}{2}}."
    assert grade(response, "4.5")
    assert not grade(response, "4")


def test_grade_falls_back_to_gsm8k_answers() -> None:
    assert grade("She has 3 + 4 = 7 apples left.\n#### 7", "7")


MAJORITY_CASES = [
    (["1/2", "0.5", "\\frac{1}{2}", "3"], ("1/2", 3)),
    (["3", "4", "5"], ("3", 1)),
    (["2", None, "4", "4"], ("4", 2)),
    (["\\sqrt{8}", "3", "2\\sqrt{2}", "3"], ("\\sqrt{8}", 2)),
    (["(1,2)", "(2,1)", "(1, 2)"], ("(1,2)", 2)),
    # equivalence is not transitive: a group is decided by its first answer
    (["50\\%", "50", "0.5"], ("50\\%", 3)),
    (["50", "0.5", "50\\%"], ("50", 2)),
    ([None, None], (None, 0)),
    ([], (None, 0)),
]


@pytest.mark.parametrize(("answers", "expected"), MAJORITY_CASES)
def test_majority_answer_groups_equivalent_answers(answers: list[str | None], expected: tuple[str | None, int]) -> None:
    assert majority_answer(answers) == expected


# ----------------------------------------------------------------------------------------------------
# Time limits: strings that would hang sympy (or a regex) must come back False within the limit.

HOSTILE_ANSWERS = [
    "9^9^9^9",
    "10^{10^{10^{10}}}",
    "{" * 450 + "1" + "}" * 450,
    "\\sqrt{" * 100 + "2" + "}" * 100,
    "((100!)!)!",
    "9!!!!!!!!!!!!",
    "e^{e^{e^{e^{e^{100}}}}}",
    "\\sum_{k=1}^{10^{10}} k^{k}",
    " [" * 400,
    "1" * 100_000,
]
_fresh_names = itertools.count()


@pytest.fixture
def warm_worker() -> None:
    """A started worker, so that a timing measures the call, not a first start or a restart."""
    assert not is_equivalent(f"\\sqrt{{{next(_fresh_names)}}}", "x", timeout_s=60)


def _timed(pred: str, gold: str) -> tuple[bool, float]:
    started = time.perf_counter()
    verdict = is_equivalent(pred, gold, timeout_s=LIMIT_S)
    return verdict, time.perf_counter() - started


@pytest.mark.parametrize("hostile", HOSTILE_ANSWERS, ids=range(len(HOSTILE_ANSWERS)))
def test_hostile_answer_returns_false_within_the_limit(warm_worker: None, hostile: str) -> None:
    verdict, elapsed_s = _timed(hostile, "3")
    assert verdict is False
    assert elapsed_s < LIMIT_S + SLACK_S


def test_hostile_response_returns_within_the_limit(warm_worker: None) -> None:
    response = "Let me think again. " * 5_000 + "So we get \\boxed{10^{10^{10^{10}}}-10^{10^{10^{10}}}}."
    started = time.perf_counter()
    assert grade(response, "0", timeout_s=LIMIT_S) is False
    assert time.perf_counter() - started < LIMIT_S + SLACK_S


def test_time_limit_holds_in_a_worker_thread(warm_worker: None) -> None:
    with ThreadPoolExecutor(max_workers=1) as threads:
        verdict, elapsed_s = threads.submit(_timed, "(1+x)^{10000}", "(1+x)^{9999}").result()
    assert verdict is False
    assert elapsed_s < LIMIT_S + SLACK_S


def test_a_worker_that_ignores_its_timer_is_killed_and_not_leaked(
    warm_worker: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller's own deadline holds even when the worker cannot stop itself (C code)."""
    psutil = pytest.importorskip("psutil")
    workers_before = {child.pid for child in psutil.Process().children()}
    monkeypatch.setattr(grading, "_SOFT_LIMIT_SHARE", 100.0)
    verdict, elapsed_s = _timed("\\sum_{k=1}^{10^{10}} k^{k+1}", "1")
    assert verdict is False
    assert elapsed_s < LIMIT_S + SLACK_S
    workers_after = {child.pid for child in psutil.Process().children()}
    assert workers_after < workers_before and len(workers_after) == len(workers_before) - 1
    assert is_equivalent("\\sqrt{12}", "2\\sqrt{3}", timeout_s=60)  # a fresh worker took over


def test_concurrent_callers_get_their_own_verdicts() -> None:
    pairs = [(f"\\sqrt{{{4 * n * n}}}", f"{2 * n}", True) for n in range(2, 8)]
    pairs += [(f"\\sqrt{{{n}}}", f"{n}", False) for n in range(2, 8)]
    with ThreadPoolExecutor(max_workers=6) as threads:
        verdicts = list(threads.map(lambda case: is_equivalent(case[0], case[1], timeout_s=60), pairs))
    assert verdicts == [expected for _, _, expected in pairs]


def _grade_in_child(results: multiprocessing.Queue) -> None:
    results.put(is_equivalent("\\frac{\\sqrt{8}}{2}", "\\sqrt{2}", timeout_s=60))


def test_grading_works_in_a_forked_daemonic_process(warm_worker: None) -> None:
    """A DataLoader worker: forked after the parent started its pool, and daemonic."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_grade_in_child, args=(results,), daemon=True)
    child.start()
    assert results.get(timeout=60) is True
    child.join(timeout=10)
    assert child.exitcode == 0
