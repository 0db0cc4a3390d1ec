"""The Engine protocol: prompts in, sampled completions out (DESIGN.md, Interfaces)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

Message = dict[str, str]
#: A prompt is raw text (used as is), chat messages (the engine applies the chat template), or token ids
#: (used as is: GRPO trains on exactly the ids it generated from, never on re-tokenised text).
Prompt = str | Sequence[Message] | Sequence[int]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature == 0`` is greedy decoding."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int = 0


@dataclass(frozen=True)
class Completion:
    """One sampled continuation. ``finish_reason`` is ``"stop"`` (EOS or a stop string) or ``"length"``.

    ``token_ids`` are the generated ids up to and including the EOS the model chose (not cut at a stop
    string); ``num_tokens`` counts the tokens before the EOS.
    """

    text: str
    num_tokens: int
    finish_reason: str
    token_ids: tuple[int, ...] = ()


class Engine(Protocol):
    """Generates ``sampling.n`` completions per prompt, grouped by prompt, in prompt order."""

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams) -> list[list[Completion]]: ...
