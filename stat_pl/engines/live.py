"""An engine over the model being trained, for callbacks that generate inside ``fit`` and ``test``.

A LightningModule takes part by exposing ``generation_model()``: the ``torch.nn.Module`` to generate
with, holding the current weights (``SFTModule`` returns the live model, or on CPU with 4-bit weights a
float copy with the current adapter). The ``SkillReprofiler`` and ``BenchmarkEvaluator`` callbacks ask
for it through :func:`live_engine`, the one place that knows the convention.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from transformers import PreTrainedTokenizerBase

from stat_pl.engines.hf import HFEngine


@runtime_checkable
class GeneratingModule(Protocol):
    """A LightningModule that callbacks can generate with (``SFTModule``, ``GRPOModule``)."""

    def generation_model(self) -> torch.nn.Module: ...


def live_engine(module: GeneratingModule, tokenizer: PreTrainedTokenizerBase, batch_size: int,
                progress: bool = True, caller: str = "a callback") -> HFEngine:
    """An :class:`HFEngine` over ``module.generation_model()``; it restores train mode and the RNG after use."""
    if not isinstance(module, GeneratingModule):
        raise TypeError(f"{caller} generates with the model being trained, but {type(module).__name__} has no "
                        "generation_model() method; add one returning the torch.nn.Module to generate with")
    return HFEngine(module.generation_model(), tokenizer, batch_size=batch_size, progress=progress)
