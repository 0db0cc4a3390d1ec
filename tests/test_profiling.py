"""Stages 1-2 without a teacher: the skill-world oracle, the Skill-Map proxy, and the three detectors."""

from __future__ import annotations

from fractions import Fraction

import pytest

from stat_pl.data.skillworld import SkillWorld, SkillWorldProblem
from stat_pl.grading import grade
from stat_pl.profiling.base import Attempt, Diagnosis
from stat_pl.profiling.detectors import ConsistencyDetector, GroundTruthDetector, LengthDetector
from stat_pl.profiling.oracle import ResponseCheck, SkillWorldOracle, check_response
from stat_pl.profiling.proxy import SkillMapProxy
from stat_pl.records import ProblemRecord


def _problems(n: int = 300) -> list[SkillWorldProblem]:
    world = SkillWorld(seed=11)
    return [p for split in ("train", "validation", "test") for p in world.problems(split, n)]


def _three_step_problems(n: int = 60) -> list[SkillWorldProblem]:
    return SkillWorld(seed=12, levels=(3,)).problems("train", n)


def _corrupted(problem: SkillWorldProblem, wrong_step: int, carry_forward: bool) -> str:
    """The worked solution with a wrong value at ``wrong_step``; later steps keep or carry the error."""
    lines = problem.solution.splitlines()
    for index in range(wrong_step, len(problem.steps) if carry_forward else wrong_step + 1):
        head = lines[index].rpartition(" = ")[0]
        lines[index] = f"{head} = {Fraction(problem.steps[index].value) + 1}"
    if carry_forward:
        lines[-1] = f"Answer: \\boxed{{{Fraction(problem.answer) + 1}}}"
    return "\n".join(lines)


def _attempt(problem: SkillWorldProblem, *responses: str) -> Attempt:
    return Attempt(problem.to_record(), responses)


def test_every_worked_solution_reads_as_fully_right_and_grades_correct() -> None:
    problems = _problems()
    assert {len(p.steps) for p in problems} == {1, 2, 3}
    for problem in problems:
        assert check_response(problem, problem.solution) == ResponseCheck(readable=True), problem.id
        assert grade(problem.solution, problem.answer), problem.id
    diagnoses = SkillWorldOracle().diagnose([_attempt(p, p.solution) for p in problems[:50]])
    assert all(d.skills == () and d.status == "labelled" for d in diagnoses)


@pytest.mark.parametrize("carry_forward", [False, True])
def test_oracle_names_the_skill_of_the_step_corrupted_on_purpose(carry_forward: bool) -> None:
    oracle = SkillWorldOracle()
    for problem in _three_step_problems():
        for wrong_step in range(3):
            response = _corrupted(problem, wrong_step, carry_forward)
            (diagnosis,) = oracle.diagnose([_attempt(problem, response)])
            expected = Diagnosis(problem.id, (problem.steps[wrong_step].skill,), "labelled")
            assert diagnosis == expected, response


def test_right_steps_with_a_wrong_final_answer_blame_the_last_step() -> None:
    problem = _three_step_problems(1)[0]
    response = problem.solution.replace(f"\\boxed{{{problem.answer}}}", "\\boxed{123456789}")
    assert check_response(problem, response) == ResponseCheck(readable=True, blamed_step=2)


def test_oracle_is_lenient_on_layout_but_exact_on_values() -> None:
    problem = next(p for p in _three_step_problems(300) if "/" in p.answer and int(p.steps[0].value) > 999)
    numerator, denominator = problem.answer.split("/")
    plain = [
        f"  step {i}:   {s.work.rpartition(' = ')[0]} =   {s.value}  " for i, s in enumerate(problem.steps, start=1)
    ]
    plain[0] = f"**Step 1 {problem.steps[0].skill}**: = {int(problem.steps[0].value):,}"
    plain[2] = f"Step 3 [{problem.steps[2].skill}: = \\frac{{{numerator}}}{{{denominator}}}"
    response = "\n".join([*plain, f"So the answer is \\boxed{{{problem.answer}}}."])
    assert check_response(problem, response) == ResponseCheck(readable=True)
    off_by_a_little = response.replace(f"{{{numerator}}}", f"{{{int(numerator) * 1000 + 1}}}")
    assert check_response(problem, off_by_a_little).blamed_step == 2


def test_missing_steps_blame_the_first_missing_skill() -> None:
    problem = _three_step_problems(1)[0]
    first_two = "\n".join(problem.solution.splitlines()[:2])
    (diagnosis,) = SkillWorldOracle().diagnose([_attempt(problem, first_two)])
    assert diagnosis.skills == (problem.steps[2].skill,)


