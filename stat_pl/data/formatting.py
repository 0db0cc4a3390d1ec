"""Chat-template formatting for SFT with the loss on the assistant tokens only, and dynamic padding."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


def prompt_messages(problem: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The student's 0-shot prompt: the problem as the user turn (DESIGN.md, Evaluation)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, {"role": "user", "content": problem}]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, problem: str, system_prompt: str | None = None) -> list[int]:
    """Token ids of the chat-formatted prompt, ending where the assistant's reply starts."""
    ids = tokenizer.apply_chat_template(
        prompt_messages(problem, system_prompt), add_generation_prompt=True, tokenize=True
    )
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def encode_example(
    tokenizer: PreTrainedTokenizerBase, problem: str, solution: str, max_length: int, system_prompt: str | None = None
) -> dict[str, list[int]]:
    """``input_ids`` = prompt + solution + EOS; ``labels`` mask every prompt token with -100.

    The solution is tokenised after the generation prompt rather than re-rendering the whole chat,
    so the boundary is exact for any template, and it ends with the EOS token the engine stops on.
    Examples longer than ``max_length`` are cut at the end of the solution.
    """
    prompt = encode_prompt(tokenizer, problem, system_prompt)
    answer = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt + answer)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + answer)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def collate(examples: Sequence[dict], pad_token_id: int, pad_to_multiple_of: int = 8) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest example (rounded up to ``pad_to_multiple_of``)."""
    longest = max(len(e["input_ids"]) for e in examples)
    width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    batch = {
        "input_ids": torch.full((len(examples), width), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(examples), width), dtype=torch.long),
        "labels": torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long),
        "index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
    }
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        batch["input_ids"][row, :n] = torch.tensor(e["input_ids"])
        batch["attention_mask"][row, :n] = 1
        batch["labels"][row, :n] = torch.tensor(e["labels"])
    return batch
