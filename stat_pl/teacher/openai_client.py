"""A teacher behind any OpenAI-compatible chat endpoint: OpenAI, ``vllm serve``, and the like.

Built from YAML by LightningCLI / jsonargparse::

    teacher:
      class_path: stat_pl.teacher.OpenAICompatibleTeacher
      init_args:
        model: gpt-4o-mini
        base_url: https://api.openai.com/v1
        api_key_env: OPENAI_API_KEY      # the NAME of the variable; the key never enters a config
        timeout: 60
        max_retries: 5
        concurrency: 16
        cache_dir: runs/teacher_cache

Transport faults are the ``openai`` client's to retry: timeouts, connection errors and 408/409/429/5xx,
with its exponential backoff and jitter, honouring the server's ``Retry-After`` / ``retry-after-ms``
(up to two minutes; a longer one is not retried). Other 4xx errors (bad request, wrong key, unknown
model) are not retried. Ours is only what it does not do: a 200 answer that is malformed (a truncated
body, a choice without text) is asked again, and every HTTP call is counted (an ``httpx`` request
hook), so that a request costs at most ``1 + max_retries`` calls in all and ``stats()`` reports what
was paid for. Requests run on ``concurrency`` threads; each answer is committed to the cache as soon
as it arrives.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

import openai
from tqdm.auto import tqdm

from stat_pl.errors import UserError
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


class _MalformedResponse(ValueError):
    """A 200 response whose choices have no text (retried: the next answer may be whole)."""


class _WrongChoiceCount(ValueError):
    """A server that answers ``n`` choices with another number (it ignores ``n``: retrying cannot help)."""


class OpenAICompatibleTeacher:
    """Chat completions over HTTP through the ``openai`` package, cached, retried, concurrent.

    Args:
        model: the model name the server knows (``gpt-4o-mini``, the name given to ``vllm serve``).
        base_url: the server's OpenAI API root, e.g. ``http://localhost:8000/v1`` for ``vllm serve``.
        api_key_env: the NAME of the environment variable holding the key (read on the first paid call;
            a fully cached run needs no key). For a server without authentication set it to any value.
        timeout: seconds one HTTP call may take before it counts as failed (and is retried).
        max_retries: retries per request after its first call (the ``openai`` client's and ours for
            malformed answers together); a request costs at most ``1 + max_retries`` calls.
        concurrency: requests in flight at once.
        cache_dir: where the answer cache lives (default: :func:`default_cache_dir`).
    """

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 5,
        concurrency: int = 16,
        cache_dir: str | None = None,
    ) -> None:
        if max_retries < 0:
            raise UserError(f"teacher.max_retries must be >= 0, got {max_retries}")
        if concurrency < 1:
            raise UserError(f"teacher.concurrency must be >= 1, got {concurrency}")
        if timeout <= 0:
            raise UserError(f"teacher.timeout must be > 0 seconds, got {timeout}")
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.cache_dir = str(cache_dir) if cache_dir is not None else str(default_cache_dir())
        self._cache = TeacherCache(self.cache_dir)
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._client: openai.OpenAI | None = None
        self._client_pid = -1
        self._lock = threading.Lock()
        self._counts = {"requests": 0, "retries": 0, "failures": 0}
        self._calls = threading.local()  # HTTP calls of the request this thread is asking

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r}, "
            f"api_key_env={self.api_key_env!r}, timeout={self.timeout}, max_retries={self.max_retries}, "
            f"concurrency={self.concurrency}, cache_dir={self.cache_dir!r})"
        )

    def __getstate__(self) -> dict[str, object]:
        """Pickle the configuration only: the client (which holds the key) is rebuilt on demand."""
        runtime = ("_client", "_client_pid", "_lock", "_counts", "_calls")
        return {k: v for k, v in self.__dict__.items() if k not in runtime}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def complete(
        self, messages: Sequence[Message], n: int = 1, temperature: float = 0.0, max_tokens: int = DEFAULT_MAX_TOKENS
    ) -> list[str]:
        """``n`` texts for ``messages``; raises :class:`TeacherError` with the reason if it fails."""
        return complete_one(self, messages, n, temperature, max_tokens)

    def complete_many(self, requests: Sequence[TeacherRequest]) -> list[TeacherAnswer]:
        """Every request answered (cache first, then ``concurrency`` at a time) or failed with its reason."""
        return answer_through_cache(requests, self.model, self._cache, self._fetch)

    def stats(self) -> dict[str, int]:
        """Paid HTTP calls (``requests``, retries included), ``retries``, ``failures`` and cache counters."""
        with self._lock:
            return {**self._counts, **self._cache.counters()}

    def _fetch(self, requests: list[TeacherRequest]) -> list[TeacherAnswer]:
        """Ask ``requests`` on ``concurrency`` threads, with a progress bar on a terminal.

        On an interrupt (Ctrl-C) the queued requests are cancelled, not paid for, and the ones in flight
        are awaited so that their answers reach the cache.
        """
        client = self._client_or_raise()
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests)), thread_name_prefix="teacher")
        try:
            futures = [pool.submit(self._ask, client, r) for r in requests]
            with tqdm(
                total=len(futures), desc=f"teacher {self.model}", unit="request", disable=None, leave=False
            ) as progress:
                for _ in as_completed(futures):
                    progress.update()
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _client_or_raise(self) -> openai.OpenAI:
        with self._lock:
            if self._client is None or self._client_pid != os.getpid():
                key = os.environ.get(self.api_key_env)
                if not key:
                    raise TeacherError(
                        f"environment variable {self.api_key_env} (teacher.api_key_env) is not set: export "
                        "it with the API key, or with any value (e.g. EMPTY) for a server without a key"
                    )
                http_client = openai.DefaultHttpxClient(event_hooks={"request": [self._on_http_call]})
                self._client = openai.OpenAI(
                    base_url=self.base_url,
                    api_key=key,
                    timeout=self.timeout,
                    max_retries=self.max_retries,
                    http_client=http_client,
                )
                self._client_pid = os.getpid()  # a forked child builds its own: sockets are not shared
            return self._client

    def _on_http_call(self, _request: object) -> None:
        """Every HTTP call the ``openai`` client sends, its own retries included, is a paid call."""
        self._calls.count += 1
        self._count("requests")

    def _ask(self, client: openai.OpenAI, request: TeacherRequest) -> TeacherAnswer:
        """One request within the call bound: transport faults are retried by the ``openai`` client, a
        malformed answer by us with the calls left; the answer is cached before it is returned."""
        self._calls.count = 0
        try:
            while True:
                calls_left = self.max_retries + 1 - self._calls.count
                try:
                    texts = self._call(client.with_options(max_retries=calls_left - 1), request)
                except _WrongChoiceCount as err:  # the server ignores n: asking again cannot help
                    return self._give_up(self._describe(err), self._calls.count)
                except (_MalformedResponse, ValueError, openai.APIResponseValidationError) as err:
                    if self._calls.count > self.max_retries:
                        return self._give_up(self._describe(err), self._calls.count)
                    log.info(
                        "teacher %s: %s; asking again (%d of %d calls made)",
                        self.model,
                        self._describe(err),
                        self._calls.count,
                        1 + self.max_retries,
                    )
                except openai.OpenAIError as err:  # what the openai client retries, it has retried
                    return self._give_up(self._describe(err), self._calls.count)
                else:
                    self._cache.put(request.cache_key(self.model), texts)
                    return texts
        finally:
            self._count("retries", max(0, self._calls.count - 1))

    def _call(self, client: openai.OpenAI, request: TeacherRequest) -> list[str]:
        extra = {} if request.seed is None else {"seed": request.seed}
        response = client.chat.completions.create(
            model=self.model,
            messages=list(request.messages),
            n=request.n,
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            **extra,
        )
        choices = sorted(response.choices or [], key=lambda c: c.index)
        texts = [c.message.content if c.message is not None else None for c in choices]
        if any(t is None for t in texts):
            raise _MalformedResponse("a choice without message content")
        if len(texts) != request.n:
            raise _WrongChoiceCount(
                f"the server returned {len(texts)} choice(s) for n={request.n}; does it support n > 1?"
            )
        return texts

    def _describe(self, err: Exception) -> str:
        """The error as one line, with the key masked in case a server echoed it."""
        if isinstance(err, openai.APIStatusError):
            text = f"HTTP {err.status_code}: {err.message}"
        elif isinstance(err, openai.APITimeoutError):
            text = f"no answer within timeout={self.timeout} s"
        elif isinstance(err, openai.APIConnectionError):
            text = f"connection error: {err.__cause__ or err}"
        elif isinstance(err, (_MalformedResponse, _WrongChoiceCount)):
            text = f"malformed response: {err}"
        else:
            text = f"malformed response ({type(err).__name__}: {err})"
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "***") if key else text

    def _give_up(self, reason: str, attempts: int) -> TeacherFailure:
        self._count("failures")
        log.warning(
            "teacher %s at %s: gave up on a request after %d call(s): %s", self.model, self.base_url, attempts, reason
        )
        return TeacherFailure(reason=reason, attempts=attempts)

    def _count(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._counts[name] += by
