"""GRPO as users compare it with TRL: stat-pl's loss and LoRA gradients against TRL 1.16's own ``GRPOTrainer``.

Both score the same fixed prompts, completions and advantages on copies of one tiny LoRA Llama. TRL's side is a
real ``GRPOTrainer`` whose ``_compute_loss`` (its log-probs through its fused LM head, its clipped loss, KL and
aggregation) is called on the batch its generation step would have built; stat-pl's side is
:func:`~stat_pl.modules.grpo_forward.micro_batch_loss`, what ``GRPOModule`` calls for each backward. Loss names:
stat-pl's ``token_mean`` / ``seq_mean_token_mean`` / ``seq_mean_token_sum_norm`` are TRL's ``dapo`` / ``grpo`` /
``dr_grpo``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset

from stat_pl.engines.base import Completion
from stat_pl.models import LoRAConfig, load_causal_lm
from stat_pl.modules.grpo_forward import LogprobForward, micro_batch_loss, rollout_logprobs
from stat_pl.modules.grpo_loss import PolicyLoss, group_advantages
from stat_pl.modules.rollouts import Rollouts
from stat_pl.padding import left_pad, right_pad
from stat_pl.tokenizer import load_tokenizer

trl = pytest.importorskip("trl", minversion="1.16", reason="TRL >= 1.16 is not installed (it is in stat-pl[dev])")

PROMPTS = [[5, 17, 33, 8, 90, 41], [7, 3, 12]]  # different lengths: left padding
COMPLETIONS = [[4, 9, 2, 60], [30, 31], [5, 6, 7, 8, 1, 2], [11, 12, 13], [44, 45, 46, 47, 48], [3]]  # 3 per prompt
REWARDS = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 1.0]])
GROUP, MAX_NEW_TOKENS, TEMPERATURE, EPSILON, EPSILON_HIGH = 3, 8, 0.7, 0.2, 0.28
LOSS_TYPES = {"token_mean": "dapo", "seq_mean_token_mean": "grpo", "seq_mean_token_sum_norm": "dr_grpo"}


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    torch.manual_seed(0)
    model = load_causal_lm(str(tiny_model_dir), compute_dtype="float32", lora=LoRAConfig(r=4, alpha=8, dropout=0.0))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at 0; a trained adapter does not
            torch.nn.init.normal_(p, std=0.2)
    return model


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


def frozen_logprobs(policy, tokenizer, shift: float, seed: int) -> torch.Tensor:
    """The policy's log-probs ``[N, L]`` moved by ``shift`` x noise: an "old" policy or a reference (0 at padding)."""
    with torch.no_grad():
        logp, _, mask = rollout_logprobs(
            policy, stat_pl_rollouts(), [0, 1], tokenizer.pad_token_id, LogprobForward(TEMPERATURE)
        )
    noise = torch.randn(logp.shape, generator=torch.Generator().manual_seed(seed))
    return (logp + shift * noise) * mask


def stat_pl_rollouts() -> Rollouts:
    completions = [
        [Completion("", len(ids), "stop", tuple(ids)) for ids in COMPLETIONS[g * GROUP : (g + 1) * GROUP]]
        for g in range(len(PROMPTS))
    ]
    advantages = group_advantages(REWARDS, "group")
    return Rollouts(PROMPTS, completions, torch.zeros(len(PROMPTS)), [""] * len(PROMPTS), REWARDS, {}, advantages)


def policy_loss(aggregation: str = "token_mean", beta: float = 0.0, kl_correction: bool = False) -> PolicyLoss:
    return PolicyLoss(MAX_NEW_TOKENS, aggregation, EPSILON, EPSILON_HIGH, beta, kl_correction)


def stat_pl_loss(policy, tokenizer, loss: PolicyLoss, old: torch.Tensor | None, ref: torch.Tensor | None):
    """Loss, sums and LoRA gradients of one update over both groups, as ``GRPOModule`` computes them."""
    rollouts = stat_pl_rollouts()
    lengths = [len(c) for c in COMPLETIONS]
    rows = [(g, i) for g in range(len(PROMPTS)) for i in range(GROUP)]
    per_sequence = lambda values: {r: values[n, : lengths[n]] for n, r in enumerate(rows)}  # noqa: E731
    normaliser = sum(loss.normaliser_share(right_pad(rollouts.completion_ids([g]), 0)[1]) for g in range(2))
    policy.zero_grad()
    value, sums = micro_batch_loss(
        policy,
        rollouts,
        [0, 1],
        normaliser,
        None if old is None else per_sequence(old),
        {} if ref is None else per_sequence(ref),
        tokenizer.pad_token_id,
        LogprobForward(TEMPERATURE),
        loss,
    )
    value.backward()
    return float(value.detach()), sums, lora_grads(policy)


