"""STAT-Syn against a real OpenAI-compatible server on 127.0.0.1 with scripted teacher outputs.

What a user relies on: exactly the questions the teacher answers consistently survive, with exactly
the agreeing solutions (agreement by math-verify equivalence, not string equality); a new question
that copies a test or training question is rejected and counted; a rerun pays for nothing; the live
loop's rounds ask for new samples and never add the same question twice.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
from loopback_teacher import Body, LoopbackTeacherServer, prompt_text

from stat_pl.building import BuildInputs, ContaminationGuard, StatSyn
from stat_pl.missing_skill_profile import MissingSkillProfile
from stat_pl.records import ProblemRecord, problem_tokens
from stat_pl.teacher import OpenAICompatibleTeacher

KEY_ENV = "STAT_PL_TEST_SYN_KEY"
TEST_QUESTION = ProblemRecord(
    "test/planted",
    "Let $f(x) = 3x^2 - 5x + 7$. Evaluate $f(f(1))$ and give the answer "
    "as an integer, showing all of your intermediate steps.",
    "40",
)

# what the teacher writes for each skill: (question, its three solutions by sample)
WRITES = {
    "alpha": [
        ("Consistent by equivalence: halve one. [alpha-1]", ["\\boxed{\\frac{1}{2}}", "\\boxed{0.5}", "\\boxed{1/2}"]),
        ("Two of three agree. [alpha-2]", ["\\boxed{12}", "\\boxed{7}", "\\boxed{12.0}"]),
    ],
    "beta": [
        ("Every solution differs. [beta-1]", ["\\boxed{1}", "\\boxed{2}", "\\boxed{3}"]),
        (TEST_QUESTION.problem.replace("$", ""), ["\\boxed{40}"] * 3),
    ],
    "gamma": [
        ("No final answer anywhere. [gamma-1]", ["I am not sure.", "Hmm.", "\\boxed{5}"]),
        ("Also consistent. [gamma-2]", ["\\boxed{x+1}", "\\boxed{1+x}", "\\boxed{x + 1}"]),
    ],
}
SOLUTIONS = {question: solutions for pairs in WRITES.values() for question, solutions in pairs}
CONSISTENT = {
    "Consistent by equivalence: halve one. [alpha-1]": SOLUTIONS["Consistent by equivalence: halve one. [alpha-1]"],
    "Two of three agree. [alpha-2]": ["\\boxed{12}", "\\boxed{12.0}"],
    "Also consistent. [gamma-2]": SOLUTIONS["Also consistent. [gamma-2]"],
}


def script(body: Body) -> list[str]:
    text = prompt_text(body)
    if text.startswith("Solve the following"):
        question = text.split("\\boxed{}.\n\n", 1)[1].strip()
        solutions = ["\\boxed{3}"] * 3 if question.startswith("Round ") else SOLUTIONS[question]
        return [f"Working for sample {i}. Answer: {s}" for i, s in enumerate(solutions)]
    skill = re.search(r'use the skill "([^"]+)"', text).group(1)
    seed = body.get("seed") or 0
    written = [f"<question>{q}</question>" for q, _ in WRITES[skill]]
    if seed:  # a later live round: new questions for the same pair
        written = [f"<question>Round {seed}: {skill} question {i}. [{skill}-{i}]</question>" for i in range(2)]
    return written


def pool() -> list[ProblemRecord]:
    return [
        ProblemRecord(
            f"train/{skill}/{i}",
            f"Training question {i} on {skill}: compute {i} times {i}.",
            str(i * i),
            (f"{i} times {i} is \\boxed{{{i * i}}}",),
            subject="algebra",
            skills=(skill,),
        )
        for skill in WRITES
        for i in range(4)
    ]


PROFILE = MissingSkillProfile.from_questions({"test/1": ["alpha"], "test/2": ["beta", "gamma"]})


@pytest.fixture
def server():
    with LoopbackTeacherServer(script) as srv:
        yield srv


@pytest.fixture
def teacher(server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    return OpenAICompatibleTeacher(
        model="loop",
        base_url=server.base_url,
        api_key_env=KEY_ENV,
        cache_dir=str(tmp_path / "cache"),
        concurrency=8,
        max_retries=0,
    )


def build_syn(teacher, target_size: int | None = None) -> tuple:
    """STAT-Syn on PROFILE; ``target_size`` None keeps one row per accepted question with all its solutions."""
    records = pool()
    guard = ContaminationGuard.from_records([*records, TEST_QUESTION])
    inputs = BuildInputs(
        pool=records, pool_path="pool.jsonl", profile=PROFILE, profile_path="profile.json", teacher=teacher, guard=guard
    )
    return StatSyn(target_size=target_size).build(inputs), guard


def test_exactly_the_consistent_questions_survive_with_exactly_the_agreeing_solutions(teacher):
    dataset, _ = build_syn(teacher)

    kept = {row.record.problem: row for row in dataset.rows}
    assert set(kept) == set(CONSISTENT)
    for question, row in kept.items():
        assert [s.split("Answer: ")[1] for s in row.record.solutions] == CONSISTENT[question]
        assert row.provenance["votes"] == len(CONSISTENT[question])
        assert row.provenance["origin"] == "synthetic" and row.record.source == "stat_syn"
    assert kept["Two of three agree. [alpha-2]"].record.answer == "12"
    alpha = kept["Consistent by equivalence: halve one. [alpha-1]"]
    assert alpha.provenance["difficult_question"] == "test/1" and alpha.record.skills == ("alpha",)
    assert set(alpha.provenance["example_ids"]) <= {f"train/alpha/{i}" for i in range(4)}
    assert len(alpha.provenance["example_ids"]) == 3
    assert dataset.stats["rejected"] == {"contaminated": 1, "inconsistent": 2}
    assert dataset.stats["proposed"] == 6 and dataset.stats["accepted"] == 3


def test_stat_syn_is_cut_to_its_target_in_qa_pairs_with_the_profiles_skill_shares(teacher):
    assert StatSyn().target_size == 9500  # the paper's size, as STAT-Sel
    dataset, _ = build_syn(teacher, target_size=6)

    # accepted: alpha 3 + 2 agreeing solutions, gamma 3, beta none; shares 1/3 each, beta's spread over the others
    assert len(dataset.rows) == 6 and dataset.stats["shortfall"] == 0
    assert Counter(r.provenance["target_skill"] for r in dataset.rows) == {"alpha": 3, "gamma": 3}
    for row in dataset.rows:
        (solution,) = row.record.solutions
        assert solution.split("Answer: ")[1] in CONSISTENT[row.record.problem]


def test_a_planted_copy_of_a_test_question_is_rejected_as_contamination(teacher):
    dataset, _ = build_syn(teacher)

    (example,) = dataset.stats["contaminated_examples"]
    assert example["copies"] == "test/planted" and example["overlap"] == 1.0
    assert all("f(f(1))" not in row.record.problem for row in dataset.rows)


def test_the_prompt_shows_three_linked_questions_with_solutions(server, teacher):
    build_syn(teacher)

    prompts = [prompt_text(r.body) for r in server.received if "use the skill" in prompt_text(r.body)]
    assert len(prompts) == 3  # one per (difficult question, missing skill)
    alpha = next(p for p in prompts if '"alpha"' in p)
    assert alpha.count("Training question") == 3 and alpha.count("is \\boxed{") == 3
    assert "on alpha" in alpha and "on beta" not in alpha


def test_a_rerun_pays_for_nothing_and_builds_the_same_rows(server, teacher, tmp_path):
    first, _ = build_syn(teacher)
    count = server.count
    again, _ = build_syn(
        OpenAICompatibleTeacher(
            model="loop", base_url=server.base_url, api_key_env=KEY_ENV, cache_dir=str(tmp_path / "cache")
        )
    )

    assert server.count == count
    assert [r.to_json() for r in again.rows] == [r.to_json() for r in first.rows]


def test_live_rounds_ask_for_new_samples_and_never_add_a_question_twice(teacher):
    records = pool()
    guard = ContaminationGuard.from_records([*records, TEST_QUESTION])
    first = StatSyn().synthesize_for_profile(PROFILE, teacher, records, max_new=10, guard=guard)
    repeat = StatSyn().synthesize_for_profile(PROFILE, teacher, records, max_new=10, guard=guard)
    later = StatSyn().synthesize_for_profile(PROFILE, teacher, records, max_new=2, guard=guard, round_index=1)

    assert {r.record.problem for r in first} == set(CONSISTENT)
    assert repeat == []  # the same round again: every question is a duplicate of one already seen
    assert len(later) == 2 and all(r.record.problem.startswith("Round 100000") for r in later)
    assert not {r.record.id for r in later} & {r.record.id for r in first}


def test_the_guard_catches_near_copies_but_not_new_questions_on_the_same_topic():
    guard = ContaminationGuard.from_records([TEST_QUESTION])

    assert (
        guard.check(
            "  let f(x)=3x^2-5x+7. EVALUATE f(f(1)) and give the answer as an integer, showing all "
            "of your intermediate steps."
        )
        is not None
    )  # spacing, case and $ do not hide a copy
    padded = TEST_QUESTION.problem + " Then also find f(2) and f(3), and explain which of the two is larger."
    assert guard.check(padded).reference_id == "test/planted"  # a copy with a sentence added
    assert guard.check("Let $g(x) = 2x + 1$. Find $g(g(4))$.") is None  # same topic, new question
    assert problem_tokens("$\\left( x \\right)$") == ("(", "x", ")")
