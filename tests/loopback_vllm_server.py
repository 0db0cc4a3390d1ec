"""A real HTTP stand-in for ``vllm serve`` on 127.0.0.1 that generates for real with HFEngine, for the server engine.

It speaks the parts of vLLM's OpenAI-compatible API that :class:`~stat_pl.engines.server.VLLMServerEngine` uses, as
vLLM does:

* ``GET /v1/models``: the served base model(s), then every loaded adapter with the base model as its ``parent``;
* ``POST /v1/completions``: token-id prompts (a list of lists), ``n``, ``temperature``, ``top_p``, ``seed``,
  ``max_tokens``, ``stop``, ``return_token_ids``; ``model`` is the base model or a loaded adapter's name. One
  HFEngine call generates the batch, so the answer is what HFEngine gives for the same ids. Choices are numbered
  ``prompt_index * n + sample`` as vLLM numbers them, and listed in reverse, so a client that relies on the list's
  order instead of ``index`` is caught;
* ``POST /v1/load_lora_adapter`` / ``unload_lora_adapter``: the PEFT adapter folder loaded for real onto a copy of
  the base model (plain-text success answers and a 400 for a reused name, as vLLM; 404 for routes not there when
  started with ``enable_lora=False``, as vLLM without ``--enable-lora`` or ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``).

And misbehaves on cue: ``return_token_ids=False`` answers without ids (a vLLM older than 0.10.2), ``fail_first``
answers the first requests with 503 (a server still starting behind a proxy).
"""

from __future__ import annotations

import copy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from peft import PeftModel

from stat_pl.engines.base import SamplingParams
from stat_pl.engines.hf import HFEngine

Body = dict[str, Any]


class HTTPAnswer(Exception):
    """An error answer: an HTTP status and its JSON body."""

    def __init__(self, status: int, body: Body) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


def vllm_error(status: int, message: str) -> HTTPAnswer:
    """An error in vLLM's shape (``{"error": {...}}``)."""
    return HTTPAnswer(status, {"error": {"message": message, "type": "BadRequestError", "code": status}})


class LoopbackVLLMServer:
    """Use as ``with LoopbackVLLMServer(model_dir) as server:``; ``server.base_url`` is the engine's ``url``.

    Args:
        model_dir: the base model (a folder HFEngine loads).
        served_name: the name ``/v1/models`` gives the base model.
        other_models: more base models listed (not served), to make the served model ambiguous.
        enable_lora: whether the runtime LoRA routes exist.
        return_token_ids: whether completions carry ``token_ids`` when asked.
        fail_first: how many requests are answered 503 before the server works.
    """

    def __init__(
        self,
        model_dir: Path,
        served_name: str = "tiny",
        other_models: tuple[str, ...] = (),
        enable_lora: bool = True,
        return_token_ids: bool = True,
        fail_first: int = 0,
    ) -> None:
        self.base = HFEngine(str(model_dir), batch_size=16, progress=False)
        self.served_name = served_name
        self.other_models = other_models
        self.enable_lora = enable_lora
        self.return_token_ids = return_token_ids
        self.fail_first = fail_first
        self.adapters: dict[str, HFEngine] = {}
        self.loaded: list[str] = []  # every adapter name loaded, in order
        self.unloaded: list[str] = []
        self.requests: list[tuple[str, Body]] = []  # (path, body) of every request, as it arrived
        self._lock = threading.Lock()  # one request at a time: HFEngine forks the global RNG
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self), bind_and_activate=False)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> LoopbackVLLMServer:
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

    def __enter__(self) -> LoopbackVLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- routes ----------------------------------------------------------------------------------
    def answer(self, method: str, path: str, body: Body) -> Body | str:
        """The answer to one request, or an :class:`HTTPAnswer` raised for an error."""
        with self._lock:
            self.requests.append((path, body))
            if len(self.requests) <= self.fail_first:
                raise vllm_error(503, "injected: the server is not ready")
            route = (method, path.rstrip("/"))
            if route == ("GET", "/v1/models"):
                return self.models()
            if route == ("POST", "/v1/completions"):
                return self.completions(body)
            if self.enable_lora and route == ("POST", "/v1/load_lora_adapter"):
                return self.load(body["lora_name"], body["lora_path"])
            if self.enable_lora and route == ("POST", "/v1/unload_lora_adapter"):
                return self.unload(body["lora_name"])
            raise HTTPAnswer(404, {"detail": "Not Found"})  # FastAPI's answer for a route that is not there

    def models(self) -> Body:
        bases = [
            {"id": name, "object": "model", "root": name, "parent": None}
            for name in (self.served_name, *self.other_models)
        ]
        loras = [{"id": name, "object": "model", "root": name, "parent": self.served_name} for name in self.adapters]
        return {"object": "list", "data": bases + loras}

    def completions(self, body: Body) -> Body:
        engine = self.base if body.get("model") == self.served_name else self.adapters.get(body.get("model"))
        if engine is None:
            raise vllm_error(404, f"The model `{body.get('model')}` does not exist.")
        prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
        stop = body.get("stop") or ()
        sampling = SamplingParams(
            max_new_tokens=body.get("max_tokens", 16),
            temperature=body.get("temperature", 1.0),
            top_p=body.get("top_p", 1.0),
            n=body.get("n", 1),
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            seed=body.get("seed") or 0,
        )
        choices = []
        for prompt_index, samples in enumerate(engine.generate(prompts, sampling)):
            for sample_index, completion in enumerate(samples):
                choice = {
                    "index": prompt_index * sampling.n + sample_index,
                    "text": completion.text,
                    "finish_reason": completion.finish_reason,
                    "logprobs": None,
                }
                if body.get("return_token_ids") and self.return_token_ids:
                    choice["token_ids"] = list(completion.token_ids)
                    choice["prompt_token_ids"] = prompts[prompt_index]
                choices.append(choice)
        return {
            "id": f"cmpl-loopback-{time.monotonic_ns()}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": choices[::-1],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    def load(self, name: str, path: str) -> str:
        if name in self.adapters:
            raise vllm_error(400, f"The lora adapter '{name}' has already been loaded.")
        if not (Path(path) / "adapter_config.json").is_file():
            raise vllm_error(404, f"No adapter found for {path}")
        model = PeftModel.from_pretrained(copy.deepcopy(self.base.model), path).eval()
        self.adapters[name] = HFEngine(model, self.base.tokenizer, batch_size=16, progress=False)
        self.loaded.append(name)
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload(self, name: str) -> str:
        if self.adapters.pop(name, None) is None:
            raise vllm_error(404, f"The lora adapter '{name}' cannot be found.")
        self.unloaded.append(name)
        return f"Success: LoRA adapter '{name}' removed successfully."


def _handler_for(server: LoopbackVLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            """Keep the test output quiet."""

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            self._respond("GET", {})

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            self._respond("POST", json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}"))

        def _respond(self, method: str, body: Body) -> None:
            try:
                answer = server.answer(method, self.path, body)
            except HTTPAnswer as e:
                self._send(e.status, json.dumps(e.body).encode(), "application/json")
                return
            if isinstance(answer, str):
                self._send(200, answer.encode(), "text/plain; charset=utf-8")
            else:
                self._send(200, json.dumps(answer).encode(), "application/json")

        def _send(self, status: int, payload: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()

    return Handler
