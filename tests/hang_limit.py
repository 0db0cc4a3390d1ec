"""A hard limit on a block of a test, so that a hang fails the test instead of stalling the suite.

Not a speed check: the limit is set far above the time the block needs on a loaded machine, so only
code that ignores its own time limit (or went quadratic on a long input) trips it. It uses SIGALRM,
which interrupts blocking waits and the regex engine alike, so it works in the main thread only,
where pytest runs tests.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def fails_if_it_hangs(limit_s: float, what: str) -> Iterator[None]:
    """Fail the test, naming ``what``, when the block is still running after ``limit_s`` seconds."""

    def hung(signum: int, frame: object) -> None:
        pytest.fail(f"{what} still running after {limit_s:g} s: it hangs", pytrace=False)

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
