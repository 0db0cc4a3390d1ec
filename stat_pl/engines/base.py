"""The Engine protocol: prompts in, sampled completions out (DESIGN.md, Interfaces)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Message = dict[str, str]
#: A prompt is raw text (used as is), chat messages (the engine applies the chat template), or token ids
#: (used as is: GRPO trains on exactly the ids it generated from, never on re-tokenised text).
Prompt = str | Sequence[Message] | Sequence[int]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature == 0`` is greedy decoding; otherwise plain temperature sampling over the
    whole vocabulary, cut by ``top_p`` only (no top-k). Generation ends at the model's EOS, at the first
    ``stop`` string (cut from the text), or after ``max_new_tokens``.
    """

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


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, system_prompt: str | None = None) -> str:
    """Chat messages through the chat template (with the generation prompt); raw text unchanged.

    Every engine renders with this and tokenizes without added special tokens, so all see the same ids.
    """
    if isinstance(prompt, str):
        return prompt
    messages = list(prompt)
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, system_prompt: str | None = None) -> list[int]:
    """Token ids of a prompt, the same for every engine: text and chat messages are rendered
    (:func:`render_prompt`) and tokenised without added special tokens; ids pass through."""
    if not isinstance(prompt, str) and len(prompt) and isinstance(prompt[0], int):
        return list(prompt)
    return tokenizer(render_prompt(tokenizer, prompt, system_prompt), add_special_tokens=False)["input_ids"]


def completion_from_ids(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], sampling: SamplingParams) -> Completion:
    """One completion from its generated token ids, the same for every engine.

    Cut at EOS/padding and at the first stop string; ``stop`` unless the token budget ran out. The
    completion keeps the ids up to and including the EOS the model chose (what GRPO trains on).
    """
    eos = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    end = next((k for k, t in enumerate(ids) if t in eos), None)
    kept = list(ids) if end is None else list(ids[:end])
    chosen = tuple(ids if end is None else ids[: end + 1])
    text = tokenizer.decode(kept, skip_special_tokens=True)
    cut = min((text.find(s) for s in sampling.stop if s in text), default=-1)
    if cut >= 0:
        return Completion(text[:cut], len(kept), "stop", chosen)
    finished = end is not None or len(ids) < sampling.max_new_tokens
    return Completion(text, len(kept), "stop" if finished else "length", chosen)
