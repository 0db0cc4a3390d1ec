"""A real OpenAI-compatible HTTP server on 127.0.0.1 with scripted teacher outputs and injectable faults.

Used by the teacher tests and by ``bench/teacher_throughput.py``. It answers
``POST /v1/chat/completions`` with the texts a ``script`` function makes from the request body, counts
every request it receives (per request, with arrival times and the Authorization header, so a test
can check retries, Retry-After gaps and that the key was sent), and can misbehave on cue: a
``faults`` function sees each request body and how many times that same request arrived before, and
returns a :class:`Fault` (500, 429 with Retry-After, slower than the client's timeout, truncated JSON)
or None.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Body = dict[str, Any]
#: request body -> one text (used for every choice) or one text per choice
Script = Callable[[Body], "str | list[str]"]
#: (request body, times this same request arrived before) -> a fault to inject, or None
FaultPlan = Callable[[Body, int], "Fault | None"]


@dataclass(frozen=True)
class Fault:
    """A misbehaviour: ``status`` (e.g. 500), ``rate_limit`` (429 + Retry-After), ``slow``, ``truncated``."""

    kind: str
    status: int = 500
    retry_after_s: float = 0.0
    delay_s: float = 0.0

    @classmethod
    def error(cls, status: int = 500) -> Fault:
        return cls("status", status=status)

    @classmethod
    def rate_limit(cls, retry_after_s: float) -> Fault:
        return cls("rate_limit", status=429, retry_after_s=retry_after_s)

    @classmethod
    def slow(cls, delay_s: float) -> Fault:
        return cls("slow", delay_s=delay_s)

    @classmethod
    def truncated(cls) -> Fault:
        return cls("truncated")


@dataclass(frozen=True)
class Received:
    """A request as the server saw it."""

    body: Body
    at: float
    authorization: str

    @property
    def key(self) -> str:
        return request_key(self.body)


def request_key(body: Body) -> str:
    """What makes two requests "the same" for retry counting: messages and sampling parameters."""
    fields = {k: body.get(k) for k in ("messages", "n", "temperature", "max_tokens", "seed")}
    return json.dumps(fields, sort_keys=True)


def prompt_text(body: Body) -> str:
    """The text of the last user message of a request."""
    return [m["content"] for m in body["messages"] if m["role"] == "user"][-1]


class LoopbackTeacherServer:
    """Use as ``with LoopbackTeacherServer(script) as server:``; ``server.base_url`` is the client's URL."""

    def __init__(self, script: Script, faults: FaultPlan | None = None, latency_s: float = 0.0) -> None:
        self.script = script
        self.faults = faults
        self.latency_s = latency_s
        self.received: list[Received] = []
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self), bind_and_activate=False)
        self._httpd.daemon_threads = True
        self._httpd.request_queue_size = 256
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.received)

    def requests_per_key(self) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            for r in self.received:
                counts[r.key] = counts.get(r.key, 0) + 1
            return counts

    def arrivals(self, predicate: Callable[[Body], bool]) -> list[float]:
        """Arrival times of the requests whose body satisfies ``predicate``."""
        with self._lock:
            return [r.at for r in self.received if predicate(r.body)]

    def start(self) -> LoopbackTeacherServer:
        self._httpd.server_bind()
        self._httpd.server_activate()
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackTeacherServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def record(self, body: Body, authorization: str) -> Fault | None:
        """Count the request and decide its fault (called by the handler)."""
        with self._lock:
            received = Received(body=body, at=time.monotonic(), authorization=authorization)
            self.received.append(received)
            seen = self._seen.get(received.key, 0)
            self._seen[received.key] = seen + 1
        return self.faults(body, seen) if self.faults else None

    def completion(self, body: Body) -> bytes:
        n = int(body.get("n") or 1)
        texts = self.script(body)
        texts = [texts] * n if isinstance(texts, str) else list(texts)
        return json.dumps(
            {
                "id": f"chatcmpl-loopback-{time.monotonic_ns()}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", ""),
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                    for i, text in enumerate(texts)
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        ).encode()


def _handler_for(server: LoopbackTeacherServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            """Keep the test output quiet."""

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            body_bytes = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, b'{"error": {"message": "no such route"}}')
                return
            body = json.loads(body_bytes)
            fault = server.record(body, self.headers.get("Authorization", ""))
            if server.latency_s:
                time.sleep(server.latency_s)
            try:
                self._answer(body, fault)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (timeout): nothing left to do

        def _answer(self, body: Body, fault: Fault | None) -> None:
            if fault is None:
                self._send(200, server.completion(body))
            elif fault.kind == "status":
                self._send(fault.status, b'{"error": {"message": "injected server error"}}')
            elif fault.kind == "rate_limit":
                self._send(
                    429, b'{"error": {"message": "injected rate limit"}}', {"Retry-After": f"{fault.retry_after_s:g}"}
                )
            elif fault.kind == "slow":
                time.sleep(fault.delay_s)
                self._send(200, server.completion(body))
            elif fault.kind == "truncated":
                full = server.completion(body)
                self._send(200, full[: len(full) // 2])
            else:
                raise ValueError(f"unknown fault kind {fault.kind!r}")

        def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()

    return Handler
