"""math-verify with a time limit that holds in any thread: a small pool of worker processes.

math-verify's own limit is ``signal.alarm``, which works only in the main thread, and the grader's
callers (:mod:`stat_pl.grading`) are teacher threads and DataLoader workers. So math-verify runs in
a pool of worker processes (up to four, at most one per CPU), one request at a time each. A worker
stops itself a little before the deadline with a timer signal and answers "not equivalent"; one that
misses the deadline anyway (stuck in C code, where signals do not reach) is killed, the answer is
"not equivalent", and the next call starts a fresh worker (about half a second).

This file is also the worker's program: it runs as a script, needing math-verify and the standard
library only.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import select
import signal
import subprocess
import sys
import threading

logger = logging.getLogger(__name__)

# The worker interrupts itself at this share of the limit, so that it usually survives and answers
# "no"; the caller kills it at the full limit when it cannot (C code that ignores signals).
_SOFT_LIMIT_SHARE = 0.8
_STARTUP_LIMIT_S = 120.0
# The file is run as a script, not imported as ``stat_pl.math_verify_workers``: the worker needs
# math-verify only, not whatever ``stat_pl/__init__`` may import (torch, lightning), which would slow
# every restart.
_WORKER_COMMAND = (
    sys.executable,
    "-c",
    "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')",
    os.path.abspath(__file__),
)


def verdict(pred: str, gold: str, timeout_s: float) -> bool:
    """Whether math-verify finds ``pred`` equal to ``gold`` (bare answers), False after ``timeout_s``.

    From any thread or process. The first call in a process starts a worker (about half a second, not
    counted in ``timeout_s``; a worker that cannot start at all raises RuntimeError); when all workers
    are busy, a call waits for one, at most the other calls' time limits.
    """
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
