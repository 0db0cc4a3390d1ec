"""GRPO's training forward: per-token log-probs of G completions of one prompt, the prompt forwarded once.

:class:`~stat_pl.modules.grpo.GRPOModule` calls :func:`micro_batch_loss` for each backward (the forward, then
:class:`~stat_pl.modules.grpo_loss.PolicyLoss`) and :func:`sequence_logprobs` for the old policy's and the
reference's log-probs; :func:`completion_logprobs` below is the forward itself.

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

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from torch.utils.checkpoint import checkpoint

from stat_pl.models import CACHE_KWARG
from stat_pl.modules.grpo_loss import PolicyLoss, token_logprobs
from stat_pl.modules.rollouts import Rollouts
from stat_pl.padding import left_pad, pad_values, right_pad

#: A completion of a rollout batch: (group, position within the group).
Row = tuple[int, int]


@dataclass(frozen=True)
class LogprobForward:
    """How the training forward scores completions, built once from :class:`GRPOModule`'s arguments.

    ``temperature`` is the sampling temperature (log-probs of the distribution the rollouts came from);
    ``shared_prompt`` forwards each prompt once for its G completions (off under gradient checkpointing, which
    turns the KV cache off); ``chunk_tokens`` runs the LM head over that many completion positions of every row at
    a time (None: all at once).
    """

    temperature: float = 1.0
    shared_prompt: bool = True
    chunk_tokens: int | None = None


def rollout_logprobs(
    model: torch.nn.Module, rollouts: Rollouts, groups: Sequence[int], pad_token_id: int, forward: LogprobForward
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probs, entropies and mask ``[n, L]`` of the completions of ``groups``, group after group."""
    return completion_logprobs(
        model,
        [rollouts.prompt_ids[g] for g in groups],
        rollouts.completion_ids(groups),
        forward.temperature,
        pad_token_id,
        shared_prompt=forward.shared_prompt,
        chunk_tokens=forward.chunk_tokens,
    )


@torch.no_grad()
def sequence_logprobs(
    model: torch.nn.Module,
    rollouts: Rollouts,
    groups: Sequence[int],
    pad_token_id: int,
    forward: LogprobForward,
    micro_groups: int | None,
) -> dict[Row, torch.Tensor]:
    """Each completion's log-probs ``[its length]`` without gradient and without dropout (in eval mode, train mode put
    back after), ``micro_groups`` groups per forward (None: all at once): the "old" policy's or the reference's."""
    out: dict[Row, torch.Tensor] = {}
    micro = micro_groups or max(1, len(groups))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(groups), micro):
            chunk = list(groups[start : start + micro])
            logp, _, mask = rollout_logprobs(model, rollouts, chunk, pad_token_id, forward)  # [n, L]
            rows = [(g, i) for g in chunk for i in range(rollouts.group_size)]
            out.update({r: logp[n, : int(mask[n].sum())] for n, r in enumerate(rows)})
    finally:
        model.train(was_training)
    return out


@contextmanager
def reference_policy(model: torch.nn.Module, initial_adapter: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """``model`` (PEFT) as the KL reference inside the block: with ``initial_adapter`` (training went on from a saved
    adapter) that adapter swapped in for the current one, else the base model with the adapter disabled."""
    if initial_adapter is None:
        with model.disable_adapter():
            yield
        return
    current = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    set_peft_model_state_dict(model, initial_adapter)
    try:
        yield
    finally:
        set_peft_model_state_dict(model, current)


def micro_batch_loss(
    model: torch.nn.Module,
    rollouts: Rollouts,
    groups: list[int],
    normaliser: float,
    old: dict[Row, torch.Tensor] | None,
    ref: dict[Row, torch.Tensor],
    pad_token_id: int,
    forward: LogprobForward,
    loss: PolicyLoss,
) -> tuple[torch.Tensor, dict[str, float]]:
    """This micro-batch's part of an update's loss (over the update's global ``normaliser``) and its sums to log.

    ``old`` holds each completion's old log-probs (None: on-policy, the current ones detached); ``ref`` the
    reference's, used when ``loss.beta > 0``. The sums are :class:`PolicyLoss`'s and ``entropy``.
    """
    logp, entropy, mask = rollout_logprobs(model, rollouts, groups, pad_token_id, forward)  # [n, L] each
    rows = [(g, i) for g in groups for i in range(rollouts.group_size)]
    old_logp = logp.detach() if old is None else pad_values([old[r] for r in rows], logp.shape[1])  # [n, L]
    ref_logp = pad_values([ref[r] for r in rows], logp.shape[1]) if loss.beta > 0 else None  # [n, L]
    advantages = rollouts.advantages[groups].flatten().to(logp.device)  # [n]
    value, sums = loss(logp, old_logp, advantages, mask, normaliser, ref_logp)
    sums["entropy"] = float((entropy * mask).sum())
    return value, sums


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
