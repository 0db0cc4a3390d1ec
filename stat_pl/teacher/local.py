"""A teacher run in-process through an :class:`~stat_pl.engines.base.Engine` (HF or vLLM).

For users with a GPU and no API: the same cache and batch contract as the HTTP teacher, but the
missing requests go to the engine in one ``generate`` call per group of equal sampling parameters, so
the engine batches them itself.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

from stat_pl.engines.base import Engine, SamplingParams
from stat_pl.teacher.base import (
    DEFAULT_MAX_TOKENS,
    Message,
    TeacherAnswer,
    TeacherError,
    TeacherFailure,
    TeacherRequest,
    answer_through_cache,
    complete_one,
)
from stat_pl.teacher.cache import TeacherCache, default_cache_dir

log = logging.getLogger(__name__)


class LocalTeacher:
    """Teacher answers from a local engine, cached like every teacher call.

    Args:
        engine: anything implementing the Engine protocol (``HFEngine``, ``VLLMEngine``).
        model: the name the cache files answers under; change it when the weights change (a path or
            Hub name plus a revision is a good choice), or stale answers are served.
        cache_dir: where the answer cache lives (default: :func:`default_cache_dir`).
    """

    def __init__(self, engine: Engine, model: str, cache_dir: str | None = None) -> None:
        self.engine = engine
        self.model = model
        self.cache_dir = str(cache_dir) if cache_dir is not None else str(default_cache_dir())
        self._cache = TeacherCache(self.cache_dir)
        self._counts = {"requests": 0, "failures": 0}

    def __repr__(self) -> str:
        return f"LocalTeacher(engine={type(self.engine).__name__}, model={self.model!r}, cache_dir={self.cache_dir!r})"

    def complete(
        self, messages: Sequence[Message], n: int = 1, temperature: float = 0.0, max_tokens: int = DEFAULT_MAX_TOKENS
    ) -> list[str]:
        """``n`` texts for ``messages``; raises :class:`TeacherError` with the reason if it fails."""
        return complete_one(self, messages, n, temperature, max_tokens)

    def complete_many(self, requests: Sequence[TeacherRequest]) -> list[TeacherAnswer]:
        """Every request answered (cache first, then the engine in batches) or failed with its reason."""
        return answer_through_cache(requests, self.model, self._cache, self._generate)

    def stats(self) -> dict[str, int]:
        """Prompts sent to the engine (``requests``), ``failures`` and cache counters."""
        return {**self._counts, "retries": 0, **self._cache.counters()}

    def _generate(self, requests: list[TeacherRequest]) -> list[TeacherAnswer]:
        """One ``engine.generate`` per group of requests that share their sampling parameters."""
        groups: dict[SamplingParams, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            params = SamplingParams(
                max_new_tokens=r.max_tokens, temperature=r.temperature, n=r.n, seed=r.seed if r.seed is not None else 0
            )
            groups[params].append(i)
        answers: dict[int, TeacherAnswer] = {}
        for params, indices in groups.items():
            group = self._generate_group([requests[i] for i in indices], params)
            answers.update(zip(indices, group, strict=True))
        return [answers[i] for i in range(len(requests))]

    def _generate_group(self, requests: list[TeacherRequest], params: SamplingParams) -> list[TeacherAnswer]:
        self._counts["requests"] += len(requests)
        try:
            outputs = self.engine.generate([list(r.messages) for r in requests], params)
        except Exception as err:  # an engine error fails this group, reported; other groups still run
            log.warning(
                "LocalTeacher %s: engine %s failed on %d prompt(s): %s",
                self.model,
                type(self.engine).__name__,
                len(requests),
                err,
                exc_info=True,
            )
            self._counts["failures"] += len(requests)
            return [TeacherFailure(f"engine error: {type(err).__name__}: {err}", 1)] * len(requests)
        if len(outputs) != len(requests):
            raise TeacherError(
                f"engine {type(self.engine).__name__} returned {len(outputs)} outputs for "
                f"{len(requests)} prompts (the Engine protocol is one list per prompt)"
            )
        answers: list[TeacherAnswer] = []
        for request, completions in zip(requests, outputs, strict=True):
            texts = [c.text for c in completions]
            self._cache.put(request.cache_key(self.model), texts)
            answers.append(texts)
        return answers
