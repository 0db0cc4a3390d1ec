"""GRPO's training forward: per-token log-probs of G completions of one prompt, the prompt forwarded once.

A group's G completions share their prompt. :func:`completion_logprobs` runs the decoder over each
prompt once, repeats its KV cache G times and runs only the completions on top of it, so a prompt of
``T`` tokens costs ``T`` instead of ``G x T`` token-forwards, and gradients still reach the adapter
through the prompt's keys and values. The LM head runs only on the hidden states that predict
completion tokens (never full-vocabulary logits for prompt tokens, as ``logits_to_keep`` would, nor for
the padding after a short completion), in chunks of ``chunk_tokens`` positions recomputed in the
backward, so a long completion never holds its whole ``[L, V]`` logits at once. ``shared_prompt=False``
forwards G full rows (the reference the tests compare against, and the path under gradient
checkpointing, which turns the KV cache off).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.checkpoint import checkpoint

from stat_pl.engines.hf import left_pad
from stat_pl.models import CACHE_KWARG
from stat_pl.modules.grpo_loss import token_logprobs


def right_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids[N, L], mask[N, L])``, each sequence left-aligned (completions follow their prompt)."""
    width = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.float32)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def completion_logprobs(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    temperature: float,
    pad_token_id: int,
    shared_prompt: bool = True,
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probs ``[N, L]`` of the completions at ``temperature``, their entropies ``[N, L]`` (no grad) and mask.

    ``completion_ids`` hold ``G`` completions per prompt, group after group (``N = len(prompt_ids) x G``).
    ``model`` is a causal LM (PEFT-wrapped or not) whose decoder and head are reached with
    ``get_decoder`` / ``get_output_embeddings``.
    """
    group = len(completion_ids) // len(prompt_ids)
    if group * len(prompt_ids) != len(completion_ids):
        raise ValueError(
            f"{len(completion_ids)} completions are not a whole number of groups of {len(prompt_ids)} prompts"
        )
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(model.parameters()).device
    prompts, prompt_mask = (t.to(device) for t in left_pad(prompt_ids, pad_token_id))  # [B, T]
    targets, mask = (t.to(device) for t in right_pad(completion_ids, pad_token_id))  # [N, L]
    forward = _shared_prompt_hidden if shared_prompt else _full_row_hidden
    hidden = forward(base.get_decoder(), prompts, prompt_mask, targets, group)  # [N, L, H]
    logp, entropy = _head_logprobs(base.get_output_embeddings(), hidden, targets, mask, temperature, chunk_tokens)
    return logp, entropy, mask


def _shared_prompt_hidden(
    decoder: torch.nn.Module, prompts: torch.Tensor, prompt_mask: torch.Tensor, targets: torch.Tensor, group: int
) -> torch.Tensor:
    """Hidden states that predict each completion token, each prompt run once and its cache repeated."""
    prompt_positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]
    out = decoder(input_ids=prompts, attention_mask=prompt_mask, position_ids=prompt_positions, use_cache=True)
    cache = getattr(out, CACHE_KWARG)
    cache.batch_repeat_interleave(group)  # [B, ...] -> [N, ...]
    last = out.last_hidden_state[:, -1:].repeat_interleave(group, 0)  # [N, 1, H]: predicts the first token
    if targets.shape[1] == 1:
        return last
    lengths = prompt_mask.sum(-1).repeat_interleave(group, 0)  # [N]
    positions = lengths[:, None] + torch.arange(targets.shape[1] - 1, device=targets.device)  # [N, L-1]
    # Right padding after a completion is attended by nothing real (causal), so the completion mask is all ones.
    attention = torch.cat([prompt_mask.repeat_interleave(group, 0), torch.ones_like(targets[:, :-1])], dim=1)
    rest = decoder(
        input_ids=targets[:, :-1],
        attention_mask=attention,
        position_ids=positions,
        use_cache=True,
        **{CACHE_KWARG: cache},
    ).last_hidden_state  # [N, L-1, H]
    return torch.cat([last, rest], dim=1)  # [N, L, H]


def _full_row_hidden(
    decoder: torch.nn.Module, prompts: torch.Tensor, prompt_mask: torch.Tensor, targets: torch.Tensor, group: int
) -> torch.Tensor:
    """The same hidden states from ``N`` full rows ``[left-padded prompt | completion]``."""
    width = prompts.shape[1]
    ids = torch.cat([prompts.repeat_interleave(group, 0), targets], dim=1)  # [N, T+L]
    mask = torch.cat([prompt_mask.repeat_interleave(group, 0), torch.ones_like(targets)], dim=1)  # [N, T+L]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [N, T+L]
    hidden = decoder(
        input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], use_cache=False
    ).last_hidden_state  # [N, T+L-1, H]
    return hidden[:, width - 1 :]  # [N, L, H]


def _head_logprobs(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    chunk_tokens: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LM head + log-probs on the real completion tokens only (0 at padding), ``chunk_tokens`` positions of every
    row at a time (``chunk_tokens x N`` tokens); entropies for logging only."""
    real = mask.bool()  # [N, L]
    flat_hidden, flat_targets = hidden[real], targets[real]  # [M, H], [M]
    step = chunk_tokens * len(targets) if chunk_tokens else max(1, len(flat_targets))
    logps, entropies = [], []
    for start in range(0, len(flat_targets), step):
        h, t = flat_hidden[start : start + step], flat_targets[start : start + step]  # [C, H], [C]
        if chunk_tokens and torch.is_grad_enabled():
            logp, entropy = checkpoint(_chunk, head, h, t, temperature, use_reentrant=False)
        else:
            logp, entropy = _chunk(head, h, t, temperature)
        logps.append(logp)
        entropies.append(entropy)
    zeros = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)  # [N, L]
    logp = zeros.masked_scatter(real, torch.cat(logps)) if logps else zeros
    entropy = zeros.masked_scatter(real, torch.cat(entropies)) if entropies else zeros
    return logp, entropy  # [N, L], [N, L]


def _chunk(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return token_logprobs(head(hidden), targets, temperature)  # logits [C, V] -> [C], [C]
