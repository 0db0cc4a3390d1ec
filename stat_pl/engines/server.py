"""VLLMServerEngine: the Engine protocol on a separate ``vllm serve`` (OpenAI-compatible HTTP), for large jobs.

The trainer's ranks hold no vLLM process: the server runs elsewhere (its own GPUs) and the trainer talks to it
over HTTP through the ``openai`` client (its retries with backoff on connection errors, timeouts and 5xx). What
stays the same as :class:`~stat_pl.engines.vllm.VLLMEngine`, so every engine gives the same Completion for the
same ids:

* prompts are rendered and tokenised here by the Hugging Face tokenizer
  (:func:`~stat_pl.engines.base.prompt_token_ids`) and sent as token ids, one ``POST /v1/completions`` per
  :meth:`VLLMServerEngine.generate` call with the whole batch as ``prompt`` (a list of token-id lists);
* the server returns the ids it sampled (``return_token_ids``, vLLM >= 0.10.2; GRPO trains on exactly them, never
  on re-tokenised text) and :func:`~stat_pl.engines.base.completion_from_ids` cuts and decodes them here;
* sampling is plain temperature + top-p over the whole vocabulary: ``top_k`` 0 (off), and the penalties and
  ``min_p`` sent as neutral values, because ``vllm serve`` otherwise fills whatever a request leaves out from
  the model's ``generation_config.json`` (``--generation-config auto``), which the offline engine never does.

The live training weights reach the server as a saved PEFT adapter through vLLM's runtime LoRA API
(``POST /v1/load_lora_adapter``, ``/v1/unload_lora_adapter``; the server needs ``--enable-lora`` and
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``): each push uses a name never used before, so a folder rewritten in
place is read again, never served from the server's cache, and the name carries a run-unique prefix, so several
trainers (or DDP ranks) sharing one server never clash. The server reads the adapter folder itself: it must see
the trainer's filesystem (``ServerSettings.adapter_root`` maps the path). See ``docs/server_engine.md``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import lightning as L
import openai
from lightning.pytorch.callbacks import Callback

from stat_pl.engines.base import Completion, Prompt, SamplingParams, completion_from_ids, prompt_token_ids
from stat_pl.errors import UserError

if TYPE_CHECKING:
    from stat_pl.engines.live import AdapterSaving

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The vLLM release whose ``/v1/completions`` first returned the sampled ids (``return_token_ids``, PR #22587).
TOKEN_IDS_VLLM = "0.10.2"
_EXCERPT_CHARS = 300


class ServerError(RuntimeError):
    """The server answered, but not as asked: an HTTP error after the retries, or a malformed response."""


@dataclass(frozen=True)
class ServerSettings:
    """Where the ``vllm serve`` is and how to talk to it (``server:`` in a config).

    Args:
        url: base URL of the server's OpenAI-compatible API, e.g. ``http://gpu-node:8000/v1``.
        model: the base model name the server serves (its ``--served-model-name``, else its ``--model``). None: ask
            ``GET /v1/models`` and use the one base model listed (an error when there are several).
        api_key_env: the NAME of the environment variable holding the server's key (its ``--api-key``); None: the
            server has no key. The key never enters a config.
        timeout_s: seconds one HTTP call may take. One :meth:`VLLMServerEngine.generate` is one call carrying the
            whole batch, so this must cover the longest batch's generation.
        max_retries: retries of a call after a connection error (the server is still starting), a timeout or a 5xx,
            with exponential backoff (the ``openai`` client's: 0.5 s doubling up to 8 s, less up to 25 % jitter): the
            default 5 wait ~15 s in all; each more waits 8 s. vLLM answers a LoRA load it refuses (e.g. a rank
            above its ``--max-lora-rank``) with a 500, which is retried too before its message is raised.
        adapter_root: the trainer's working directory as the server sees it, when the two machines mount the shared
            filesystem at different paths: an adapter the trainer writes to ``<cwd>/runs/x/adapter`` is read by the
            server from ``<adapter_root>/runs/x/adapter``. None: the server reads the trainer's own absolute path.
            Either way the server must be able to read the adapter folder.
    """

    url: str
    model: str | None = None
    api_key_env: str | None = None
    timeout_s: float = 600.0
    max_retries: int = 5
    adapter_root: str | None = None

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise UserError(f"server.max_retries must be >= 0, got {self.max_retries}")
        if self.timeout_s <= 0:
            raise UserError(f"server.timeout_s must be > 0 seconds, got {self.timeout_s}")


def server_path(adapter: Path, adapter_root: str | None) -> str:
    """The adapter folder's path as the server sees it (see :attr:`ServerSettings.adapter_root`)."""
    local = adapter.resolve()
    if adapter_root is None:
        return str(local)
    cwd = Path.cwd().resolve()
    if not local.is_relative_to(cwd):
        raise UserError(
            f"server.adapter_root maps the trainer's working directory {cwd}, but the adapter {local} is outside "
            "it; write adapters under the working directory (e.g. a relative default_root_dir) or unset adapter_root"
        )
    return str(Path(adapter_root) / local.relative_to(cwd))


class VLLMServerEngine:
    """Batched generation on a separate ``vllm serve``, optionally through a PEFT adapter pushed at run time.

    Args:
        tokenizer_model: name or folder of the served base model's tokenizer (the student's model), which renders
            prompts to ids and decodes completions here.
        settings: where the server is, see :class:`ServerSettings`.
        system_prompt: an optional system turn before chat prompts (as in HFEngine).
    """

    def __init__(self, tokenizer_model: str, settings: ServerSettings, system_prompt: str | None = None) -> None:
        from stat_pl.tokenizer import load_tokenizer

        self.settings = settings
        self.system_prompt = system_prompt
        self.tokenizer = load_tokenizer(tokenizer_model)
        self.lora_name: str | None = None
        self._base_model = settings.model
        self._prefix = f"stat-pl-{uuid.uuid4().hex[:12]}-{os.getpid()}"
        self._adapters_pushed = 0
        self._client = openai.OpenAI(
            base_url=settings.url,
            api_key=self._api_key(),
            timeout=settings.timeout_s,
            max_retries=settings.max_retries,
        )

    def _api_key(self) -> str:
        if self.settings.api_key_env is None:
            return "EMPTY"  # the openai client insists on a key; a server without --api-key ignores it
        key = os.environ.get(self.settings.api_key_env)
        if not key:
            raise UserError(
                f"environment variable {self.settings.api_key_env} (server.api_key_env) is not set: export it with "
                f"the key of the server at {self.settings.url}, or unset server.api_key_env for a server without one"
            )
        return key

    # ---- generation ------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams) -> list[list[Completion]]:
        if not prompts:
            return []
        ids = [prompt_token_ids(self.tokenizer, p, self.system_prompt) for p in prompts]
        body = self._call(
            "POST /v1/completions",
            lambda: self._client.completions.create(
                model=self.lora_name or self.base_model(),
                prompt=ids,
                **self._sampling_fields(sampling),
                extra_body={
                    "top_k": 0,
                    "min_p": 0.0,
                    "repetition_penalty": 1.0,
                    "return_token_ids": True,
                },
            ),
        )
        return self._completions(body.choices, len(ids), sampling)

    @staticmethod
    def _sampling_fields(sampling: SamplingParams) -> dict[str, Any]:
        """The OpenAI fields of a request; as in VLLMEngine, greedy means top-p 1 and no seed."""
        greedy = sampling.temperature == 0
        fields: dict[str, Any] = {
            "n": sampling.n,
            "temperature": sampling.temperature,
            "top_p": 1.0 if greedy else sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
        }
        if sampling.stop:
            fields["stop"] = list(sampling.stop)
        if not greedy:
            fields["seed"] = sampling.seed
        return fields

    def _completions(self, choices: list[Any], num_prompts: int, sampling: SamplingParams) -> list[list[Completion]]:
        """Choices grouped per prompt in prompt order: vLLM numbers them ``prompt_index * n + sample``."""
        expected = num_prompts * sampling.n
        if len(choices) != expected:
            raise ServerError(
                f"{self.settings.url}: /v1/completions answered {len(choices)} choices for {num_prompts} prompts "
                f"x n={sampling.n}; expected {expected}"
            )
        ordered = sorted(choices, key=lambda c: c.index)
        missing = [c.index for c in ordered if getattr(c, "token_ids", None) is None]
        if missing:
            raise UserError(
                f"the server at {self.settings.url} returned no token ids (choices {missing[:5]}): "
                f"return_token_ids needs vLLM >= {TOKEN_IDS_VLLM} (stat-pl's vllm extra asks for >= 0.11); "
                "upgrade the server's vLLM"
            )
        completions = [completion_from_ids(self.tokenizer, c.token_ids, sampling) for c in ordered]
        return [completions[i : i + sampling.n] for i in range(0, expected, sampling.n)]

    def base_model(self) -> str:
        """The served base model: :attr:`ServerSettings.model`, else the one base model ``GET /v1/models`` lists.

        vLLM lists loaded LoRA adapters there too, with the base model as their ``parent``; they are skipped.
        """
        if self._base_model is None:
            listed = self._call("GET /v1/models", lambda: self._client.models.list()).data
            bases = [m.id for m in listed if getattr(m, "parent", None) is None]
            if len(bases) != 1:
                raise UserError(
                    f"the server at {self.settings.url} serves {len(bases)} base models {bases}; set server.model "
                    "to the one to generate with"
                )
            self._base_model = bases[0]
        return self._base_model

    # ---- adapters --------------------------------------------------------------------------------
    def set_adapter(self, path: str | Path | None) -> None:
        """Generate through the PEFT adapter saved at ``path`` from now on (None: the base model).

        The server loads it now under a name never used before (so an adapter rewritten in the same folder is read
        again), then the previous one is unloaded; should the load fail, the previous one stays in use. The server
        checks the rank itself (its ``--max-lora-rank``); its message is in the error.
        """
        previous = self.lora_name
        self.lora_name = None if path is None else self._load(Path(path))
        if previous is not None:
            self._lora_call("unload_lora_adapter", {"lora_name": previous})

    def _load(self, adapter: Path) -> str:
        """Push ``adapter`` under a fresh name and return the name."""
        if not (adapter / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"VLLMServerEngine: {adapter / 'adapter_config.json'} is missing; pass a folder written by PEFT's "
                "save_pretrained"
            )
        self._adapters_pushed += 1
        name = f"{self._prefix}-{self._adapters_pushed}"
        path = server_path(adapter, self.settings.adapter_root)
        self._lora_call("load_lora_adapter", {"lora_name": name, "lora_path": path})
        return name

    def _lora_call(self, route: str, body: dict[str, str]) -> None:
        """One call of vLLM's runtime LoRA API (it answers plain text); 404 means the API is switched off."""
        try:
            self._call(f"POST /v1/{route}", lambda: self._client.post(f"/{route}", cast_to=str, body=body))
        except ServerError as e:
            if _no_such_route(e.__cause__):
                raise UserError(
                    f"the server at {self.settings.url} has no /v1/{route} (404): start it with --enable-lora and "
                    "the environment variable VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (docs/server_engine.md)"
                ) from e
            raise

    # ---- HTTP ------------------------------------------------------------------------------------
    def _call(self, what: str, send: Callable[[], T]) -> T:
        """``send()`` with the openai client's retries; its failures become errors that name the URL and status."""
        try:
            return send()
        except openai.APIConnectionError as e:
            raise UserError(
                f"cannot reach the vLLM server at {self.settings.url} ({what}: {e.__cause__ or e}) after "
                f"{self.settings.max_retries} retries (server.max_retries); is `vllm serve` running there?"
            ) from e
        except openai.APIStatusError as e:
            raise ServerError(
                f"{self.settings.url}: {what} answered HTTP {e.status_code}: {e.response.text[:_EXCERPT_CHARS]}"
            ) from e

    def close(self) -> None:
        """Unload this engine's adapter from the server (the server itself runs on) and close the connections."""
        try:
            self.set_adapter(None)
        finally:
            self._client.close()


def _no_such_route(error: BaseException | None) -> bool:
    """A 404 for a route the server does not have (``Not Found``, as FastAPI says it, or in vLLM's error shape), not
    vLLM's LoRA code's own 404 for an adapter folder or name it cannot find."""
    if not isinstance(error, openai.NotFoundError):
        return False
    try:
        body = error.response.json()
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    vllm_error = body.get("error")
    message = vllm_error.get("message") if isinstance(vllm_error, dict) else body.get("detail")
    return message == "Not Found"


class LiveServer(Callback):
    """The :class:`~stat_pl.engines.live.LiveVLLM` of a separate ``vllm serve``: generation with the weights being
    trained, for the ``SkillReprofiler`` (each round) and ``GRPOModule`` (each rollout batch).

    The engine is made on first use (its tokenizer is the module's ``student.model``); the server is external, so
    nothing starts or sleeps here. Each use (:meth:`serving`) writes the module's adapter as it is now and pushes
    it under a new name, replacing this run's previous one. Under DDP each rank pushes its own adapter from its own
    folder (names are unique per process), all to the one server.

    It is also a Callback that unloads this run's adapter at teardown and when ``fit`` raises, as LiveVLLM stops
    its engine.

    Args:
        settings: where the server is (:class:`ServerSettings`).
    """

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.engine: VLLMServerEngine | None = None

    @contextlib.contextmanager
    def serving(
        self, module: AdapterSaving, adapter_dir: Path, max_model_len: int | None = None
    ) -> Iterator[VLLMServerEngine]:
        """The engine serving ``module``'s current adapter (saved to ``adapter_dir``, which the server must read).

        ``max_model_len`` is accepted for LiveVLLM's signature and unused: the server's own ``--max-model-len``
        holds.
        """
        if self.engine is None:
            self.engine = VLLMServerEngine(module.student.model, self.settings)
        self.engine.set_adapter(module.save_adapter(adapter_dir))
        yield self.engine

    def close(self) -> None:
        """Unload this run's adapter; an unreachable server is logged, not raised (it may be why the run ended)."""
        if self.engine is None:
            return
        engine, self.engine = self.engine, None
        try:
            engine.close()
        except (UserError, ServerError) as e:
            log.warning("LiveServer: could not unload adapter %s: %s", engine.lora_name, e)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.close()
