"""Engines over the model being trained, for callbacks and modules that generate inside ``fit`` and ``test``.

A LightningModule takes part by exposing ``generation_model()``: the ``torch.nn.Module`` to generate
with, holding the current weights (``SFTModule`` returns the live model, or on CPU with 4-bit weights a
float copy with the current adapter). The ``SkillReprofiler`` and ``BenchmarkEvaluator`` callbacks ask
for it through :func:`live_engine`, the one place that knows the convention.

With ``engine: vllm`` the current weights reach vLLM as a saved adapter instead: :class:`LiveVLLM` holds the
one vLLM engine of a run and points it at the adapter as it is now, for the ``SkillReprofiler`` (each round)
and ``GRPOModule`` (each rollout batch). With ``engine: vllm_server`` :class:`~stat_pl.engines.server.LiveServer`
does the same with a separate ``vllm serve``. :func:`live_generator` picks between them from the config.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from transformers import PreTrainedTokenizerBase

from stat_pl.engines.choice import EngineChoice, choose_engine
from stat_pl.engines.hf import HFEngine
from stat_pl.engines.server import LiveServer, ServerSettings
from stat_pl.engines.vllm import VLLMEngine, VLLMSettings, require_vllm, sleep_mode_available
from stat_pl.errors import UserError

if TYPE_CHECKING:
    from stat_pl.models import StudentConfig


@runtime_checkable
class GeneratingModule(Protocol):
    """A LightningModule that callbacks can generate with (``SFTModule``, ``GRPOModule``)."""

    def generation_model(self) -> torch.nn.Module: ...


class AdapterSaving(Protocol):
    """A module whose trainable weights are a PEFT adapter (``AdapterModule``): its student and a writer."""

    student: StudentConfig

    def save_adapter(self, path: str | Path) -> Path: ...


def live_engine(
    module: GeneratingModule,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    progress: bool = True,
    caller: str = "a callback",
) -> HFEngine:
    """An :class:`HFEngine` over ``module.generation_model()``; it restores train mode and the RNG after use."""
    return HFEngine(live_model(module, caller), tokenizer, batch_size=batch_size, progress=progress)


def live_model(module: GeneratingModule, caller: str = "a callback") -> torch.nn.Module:
    """``module.generation_model()``: the model with the current weights, for a generation or a forward."""
    if not isinstance(module, GeneratingModule):
        raise TypeError(
            f"{caller} generates with the model being trained, but {type(module).__name__} has no "
            "generation_model() method; add one returning the torch.nn.Module to generate with"
        )
    return module.generation_model()


def live_generator(
    engine: EngineChoice, key: str, vllm: VLLMSettings | None, server: ServerSettings | None
) -> LiveVLLM | LiveServer | None:
    """What generates with the weights being trained when it is not HF (None): this run's colocated vLLM, or the
    separate server. ``key`` is the owner's config prefix (``model.``, ``SkillReprofiler.``), for the errors."""
    if vllm is not None and engine in ("hf", "vllm_server"):
        raise UserError(
            f"{key}vllm is set but {key}engine is {engine!r}, which ignores it; set {key}engine: vllm (or auto) "
            f"or remove {key}vllm"
        )
    chosen = choose_engine(engine, f"{key}engine")
    if server is not None and chosen != "vllm_server":
        raise UserError(f"{key}server is set but {key}engine is {engine!r}; set {key}engine: vllm_server")
    if chosen == "vllm_server":
        if server is None:
            raise UserError(f"{key}engine: vllm_server needs {key}server: {{url: http://<host>:8000/v1}}")
        return LiveServer(server)
    if chosen == "vllm":
        require_vllm(f"{key}engine")
        return LiveVLLM(vllm)
    return None


class LiveVLLM(Callback):
    """One :class:`VLLMEngine` per run that generates with the weights being trained, colocated with training.

    The engine starts on first use (vLLM's start-up is paid once, not per round or step). Each use
    (:meth:`serving`) writes the module's adapter as it is now with PEFT's ``save_pretrained`` and loads it under a
    LoRA id never used before; vLLM keeps its own unquantised base weights, so an adapter is never merged into the
    trained (4-bit) weights. As TRL's colocate mode does, the engine shares the training GPU: it takes
    ``gpu_memory_utilization`` of it while awake and, where vLLM has sleep mode (CUDA), sleeps between uses, its
    weights in host memory and its KV cache dropped, so the optimizer step gets that memory back. State is
    rank-local: under DDP each rank that generates starts its own engine, so each rank needs its own folder.

    It is also a Callback that stops vLLM's processes at teardown and when ``fit`` raises: Lightning gives a
    LightningModule no hook on an exception, so a module that owns one returns it from ``configure_callbacks``.

    Args:
        settings: how vLLM holds the model (:class:`VLLMSettings`; None: its defaults). Unset ``max_model_len`` is
            the caller's longest prompt + completion; unset ``enable_sleep_mode`` is on where vLLM has it.
    """

    def __init__(self, settings: VLLMSettings | None = None) -> None:
        self.settings = settings or VLLMSettings()
        self.engine: VLLMEngine | None = None

    @contextlib.contextmanager
    def serving(
        self, module: AdapterSaving, adapter_dir: Path, max_model_len: int | None = None
    ) -> Iterator[VLLMEngine]:
        """The engine, awake and serving ``module``'s current adapter (saved to ``adapter_dir``); asleep after."""
        if self.engine is None:
            self.engine = VLLMEngine(module.student.model, self._settings(max_model_len), enable_lora=True)
        self.engine.wake_up()
        self.engine.set_adapter(str(module.save_adapter(adapter_dir)))
        try:
            yield self.engine
        finally:
            self.engine.sleep()

    def _settings(self, max_model_len: int | None) -> VLLMSettings:
        settings = self.settings
        if settings.max_model_len is None and max_model_len is not None:
            settings = replace(settings, max_model_len=max_model_len)
        if settings.enable_sleep_mode is None:
            settings = replace(settings, enable_sleep_mode=sleep_mode_available())
        return settings

    def close(self) -> None:
        """Stop vLLM's engine processes; the next :meth:`sync` starts a new engine."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.close()
