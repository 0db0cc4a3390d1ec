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

from dataclasses import dataclass
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
    Returns ``(logp[...], entropy[...])``, both float32, also under bf16 autocast (which would otherwise run
    the softmax's reductions over the vocabulary in bf16).
    """
    with torch.autocast(logits.device.type, enabled=False):
        z = logits.float()  # [..., V]
        if temperature != 1.0:
            z = z / temperature
        log_probs = torch.log_softmax(z, dim=-1)  # [..., V]
        logp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [...]
        with torch.no_grad():
            entropy = -(log_probs.exp() * log_probs).sum(-1)  # [...]
    return logp, entropy


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


@dataclass(frozen=True)
class PolicyLoss:
    """GRPO's per-token objective and its aggregation, built once from :class:`GRPOModule`'s arguments.

    Per token: PPO's clipped surrogate (:func:`clipped_surrogate`), plus ``beta`` x the k3 KL to the reference
    (:func:`k3_kl`), which ``kl_importance_correction`` multiplies by the ratio ``pi / pi_old`` (TRL's
    ``use_bias_correction_kl``: an unbiased gradient of the reverse KL, DeepSeek-V3.2). Then
    :func:`aggregate` over the update's global normaliser (:meth:`normaliser_share` per micro-batch).
    """

    max_new_tokens: int
    aggregation: Aggregation = "token_mean"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    beta: float = 0.0
    kl_importance_correction: bool = False

    def normaliser_share(self, mask: torch.Tensor) -> float:
        """This micro-batch's share of the update's denominator (:func:`update_normaliser`)."""
        return update_normaliser(mask, self.aggregation, self.max_new_tokens)

    def __call__(
        self,
        logp: torch.Tensor,
        old_logp: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        normaliser: float,
        ref_logp: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """This micro-batch's part of the update's loss, and its sums over real tokens to log.

        ``logp``, ``old_logp``, ``ref_logp`` and ``mask`` are ``[N, L]``, ``advantages`` ``[N]``; ``ref_logp`` (the
        reference's log-probs) is needed when ``beta > 0``. The sums: ``tokens``, ``clip_low`` / ``clip_high``
        (tokens whose gradient the clip removed), ``approx_kl`` (k3 to the old policy), ``kl`` (the weighted term
        the loss adds, when ``beta > 0``) and ``loss``.
        """
        per_token, low, high = clipped_surrogate(logp, old_logp, advantages, self.epsilon, self.epsilon_high)
        sums = {
            "tokens": float(mask.sum()),
            "clip_low": float((low * mask).sum()),
            "clip_high": float((high * mask).sum()),
            "approx_kl": float((k3_kl(logp.detach(), old_logp) * mask).sum()),
        }
        if self.beta > 0:
            if ref_logp is None:
                raise ValueError("beta > 0 needs the reference model's log-probs (ref_logp)")
            kl = k3_kl(logp, ref_logp)  # [N, L]
            if self.kl_importance_correction:
                kl = kl * torch.exp(logp - old_logp)  # [N, L]
            per_token = per_token + self.beta * kl  # [N, L]
            sums["kl"] = float((kl.detach() * mask).sum())
        loss = aggregate(per_token, mask, self.aggregation, normaliser)
        sums["loss"] = float(loss.detach())
        return loss, sums