def trl_loss(policy, tokenizer, tmp_path, loss_type: str, beta: float, kl_correction: bool, old, ref):
    """Loss, metrics and LoRA gradients of TRL's ``GRPOTrainer._compute_loss`` on the same batch (one micro-batch
    per optimizer step, one process, float32)."""
    model = copy.deepcopy(policy)
    config = trl.GRPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        report_to="none",
        loss_type=loss_type,
        beta=beta,
        use_bias_correction_kl=kl_correction,
        epsilon=EPSILON,
        epsilon_high=EPSILON_HIGH,
        temperature=TEMPERATURE,
        num_generations=GROUP,
        per_device_train_batch_size=len(COMPLETIONS),
        max_completion_length=MAX_NEW_TOKENS,
    )
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
        args=config,
        train_dataset=Dataset.from_dict({"prompt": ["unused"] * len(COMPLETIONS)}),
        processing_class=tokenizer,
    )
    trainer.current_gradient_accumulation_steps = 1  # what Trainer's loop sets: one micro-batch per step
    pad = tokenizer.pad_token_id
    prompt_ids, prompt_mask = (t.repeat_interleave(GROUP, 0) for t in left_pad(PROMPTS, pad))
    completion_ids, completion_mask = right_pad(COMPLETIONS, pad)
    completion_mask = completion_mask.int()
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": group_advantages(REWARDS, "group").flatten(),
        "old_per_token_logps": old,
        "num_items_in_batch": completion_mask.sum(),
    }
    if ref is not None:
        inputs["ref_per_token_logps"] = ref
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return float(loss.detach()), metrics, lora_grads(trainer.model)


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n}


def assert_same(stat_pl, trl):
    (loss, sums, grads), (trl_value, metrics, trl_grads) = stat_pl, trl
    assert loss == pytest.approx(trl_value, rel=1e-5, abs=1e-7)
    assert grads.keys() == trl_grads.keys() and any(float(g.abs().sum()) > 0 for g in grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(grad, trl_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    for ours, theirs in (("clip_low", "clip_ratio/low_mean"), ("clip_high", "clip_ratio/high_mean"), ("kl", "kl")):
        if theirs in metrics:
            assert sums[ours] / sums["tokens"] == pytest.approx(metrics[theirs], rel=1e-5, abs=1e-7), ours


@pytest.mark.parametrize("off_policy", [False, True], ids=["on-policy", "off-policy"])
@pytest.mark.parametrize("aggregation", list(LOSS_TYPES))
def test_loss_and_lora_gradients_equal_trls_without_kl(policy, tokenizer, tmp_path, aggregation, off_policy):
    old = frozen_logprobs(policy, tokenizer, shift=0.6, seed=1) if off_policy else None
    ours = stat_pl_loss(policy, tokenizer, policy_loss(aggregation), old, None)
    theirs = trl_loss(policy, tokenizer, tmp_path, LOSS_TYPES[aggregation], 0.0, True, old, None)
    assert_same(ours, theirs)
    if off_policy:  # the noise is large enough that the clip acts on both sides
        assert ours[1]["clip_low"] > 0 and ours[1]["clip_high"] > 0


@pytest.mark.parametrize("off_policy", [False, True], ids=["on-policy", "off-policy"])
@pytest.mark.parametrize("kl_correction", [True, False], ids=["ratio-weighted-kl", "plain-k3"])
def test_with_a_kl_term_they_agree_when_the_kl_weighting_does(policy, tokenizer, tmp_path, kl_correction, off_policy):
    """TRL weights the k3 KL by the ratio by default (``use_bias_correction_kl``); stat-pl's
    ``kl_importance_correction`` is that switch, off by default."""
    old = frozen_logprobs(policy, tokenizer, shift=0.3, seed=1) if off_policy else None
    ref = frozen_logprobs(policy, tokenizer, shift=0.5, seed=2)
    ours = stat_pl_loss(policy, tokenizer, policy_loss("token_mean", 0.1, kl_correction), old, ref)
    theirs = trl_loss(policy, tokenizer, tmp_path, "dapo", 0.1, kl_correction, old, ref)
    assert_same(ours, theirs)
    mismatched = stat_pl_loss(policy, tokenizer, policy_loss("token_mean", 0.1, not kl_correction), old, ref)
    assert any(not torch.allclose(mismatched[2][n], g, rtol=1e-3, atol=1e-6) for n, g in theirs[2].items())
