"""GRPO's math against numbers worked out by hand, and the update-global normaliser."""

import math

import pytest
import torch

from stat_pl.modules.grpo_loss import (
    PolicyLoss,
    aggregate,
    clipped_surrogate,
    group_advantages,
    k3_kl,
    token_logprobs,
    update_normaliser,
)


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    # group: mean 0.5, unbiased std sqrt(1/3) = 0.57735
    group = group_advantages(rewards, "group")
    assert group[0].tolist() == pytest.approx([0.866, -0.866, -0.866, 0.866], abs=2e-3)
    # batch: the 8 rewards have unbiased std sqrt(1.5 / 7) = 0.46291
    batch = group_advantages(rewards, "batch")
    assert batch[0].tolist() == pytest.approx([1.0801, -1.0801, -1.0801, 1.0801], abs=2e-3)
    # none (Dr. GRPO): centred only
    assert group_advantages(rewards, "none")[0].tolist() == [0.5, -0.5, -0.5, 0.5]
    for scale in ("group", "batch", "none"):
        assert group_advantages(rewards, scale)[1].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_equal_rewards_give_exactly_zero_even_when_the_mean_rounds():
    rewards = torch.tensor([[0.7, 0.7, 0.7], [0.1, 0.1, 0.1]])
    for scale in ("group", "batch", "none"):
        assert torch.equal(group_advantages(rewards, scale), torch.zeros(2, 3))


def test_bad_shapes_and_scales_are_named():
    with pytest.raises(ValueError, match="completions per group >= 2"):
        group_advantages(torch.ones(3, 1))
    with pytest.raises(ValueError, match="'group', 'batch' or 'none'"):
        group_advantages(torch.ones(2, 2), "rank")  # type: ignore[arg-type]


def test_log_probs_and_entropy_at_the_sampling_temperature():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    target = torch.tensor([1])
    logp, entropy = token_logprobs(logits, target)
    assert logp.item() == pytest.approx(math.log(0.75))
    assert entropy.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    s3 = math.sqrt(3.0)
    assert token_logprobs(logits, target, temperature=2.0)[0].item() == pytest.approx(math.log(s3 / (1 + s3)))
    assert token_logprobs(torch.zeros(1, 4), torch.tensor([0]))[1].item() == pytest.approx(math.log(4.0))


def test_log_probs_match_log_softmax_and_their_gradient_too():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, requires_grad=True)
    targets = torch.randint(0, 11, (3, 5))
    logp, entropy = token_logprobs(logits, targets, temperature=0.7)
    full = torch.log_softmax(logits / 0.7, dim=-1)
    expected = full.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logp, expected)
    torch.testing.assert_close(entropy, -(full.exp() * full).sum(-1).detach())
    assert not entropy.requires_grad
    (grad,) = torch.autograd.grad(logp.sum(), logits)
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(grad, expected_grad)


def test_clipped_surrogate_by_hand():
    logp = torch.tensor([[math.log(1.5), math.log(0.5)]])
    old = torch.zeros(1, 2)
    loss, low, high = clipped_surrogate(logp, old, torch.tensor([1.0]), epsilon=0.2)
    assert loss[0, 0].item() == pytest.approx(-1.2) and bool(high[0, 0]) and not bool(low[0, 0])
    assert loss[0, 1].item() == pytest.approx(-0.5) and not bool(high[0, 1])  # ratio < 1 with A > 0: no clip
    loss, _, high = clipped_surrogate(logp, old, torch.tensor([1.0]), epsilon=0.2, epsilon_high=0.6)
    assert loss[0, 0].item() == pytest.approx(-1.5) and not bool(high[0, 0])  # clip-higher lets it through
    loss, low, _ = clipped_surrogate(logp, old, torch.tensor([-1.0]), epsilon=0.2)
    assert loss[0, 1].item() == pytest.approx(0.8) and bool(low[0, 1])


def test_k3_kl_by_hand():
    kl = k3_kl(torch.tensor([0.0, 0.3]), torch.tensor([math.log(2.0), 0.3]))
    assert kl.tolist() == pytest.approx([2 - math.log(2.0) - 1, 0.0], abs=1e-6)


@pytest.mark.parametrize("correction, expected_grad", [(False, 0.5), (True, math.log(2.0))])
def test_kl_importance_correction_by_hand(correction, expected_grad):
    """At the old policy both KL terms are worth k3; the ratio-weighted one (TRL's default) has the reverse KL's
    gradient ``log(pi / ref)``, the plain k3 ``1 - ref / pi``. pi = 0.5, ref = 0.25, advantage 0: the KL alone."""
    logp = torch.tensor([[math.log(0.5)]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25)]])
    loss, sums = PolicyLoss(max_new_tokens=4, beta=1.0, kl_importance_correction=correction)(
        logp, logp.detach(), torch.zeros(1), torch.ones(1, 1), 1.0, ref
    )
    assert loss.item() == pytest.approx(math.log(2.0) - 0.5) and sums["kl"] == pytest.approx(math.log(2.0) - 0.5)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad.item() == pytest.approx(expected_grad)


@pytest.mark.parametrize(
    "mode, expected",
    [("token_mean", 10 / 4), ("seq_mean_token_mean", (2 + 4) / 2), ("seq_mean_token_sum_norm", 10 / (2 * 4))],
)
def test_aggregations_by_hand(mode, expected):
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert aggregate(per_token, mask, mode, update_normaliser(mask, mode, max_new_tokens=4)).item() == pytest.approx(
        expected
    )


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_micro_batch_gradients_add_up_to_the_one_shot_gradient(mode):
    torch.manual_seed(0)
    weight = torch.randn(5, 7, requires_grad=True)
    hidden = torch.randn(6, 4, 5)
    targets = torch.randint(0, 7, (6, 4))
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]).float()
    adv = torch.randn(6)

    def loss_of(rows: slice, normaliser: float) -> torch.Tensor:
        logp, _ = token_logprobs(hidden[rows] @ weight, targets[rows], temperature=0.7)
        per_token, _, _ = clipped_surrogate(logp, logp.detach() - 0.1, adv[rows])
        return aggregate(per_token, mask[rows], mode, normaliser)

    (one_shot,) = torch.autograd.grad(loss_of(slice(0, 6), update_normaliser(mask, mode, 4)), weight)
    parts = [slice(0, 2), slice(2, 5), slice(5, 6)]
    total = sum(update_normaliser(mask[p], mode, 4) for p in parts)
    summed = sum(torch.autograd.grad(loss_of(p, total), weight)[0] for p in parts)
    torch.testing.assert_close(summed, one_shot, rtol=1e-5, atol=1e-7)


def test_log_probs_and_entropy_stay_float32_under_bf16_autocast():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 1000) * 4
    targets = torch.randint(0, 1000, (2, 3))
    expected = token_logprobs(logits, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = token_logprobs(logits, targets)
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