@pytest.mark.parametrize(
    "garbage", ["", "I don't know.", "42", "\\boxed{}", "Step one: think hard", "Step 1: 1 = 0\nStep 2: 2 = 0"]
)
def test_garbage_is_unreadable_and_falls_back_to_the_question_labels(garbage: str) -> None:
    problem = _three_step_problems(1)[0]
    (with_labels,) = SkillWorldOracle().diagnose([_attempt(problem, garbage)])
    (without,) = SkillWorldOracle(fallback_to_labels=False).diagnose([_attempt(problem, garbage)])
    assert with_labels == Diagnosis(problem.id, problem.skills, "unreadable")
    assert without == Diagnosis(problem.id, (), "unreadable")


def test_several_responses_name_each_wrong_skill_once_and_ignore_unreadable_ones() -> None:
    problem = _three_step_problems(1)[0]
    responses = (
        _corrupted(problem, 2, False),
        "gibberish",
        _corrupted(problem, 0, True),
        _corrupted(problem, 2, True),
        problem.solution,
    )
    (diagnosis,) = SkillWorldOracle().diagnose([_attempt(problem, *responses)])
    assert diagnosis == Diagnosis(problem.id, (problem.steps[2].skill, problem.steps[0].skill), "labelled")


def test_oracle_refuses_questions_that_are_not_from_the_skill_world() -> None:
    record = ProblemRecord(id="math/test/7", problem="1+1?", answer="2", skills=("addition",))
    with pytest.raises(ValueError, match="math/test/7"):
        SkillWorldOracle().diagnose([Attempt(record, ("Step 1: 1 + 1 = 2",))])


def test_skill_map_proxy_names_the_question_labels() -> None:
    labelled = ProblemRecord(id="a", problem="p", answer="1", skills=("percentages", "powers"))
    unlabelled = ProblemRecord(id="b", problem="p", answer="1")
    assert SkillMapProxy().diagnose([Attempt(labelled, ("x",)), Attempt(unlabelled, ("x",))]) == [
        Diagnosis("a", ("percentages", "powers"), "labelled"),
        Diagnosis("b", (), "unlabelled"),
    ]


def _record(answer: str = "1/2") -> ProblemRecord:
    return ProblemRecord(id="q", problem="What is one half?", answer=answer)


def test_ground_truth_detector_flags_wrong_answers_and_unreliable_majorities() -> None:
    detector = GroundTruthDetector()
    assert detector.samples_per_question == 1
    assert detector.detect(
        [Attempt(_record(), ("so \\boxed{\\frac{1}{2}}",)), Attempt(_record(), ("so \\boxed{2}",))]
    ) == [False, True]
    voting = GroundTruthDetector(samples_per_question=3)
    two_of_three = ("\\boxed{0.5}", "\\boxed{1/2}", "\\boxed{3}")
    one_of_two = ("\\boxed{1/2}", "\\boxed{3}")
    assert voting.detect([Attempt(_record(), two_of_three), Attempt(_record(), one_of_two)]) == [False, True]


def test_consistency_detector_counts_equivalent_answers_as_one_vote_cluster() -> None:
    detector = ConsistencyDetector()
    assert (detector.samples_per_question, detector.min_votes) == (5, 2)
    agreeing = ("\\boxed{1/2}", "\\boxed{\\frac{1}{2}}", "\\boxed{3}", "\\boxed{4}", "\\boxed{5}")
    scattered = ("\\boxed{1}", "\\boxed{2}", "\\boxed{3}", "\\boxed{4}", "\\boxed{5}")
    no_answers = ("I give up", "no idea", "", "hmm", "\\boxed{7}")
    verdicts = detector.detect([Attempt(_record(), r) for r in (agreeing, scattered, no_answers)])
    assert verdicts == [False, True, True]
    assert ConsistencyDetector(k=5, min_votes=3).detect([Attempt(_record(), agreeing)]) == [True]
    with pytest.raises(ValueError, match="min_votes"):
        ConsistencyDetector(k=2, min_votes=3)


def test_length_detector_flags_a_mean_of_exactly_min_words() -> None:
    assert LengthDetector().detect([Attempt(_record(), ("word " * 800,)), Attempt(_record(), ("word " * 799,))]) == [
        True,
        False,
    ]
    detector = LengthDetector(min_words=10, samples_per_question=2)
    assert detector.detect([Attempt(_record(), ("a " * 9, "a " * 11)), Attempt(_record(), ("a " * 9, "a " * 10))]) == [
        True,
        False,
    ]


def test_detectors_refuse_a_question_without_responses() -> None:
    for detector in (GroundTruthDetector(), ConsistencyDetector(), LengthDetector()):
        with pytest.raises(ValueError, match="'q' has no responses"):
            detector.detect([Attempt(_record(), ())])
