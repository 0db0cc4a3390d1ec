"""GRPO's math as pure functions: group-relative advantages, log-probs, the clipped surrogate, its aggregation.

Shapes: ``B`` groups (prompts), ``G`` completions per group, ``N = B x G`` sequences, ``L`` completion
tokens, ``V`` vocabulary. ``mask[N, L]`` is 1 on real completion tokens (including the EOS the policy
chose) and 0 on padding. The module (:mod:`stat_pl.modules.grpo`) calls these; the tests check them
against numbers worked out by hand.

Aggregation (how per-token losses become one scalar) follows the names verl uses:

* ``token_mean`` (DAPO): every token of the update weighs the same;
* ``seq_mean_token_mean`` (GRPO as published): each sequence's token mean, averaged over sequences;
* ``seq_mean_token_sum_norm`` (Dr. GRPO): token sums over ``sequences x max_new_tokens``, a constant
  that does not depend on the lengths the policy chose.

The denominator is *global to the update*: :func:`update_normaliser` gives one micro-batch's share,
the caller sums the shares of all micro-batches (and all ranks) of an optimizer step, and every
micro-batch's :func:`aggregate` divides by that total. The micro-batch losses then add up to the
loss of the whole update computed at once, so the gradient does not depend on how it was split.
"""

from __future__ import annotations

from typing import Literal

import torch

AdvantageScale = Literal["group", "batch", "none"]
Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
AGGREGATIONS: tuple[str, ...] = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def group_advantages(rewards: torch.Tensor, scale: AdvantageScale = "group", eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages: each reward minus its group's mean, optionally divided by a std.

    ``scale="group"`` divides by the group's (unbiased) std (GRPO), ``"batch"`` by the std of all rewards
    of the batch (TRL's ``scale_rewards="batch"``), ``"none"`` not at all (Dr. GRPO). A group whose
    rewards are all equal gets advantages of exactly 0, never rounding noise over a tiny std.
    """
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [groups, completions per group >= 2], got shape {tuple(rewards.shape)}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # [B, G]
    if scale == "group":
        centred = centred / (rewards.std(dim=1, keepdim=True) + eps)  # [B, G]
    elif scale == "batch":
        centred = centred / (rewards.std() + eps)  # [B, G]
    elif scale != "none":
        raise ValueError(f"advantage scale must be 'group', 'batch' or 'none', got {scale!r}")
    constant = rewards.amax(dim=1, keepdim=True) == rewards.amin(dim=1, keepdim=True)  # [B, 1]
    return torch.where(constant, torch.zeros_like(centred), centred)  # [B, G]


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each target token under ``softmax(logits / temperature)`` (the sampling
    distribution), and the entropy of that distribution at each position (for logging; no gradient).

    ``logits[..., V]`` are the logits that predict ``targets[...]`` (already shifted by the caller).
    Returns ``(logp[...], entropy[...])``; see :class:`_TokenLogprobs` for how.
    """
    return _TokenLogprobs.apply(logits, targets, temperature)


class _TokenLogprobs(torch.autograd.Function):
    """``log p(target) = z[target] - logsumexp(z)`` with ``z = logits / T``, and the entropy, in few passes over V.

    The vocabulary is the widest axis of a GRPO step (49,152 for SmolLM2, 128,256 for Llama 3), so passes
    over ``[..., V]`` count. The forward keeps the softmax it needs for the entropy,
    ``logsumexp(z) - sum(softmax(z) * z)``, and the backward reuses it: the gradient of ``log p(target)`` is
    ``(onehot(target) - softmax(z)) / T``, one product and a scatter. Autograd's own graph for the same
    expression would rebuild the softmax in ``logsumexp``'s backward, fill a zero ``[..., V]`` tensor for the
    gather's, and add the two.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, temperature: float):
        z = logits.float()  # [..., V]
        if temperature != 1.0:
            z = z / temperature
        lse = torch.logsumexp(z, dim=-1)  # [...]
        probs = (z - lse.unsqueeze(-1)).exp_()  # [..., V]
        with torch.autocast(z.device.type, enabled=False):  # a float32 dot product, also under bf16 autocast
            entropy = lse - (probs.unsqueeze(-2) @ z.unsqueeze(-1)).view(lse.shape)  # [...]
        logp = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse  # [...]
        ctx.save_for_backward(probs, targets)
        ctx.temperature, ctx.logits_dtype = temperature, logits.dtype
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp: torch.Tensor, grad_entropy: torch.Tensor):
        probs, targets = ctx.saved_tensors
        grad = probs * grad_logp.neg().unsqueeze(-1)  # [..., V]
        grad.scatter_add_(-1, targets.unsqueeze(-1), grad_logp.unsqueeze(-1))
        if ctx.temperature != 1.0:
            grad.div_(ctx.temperature)
        return grad.to(ctx.logits_dtype), None, None


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped objective per token, as a loss (to minimise), and where it clipped.

    ``ratio = exp(logp - old_logp)`` is clipped to ``[1 - epsilon, 1 + epsilon_high]`` (``epsilon_high``
    defaults to ``epsilon``; DAPO's clip-higher raises it). Returns ``(loss[N, L], clipped_low[N, L],
    clipped_high[N, L])``: the boolean masks mark tokens whose gradient the clip removed.
    """
    high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logp - old_logp)  # [N, L]
    adv = advantages.unsqueeze(-1)  # [N, 1]
    unclipped = ratio * adv  # [N, L]
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + high) * adv  # [N, L]
    loss = -torch.minimum(unclipped, clipped)  # [N, L]
    clipped_low = (ratio < 1 - epsilon) & (adv < 0)  # [N, L]
    clipped_high = (ratio > 1 + high) & (adv > 0)  # [N, L]
    return loss, clipped_low, clipped_high


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(policy || reference) per token: ``exp(r - p) - (r - p) - 1 >= 0``."""
    delta = ref_logp - logp  # [N, L]
    return torch.exp(delta) - delta - 1  # [N, L]


def update_normaliser(mask: torch.Tensor, aggregation: Aggregation, max_new_tokens: int) -> float:
    """This micro-batch's share of the update's loss denominator (sum the shares of all micro-batches and ranks).

    Tokens for ``token_mean``, sequences for ``seq_mean_token_mean``, sequences x ``max_new_tokens`` for
    ``seq_mean_token_sum_norm``.
    """
    if aggregation == "token_mean":
        return float(mask.sum())
    if aggregation == "seq_mean_token_mean":
        return float(mask.shape[0])
    if aggregation == "seq_mean_token_sum_norm":
        return float(mask.shape[0] * max_new_tokens)
    raise ValueError(f"loss aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, aggregation: Aggregation, normaliser: float) -> torch.Tensor:
    """This micro-batch's part of the update's loss: its masked sum over the update's ``normaliser``."""
    masked = per_token * mask  # [N, L]
    if aggregation == "seq_mean_token_mean":
        per_sequence = masked.sum(-1) / mask.sum(-1).clamp(min=1)  # [N]
        return per_sequence.sum() / normaliser
    if aggregation in ("token_mean", "seq_mean_token_sum_norm"):
        return masked.sum() / normaliser
    raise ValueError(f"loss aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of ``values`` over the real tokens (for logging)."""
    return float((values * mask).sum() / mask.sum().clamp(min=1))
