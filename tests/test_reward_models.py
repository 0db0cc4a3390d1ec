"""Reward-model detectors: the paper's PRM rule, the one-pass step scores, batching, the ORM threshold."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stat_pl.models import load_causal_lm
from stat_pl.profiling.base import Attempt
from stat_pl.profiling.reward_models import (
    OutcomeRewardDetector,
    PRMLastStepDetector,
    ProcessRewardDetector,
    RewardModelScorer,
    prm_is_difficult,
    split_steps,
)
from stat_pl.records import ProblemRecord
from stat_pl.tokenizer import load_tokenizer

# Scores and thresholds are dyadic fractions, so every equality below is exact in floating point.
TAU1, TAU2 = 0.75, 0.5


@pytest.mark.parametrize(
    ("scores", "difficult"),
    [
        ([1.0, 1.0, 0.75], True),  # last step at tau1 (equality): difficult by r_t alone
        ([1.0, 1.0, 0.875], False),  # last step just above tau1, mean and earlier steps fine
        ([0.625, 0.625, 1.0], True),  # mean 0.75 = tau1: difficult by the mean alone (last and earlier fine)
        ([0.625, 1.0, 1.0], False),  # mean 0.875: fine
        ([1.0, 0.5, 1.0, 1.0], True),  # an earlier step at tau2 (equality): difficult by it alone (mean 0.875)
        ([1.0, 0.5625, 1.0, 1.0], False),  # the same step just above tau2
        ([1.0], False),
        ([0.75], True),
    ],
)
def test_prm_rule_each_branch_and_its_edge(scores, difficult):
    assert prm_is_difficult(scores, TAU1, TAU2) is difficult


def test_prm_rule_paper_defaults_and_the_last_step_is_not_held_to_tau2():
    assert prm_is_difficult([0.9, 0.95, 0.9]) is False  # tau1 = 0.85, tau2 = 0.7
    assert prm_is_difficult([0.9, 0.69, 0.99]) is True
    # r_t is judged by tau1 only: a last step below tau2 but above tau1 passes when tau2 > tau1
    assert prm_is_difficult([1.0, 1.0, 0.625], tau1=0.5, tau2=0.75) is False
    with pytest.raises(ValueError, match="no step scores"):
        prm_is_difficult([])


def test_steps_are_paragraphs():
    assert split_steps("Step 1: a\n\n  \nStep 2: b\nstill b\n\n\n") == ["Step 1: a", "Step 2: b\nstill b"]
    assert split_steps("  \n\n ") == []


def attempts(responses_per_question: list[tuple[str, ...]]) -> list[Attempt]:
    return [
        Attempt(ProblemRecord(id=f"q{i}", problem=f"what is {i} + {i}?", answer=str(2 * i)), responses)
        for i, responses in enumerate(responses_per_question)
    ]


RESPONSES = [
    ("Step 1: add 0 and 0\n\nStep 2: the sum is 0\n\n\\boxed{0}",),
    ("1 + 1 = 2",),
    ("Step 1: x\n\nStep 2: " + "1 + 1 = 2 " * 12 + "\n\nStep 3: y\n\nStep 4: \\boxed{4}",),
    ("",),  # no steps: not scored, counts as bad
]


def reference_step_scores(model_dir: Path, problem: str, response: str) -> list[float]:
    """RLHFlow's reference reading: one forward pass per step on the conversation cut after that step."""
    return reference_scores_with(
        load_tokenizer(str(model_dir)), load_causal_lm(str(model_dir)).eval(), problem, response
    )


def reference_scores_with(tokenizer, model, problem: str, response: str) -> list[float]:
    plus, minus = (tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in ("+", "-"))
    steps = split_steps(response)
    messages, scores = [], []
    for k, step in enumerate(steps):
        messages.append({"role": "user", "content": f"{problem} {step}" if k == 0 else step})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0, -1, [plus, minus]]
        scores.append(logits.softmax(-1)[0].item())
        messages.append({"role": "assistant", "content": "+"})
    return scores


