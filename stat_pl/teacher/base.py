"""The Teacher protocol (DESIGN.md, Interfaces) and the cache-first batching every teacher shares.

A teacher turns chat messages into sampled texts. Users pay per call, so the contract is strict:
every request of a batch comes back either answered (its texts) or as a :class:`TeacherFailure` that
says why, in the order asked; nothing is dropped, and nothing already answered is paid for twice
(every answer goes through :class:`~stat_pl.teacher.cache.TeacherCache`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from stat_pl.teacher.cache import TeacherCache

Message = dict[str, str]

#: The default answer budget: the Stage 2 prompt asks for a judgement, a reason and a few skills.
DEFAULT_MAX_TOKENS = 1024


class TeacherError(RuntimeError):
    """A teacher call that could not be answered; the message says which teacher and why."""


@dataclass(frozen=True)
class TeacherRequest:
    """One chat completion to ask for.

    ``seed`` selects the draw: two requests that differ only in ``seed`` are different samples with
    their own cache entries (the profilers re-ask with ``seed=1, 2, ...`` after an unusable answer).
    ``None`` sends no seed to the server.
    """

    messages: tuple[Message, ...]
    n: int = 1
    temperature: float = 0.0
    max_tokens: int = DEFAULT_MAX_TOKENS
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(dict(m) for m in self.messages))
        if self.n < 1:
            raise ValueError(f"TeacherRequest.n must be >= 1, got {self.n}")
        if self.max_tokens < 1:
            raise ValueError(f"TeacherRequest.max_tokens must be >= 1, got {self.max_tokens}")

    def cache_key(self, model: str) -> str:
        """The canonical JSON of everything that changes the answer: the cache key (never the API key)."""
        return json.dumps(
            {
                "model": model,
                "messages": list(self.messages),
                "n": self.n,
                "temperature": float(self.temperature),
                "max_tokens": self.max_tokens,
                "seed": self.seed,
            },
            sort_keys=True,
            ensure_ascii=False,
        )


@dataclass(frozen=True)
class TeacherFailure:
    """A request the teacher gave up on: ``reason`` names the last error, ``attempts`` the calls made."""

    reason: str
    attempts: int = 0


TeacherAnswer = list[str] | TeacherFailure


class Teacher(Protocol):
    """Chat messages in, ``n`` sampled texts out; batches with bounded concurrency, cached."""

    def complete(
        self, messages: Sequence[Message], n: int = 1, temperature: float = 0.0, max_tokens: int = DEFAULT_MAX_TOKENS
    ) -> list[str]:
        """One request; raises :class:`TeacherError` when it cannot be answered."""
        ...

    def complete_many(self, requests: Sequence[TeacherRequest]) -> list[TeacherAnswer]:
        """All requests, in order: each answered or a :class:`TeacherFailure` with its reason."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters since construction: ``requests`` (paid calls, retries included), cache hits..."""
        ...


def complete_one(
    teacher: Teacher, messages: Sequence[Message], n: int, temperature: float, max_tokens: int
) -> list[str]:
    """``Teacher.complete`` for teachers that batch: one request through ``complete_many``, failures raised."""
    request = TeacherRequest(tuple(messages), n=n, temperature=temperature, max_tokens=max_tokens)
    (answer,) = teacher.complete_many([request])
    if isinstance(answer, TeacherFailure):
        raise TeacherError(f"{teacher!r}: request failed after {answer.attempts} call(s): {answer.reason}")
    return answer


def answer_through_cache(
    requests: Sequence[TeacherRequest],
    model: str,
    cache: TeacherCache,
    fetch: Callable[[list[TeacherRequest]], list[TeacherAnswer]],
) -> list[TeacherAnswer]:
    """Answer ``requests`` from ``cache``; ask ``fetch`` once per distinct missing request.

    Duplicates inside a batch are asked once and fanned out, so a batch never pays twice for the same
    prompt. ``fetch`` must store each answer in the cache as soon as it has it (a crash then loses
    nothing already paid for) and return one answer per request it was given, in order.
    """
    keys = [r.cache_key(model) for r in requests]
    answers: dict[str, TeacherAnswer] = {}
    missing: dict[str, TeacherRequest] = {}
    for key, request in zip(keys, requests, strict=True):
        if key in answers or key in missing:
            continue
        cached = cache.get(key)
        if cached is None:
            missing[key] = request
        else:
            answers[key] = cached
    if missing:
        fetched = fetch(list(missing.values()))
        if len(fetched) != len(missing):
            raise TeacherError(
                f"teacher for model {model!r} returned {len(fetched)} answers for {len(missing)} requests"
            )
        answers.update(zip(missing, fetched, strict=True))
    return [answers[key] for key in keys]
