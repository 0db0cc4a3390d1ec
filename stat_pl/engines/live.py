"""Engines over the model being trained, for callbacks and modules that generate inside ``fit`` and ``test``.

A LightningModule takes part by exposing ``generation_model()``: the ``torch.nn.Module`` to generate
with, holding the current weights (``SFTModule`` returns the live model, or on CPU with 4-bit weights a
float copy with the current adapter). The ``SkillReprofiler`` and ``BenchmarkEvaluator`` callbacks ask
for it through :func:`live_engine`, the one place that knows the convention.

With ``engine: vllm`` the current weights reach vLLM as a saved adapter instead: :class:`LiveVLLM` holds the
one vLLM engine of a run and points it at the adapter as it is now, for the ``SkillReprofiler`` (each round)
and ``GRPOModule`` (each rollout batch).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from transformers import PreTrainedTokenizerBase

from stat_pl.engines.hf import HFEngine
from stat_pl.engines.vllm import VLLMEngine, VLLMSettings

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
    if not isinstance(module, GeneratingModule):
        raise TypeError(
            f"{caller} generates with the model being trained, but {type(module).__name__} has no "
            "generation_model() method; add one returning the torch.nn.Module to generate with"
        )
    return HFEngine(module.generation_model(), tokenizer, batch_size=batch_size, progress=progress)


class LiveVLLM(Callback):
    """One :class:`VLLMEngine` per run that generates with the weights being trained.

    The engine starts on the first :meth:`sync` (vLLM's start-up is paid once, not per round or step). Every
    :meth:`sync` writes the module's adapter as it is now to a folder with PEFT's ``save_pretrained`` and
    loads it under a LoRA id never used before; vLLM keeps its own unquantised base weights, so an adapter
    is never merged into the trained (4-bit) weights. State is rank-local: under DDP each rank that syncs
    starts its own engine, so each rank needs its own folder.

    It is also a Callback that stops vLLM's processes at teardown and when ``fit`` raises: Lightning gives a
    LightningModule no hook on an exception, so a module that owns one returns it from ``configure_callbacks``.

    Args:
        settings: how vLLM holds the model (:class:`VLLMSettings`; None: its defaults).
    """

    def __init__(self, settings: VLLMSettings | None = None) -> None:
        self.settings = settings
        self.engine: VLLMEngine | None = None

    def sync(self, module: AdapterSaving, adapter_dir: Path) -> VLLMEngine:
        """The engine, started if need be, serving ``module``'s current adapter (saved to ``adapter_dir``)."""
        adapter = module.save_adapter(adapter_dir)
        if self.engine is None:
            self.engine = VLLMEngine(module.student.model, self.settings, enable_lora=True)
        self.engine.set_adapter(str(adapter))
        return self.engine

    def close(self) -> None:
        """Stop vLLM's engine processes; the next :meth:`sync` starts a new engine."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.close()