def test_one_pass_batched_scores_equal_the_per_step_reference(tiny_model_dir):
    def prm(batch_size: int) -> ProcessRewardDetector:
        return ProcessRewardDetector(RewardModelScorer(str(tiny_model_dir), batch_size=batch_size, progress=False))

    batched, unbatched = prm(3).step_scores(attempts(RESPONSES)), prm(1).step_scores(attempts(RESPONSES))

    assert [len(s[0]) for s in batched] == [3, 1, 4, 0]
    for got, expected in zip(batched, unbatched, strict=True):
        assert got[0] == pytest.approx(expected[0], abs=1e-5)
    problem = attempts(RESPONSES)[2].record.problem
    assert batched[2][0] == pytest.approx(reference_step_scores(tiny_model_dir, problem, RESPONSES[2][0]), abs=1e-5)
    assert all(0.0 < s < 1.0 for per_q in batched for s in per_q[0])


def test_reply_tokens_must_be_single_tokens(tiny_model_dir):
    detector = ProcessRewardDetector(RewardModelScorer(str(tiny_model_dir), good_token="a plus sign", progress=False))
    with pytest.raises(ValueError, match="good_token='a plus sign' is .* tokens"):
        detector.detect(attempts(RESPONSES[:1]))


def scripted(detector, scores: list[list[float]]):
    """The detector with its reward model replaced by fixed scores per conversation (tests the rules only)."""
    detector.scorer.score_turns = lambda conversations: [scores[i] for i in range(len(conversations))]
    return detector


def test_prm_detector_applies_the_rule_and_a_majority_over_samples():
    detector = scripted(
        ProcessRewardDetector(RewardModelScorer("unused"), samples_per_question=3),
        [[0.9, 0.9], [0.9, 0.6], [0.9, 0.9], [0.9], [0.5]],
    )
    three = ("a\n\nb", "c\n\nd", "e\n\nf")

    # question 0: 2 of 3 fine -> easy; question 1: 1 fine (one empty response, one low) -> difficult
    assert detector.detect(attempts([three, ("g", "", "h")])) == [False, True]


def test_orm_threshold_is_inclusive_and_reads_question_and_response_as_one_turn(tiny_model_dir):
    detector = scripted(OutcomeRewardDetector(RewardModelScorer("unused")), [[0.9], [0.90625], [0.5]])
    assert detector.detect(attempts([("a",), ("b",), ("c",)])) == [True, False, True]

    real = OutcomeRewardDetector(
        RewardModelScorer(str(tiny_model_dir), progress=False), threshold=0.9, samples_per_question=2
    )
    scores = real.scores(attempts([RESPONSES[1] * 2, RESPONSES[2] * 2]))
    one_step_prm = ProcessRewardDetector(real.scorer).step_scores(attempts([RESPONSES[1]]))
    assert [len(s) for s in scores] == [2, 2] and scores[0][0] == pytest.approx(scores[0][1])
    assert scores[0][0] == pytest.approx(one_step_prm[0][0][0], abs=1e-5)  # a one-step response: ORM == PRM
    assert real.detect(attempts([RESPONSES[1] * 2])) == [scores[0][0] <= 0.9]


def test_the_orm_ablation_reads_the_prms_last_step_score_at_the_papers_threshold():
    detector = scripted(PRMLastStepDetector(RewardModelScorer("unused")), [[0.1, 0.9], [0.1, 0.90625], [1.0, 1.0, 0.5]])
    assert detector.threshold == 0.9 and detector.scorer.model == "unused"
    # only r_t counts (an early 0.1 does not, unlike the PRM rule); r_t = 0.9 is bad (inclusive); no steps: bad
    assert detector.detect(attempts([("a\n\nb",), ("c\n\nd",), ("e\n\nf\n\ng",), ("",)])) == [True, False, True, True]


def test_prm_reads_real_smollm2(smollm2_dir):
    """The code path on a real chat template (SmolLM2 adds a default system turn); the scores mean nothing."""
    detector = ProcessRewardDetector(RewardModelScorer(str(smollm2_dir), batch_size=2, progress=False))
    responses = [("We add.\n\n2 + 3 = 5\n\nSo the answer is \\boxed{5}.",), ("The answer is \\boxed{6}.",)]

    scores = detector.step_scores(attempts(responses))

    assert [len(s[0]) for s in scores] == [3, 1]
    problem = attempts(responses)[0].record.problem
    reference = reference_scores_with(detector.scorer.tokenizer, detector.scorer.load(), problem, responses[0][0])
    assert scores[0][0] == pytest.approx(reference, abs=1e-4)
