"""The grader: answer extraction, equivalence (cheap path and math-verify), time limits, votes."""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from hang_limit import fails_if_it_hangs

from stat_pl import math_verify_workers
from stat_pl.grading import extract_answer, grade, is_equivalent, majority_answer

LIMIT_S = 0.5
# A hang, not a slow call: far above LIMIT_S plus a worker's restart on a loaded 2-core machine.
HANG_LIMIT_S = 30.0

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
    ("text", "expected"),
    [
        ("{" * 100_000, None),
        ("\\boxed{" * 14_000, None),
        ("answer:" * 14_000, None),
        ("1" * 100_000, "1" * 100_000),
        ("$" * 100_000, None),
    ],
    ids=["open-braces", "open-boxes", "anchors", "digits", "dollars"],
)
def test_extract_answer_reads_100k_character_runaways_without_hanging(text: str, expected: str | None) -> None:
    """Milliseconds when every step is linear; a quadratic step on 100k characters runs for minutes."""
    with fails_if_it_hangs(10.0, "extract_answer on 100k characters"):
        assert extract_answer(text) == expected


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
# Time limits: strings that would hang sympy (or a regex) must come back False, never hang.

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
    """A started, idle worker: a test sees which worker answered or was killed; a fork inherits a started pool."""
    assert not is_equivalent(f"\\sqrt{{{next(_fresh_names)}}}", "x", timeout_s=60)


def _worker_processes() -> set[int]:
    psutil = pytest.importorskip("psutil")
    return {child.pid for child in psutil.Process().children()}


@pytest.mark.parametrize("hostile", HOSTILE_ANSWERS, ids=range(len(HOSTILE_ANSWERS)))
def test_hostile_answer_is_not_equivalent_and_does_not_hang(hostile: str) -> None:
    with fails_if_it_hangs(HANG_LIMIT_S, f"is_equivalent({hostile[:30]!r}..., '3', timeout_s={LIMIT_S})"):
        assert is_equivalent(hostile, "3", timeout_s=LIMIT_S) is False


def test_a_response_too_costly_to_verify_is_graded_wrong() -> None:
    """Its boxed answer is 0, the gold answer: False here is the time limit's verdict, not a wrong answer."""
    response = "Let me think again. " * 5_000 + "So we get \\boxed{10^{10^{10^{10}}}-10^{10^{10^{10}}}}."
    with fails_if_it_hangs(HANG_LIMIT_S, "grade on a 100k-character response"):
        assert grade(response, "0", timeout_s=LIMIT_S) is False


def test_time_limit_holds_in_a_worker_thread() -> None:
    """math-verify's own limit (signal.alarm) works in the main thread only; ours must hold in any thread."""
    verdicts: list[bool] = []
    # a daemon thread: a hung one must not keep the test process from exiting
    thread = threading.Thread(
        target=lambda: verdicts.append(is_equivalent("(1+x)^{10000}", "(1+x)^{9999}", LIMIT_S)), daemon=True
    )
    with fails_if_it_hangs(HANG_LIMIT_S, "is_equivalent in a worker thread"):
        thread.start()
        thread.join()
    assert verdicts == [False]


def test_a_worker_stops_itself_at_its_deadline_and_is_kept(
    warm_worker: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The soft deadline: the worker's own timer ends math-verify, it answers "no" and serves the next call."""
    workers_before = _worker_processes()
    monkeypatch.setattr(math_verify_workers, "_SOFT_LIMIT_SHARE", 1e-6)  # its timer fires at once
    # equal, and math-verify says so given time: False comes from the deadline, 10 s away for the caller
    assert is_equivalent("\\sqrt{27}", "3\\sqrt{3}", timeout_s=10.0) is False
    assert _worker_processes() == workers_before and "gave up" not in caplog.text  # not killed
    monkeypatch.setattr(math_verify_workers, "_SOFT_LIMIT_SHARE", 0.8)
    assert is_equivalent("\\sqrt{45}", "3\\sqrt{5}", timeout_s=60) is True
    assert _worker_processes() == workers_before


def test_a_worker_that_ignores_its_timer_is_killed_and_not_leaked(
    warm_worker: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The caller's own deadline holds even when the worker cannot stop itself (C code)."""
    workers_before = _worker_processes()
    monkeypatch.setattr(math_verify_workers, "_SOFT_LIMIT_SHARE", 100.0)  # the worker's timer never fires in time
    with caplog.at_level(logging.WARNING), fails_if_it_hangs(HANG_LIMIT_S, "a call whose worker ignores its timer"):
        assert is_equivalent("\\sum_{k=1}^{10^{10}} k^{k+1}", "1", timeout_s=LIMIT_S) is False
    assert f"grading gave up after {LIMIT_S:.1f} s" in caplog.text  # the caller's deadline ended it
    workers_after = _worker_processes()
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
