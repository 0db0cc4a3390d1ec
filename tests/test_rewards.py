"""GRPO rewards: correctness on the shared grader, format, DAPO overlong penalty, weighted total with parts."""

import pytest
from hang_limit import fails_if_it_hangs

from stat_pl.engines.base import Completion
from stat_pl.rewards import CorrectnessReward, FormatReward, OverlongPenalty, combine


def done(text: str, tokens: int = 10, finish: str = "stop") -> Completion:
    return Completion(text, tokens, finish)


def test_correctness_uses_the_grader():
    completions = [done("so \\boxed{\\frac{1}{2}}"), done("\\boxed{0.5}"), done("\\boxed{3}"), done("no answer")]
    assert CorrectnessReward().score(completions, ["1/2"] * 4) == [1.0, 1.0, 0.0, 0.0]


def test_format_rewards_a_readable_answer():
    assert FormatReward().score([done("\\boxed{7}"), done("I think seven")], ["7", "7"]) == [1.0, 0.0]


def test_overlong_penalty_ramps_like_dapo():
    penalty = OverlongPenalty(max_new_tokens=100, buffer_tokens=20)
    completions = [done("a", 80), done("a", 90), done("a", 100), done("a", 100, "length"), done("a", 10)]
    assert penalty.score(completions, [""] * 5) == pytest.approx([0.0, -0.5, -1.0, -1.0, 0.0])
    with pytest.raises(ValueError, match="buffer_tokens"):
        OverlongPenalty(max_new_tokens=10, buffer_tokens=20)


def test_combine_weights_the_parts_and_keeps_each():
    completions = [done("\\boxed{2}", 5), done("two", 10, "length")]
    total, parts = combine(
        [CorrectnessReward(), FormatReward(weight=0.5), OverlongPenalty(10, 5, weight=0.25)], completions, ["2", "2"]
    )
    assert total.tolist() == pytest.approx([1.5, -0.25])
    assert {k: v.tolist() for k, v in parts.items()} == {
        "correct": [1.0, 0.0],
        "format": [1.0, 0.0],
        "overlong": [0.0, -1.0],
    }
    with pytest.raises(ValueError, match="share a name"):
        combine([CorrectnessReward(), CorrectnessReward()], completions, ["2", "2"])


def test_an_adversarial_answer_does_not_hang_the_reward():
    """Its boxed answer equals the gold 0 but is too costly to verify: 0.0 is the time limit's verdict."""
    hostile = done("Let me think. " * 2000 + "\\boxed{10^{10^{10^{10}}}-10^{10^{10^{10}}}}")
    with fails_if_it_hangs(60.0, "CorrectnessReward(timeout_s=1.0) on an adversarial answer"):
        assert CorrectnessReward(timeout_s=1.0).score([hostile, done("\\boxed{0}")], ["0", "0"]) == [0.0, 1.0]
