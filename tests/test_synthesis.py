"""STAT-Syn against a real OpenAI-compatible server on 127.0.0.1 with scripted teacher outputs.

What a user relies on: exactly the questions the teacher answers consistently survive, with exactly
the agreeing solutions (agreement by math-verify equivalence, not string equality); a new question
that copies a test or training question is rejected and counted; a rerun pays for nothing; the live
loop's rounds ask for new samples and never add the same question twice. The question-writing prompt
asks for the paper's steps (reason, draft, final question); only the final question is kept, an answer
without one is counted and never stored; a separate question teacher writes, the run's teacher solves.
"""

from __future__ import annotations

import io
import re
import sys
from collections import Counter
from contextlib import redirect_stdout
from pathlib import Path
from unittest import mock

import pytest
import yaml
from loopback_teacher import Body, LoopbackTeacherServer, prompt_text

from stat_pl.building import BuildInputs, ContaminationGuard, StatSyn
from stat_pl.building.synthesis import final_question
from stat_pl.cli import main
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
    questions = [q for q, _ in WRITES[skill]]
    if seed:  # a later live round: new questions for the same pair
        questions = [f"Round {seed}: {skill} question {i}. [{skill}-{i}]" for i in range(2)]
    return [with_steps(skill, q) for q in questions]


def with_steps(skill: str, question: str) -> str:
    """A question-writing answer in the prompt's steps; the draft differs from the final question."""
    return (
        f"<reason>The skill {skill} is used by every example; the new problem must need it.</reason>\n"
        f"<draft>DRAFT of a {skill} problem, not yet checked.</draft>\n"
        f"The draft is fine after one fix.\n<question>{question}</question>"
    )


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


# ---- the paper's question-writing steps and the question teacher ------------------------------------


def test_the_prompt_asks_for_reason_draft_and_final_question_in_that_order(server, teacher):
    build_syn(teacher)

    prompts = [prompt_text(r.body) for r in server.received if "use the skill" in prompt_text(r.body)]
    for prompt in prompts:
        steps = [prompt.index(f"<{tag}>") for tag in ("reason", "draft", "question")]
        assert steps == sorted(steps), prompt
        assert "Do not solve the problem" in prompt


def test_only_the_final_question_is_stored_and_solved_never_the_reason_or_draft(server, teacher):
    dataset, _ = build_syn(teacher)

    assert {row.record.problem for row in dataset.rows} == set(CONSISTENT)
    solved = [prompt_text(r.body) for r in server.received if prompt_text(r.body).startswith("Solve the following")]
    assert len(solved) == 5  # 6 written, 1 contaminated
    assert not any("DRAFT" in p or "<reason>" in p for p in solved)
    assert not any("DRAFT" in str(row.to_json()) for row in dataset.rows)
    assert dataset.stats["questions_without_steps"] == 0


def test_final_question_reads_the_last_question_tag_and_never_the_draft():
    assert final_question(with_steps("alpha", "Final one.")) == "Final one."
    echo = "I will write it between <question> and </question>.\n<draft>d</draft>\n<question>Real.</question>"
    assert final_question(echo) == "Real."
    assert final_question("<reason>r</reason>\n<draft>Only a draft.</draft>") is None
    assert final_question("<question>  </question>") is None


def test_an_answer_without_the_final_question_is_counted_and_not_stored(tmp_path, monkeypatch):
    def drafts_only_for_beta(body: Body) -> list[str]:
        answers = script(body)
        if 'use the skill "beta"' in prompt_text(body):
            return [a.split("<question>")[0] for a in answers]  # reason and draft, no final question
        if 'use the skill "alpha"' in prompt_text(body):
            return [f"<question>{q}</question>" for q, _ in WRITES["alpha"]]  # steps skipped: kept, counted
        return answers

    monkeypatch.setenv(KEY_ENV, "sk-test")
    with LoopbackTeacherServer(drafts_only_for_beta) as srv:
        dataset, _ = build_syn(loop_teacher(srv, tmp_path / "cache"))
        solved = [prompt_text(r.body) for r in srv.received if prompt_text(r.body).startswith("Solve the following")]

    assert dataset.stats["rejected"] == {"no_question_tag": 2, "inconsistent": 1}
    assert dataset.stats["proposed"] == 6 and dataset.stats["accepted"] == 3
    assert dataset.stats["questions_without_steps"] == 2
    assert {row.record.problem for row in dataset.rows} == set(CONSISTENT)
    assert len(solved) == 4 and not any("DRAFT" in p for p in solved)


def loop_teacher(server: LoopbackTeacherServer, cache_dir: Path, model: str = "loop") -> OpenAICompatibleTeacher:
    return OpenAICompatibleTeacher(
        model=model, base_url=server.base_url, api_key_env=KEY_ENV, cache_dir=str(cache_dir), max_retries=0
    )


def test_the_question_teacher_writes_and_the_run_teacher_solves_and_a_rerun_pays_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    records = pool()

    def build(writer: OpenAICompatibleTeacher, solver: OpenAICompatibleTeacher):
        guard = ContaminationGuard.from_records([*records, TEST_QUESTION])
        inputs = BuildInputs(
            pool=records, pool_path="p", profile=PROFILE, profile_path="q", teacher=solver, guard=guard
        )
        return StatSyn(target_size=None, question_teacher=writer).build(inputs)

    with LoopbackTeacherServer(script) as writing, LoopbackTeacherServer(script) as solving:
        cache = tmp_path / "cache"  # one cache for both: the model name is part of the key
        first = build(loop_teacher(writing, cache, "writer-4o"), loop_teacher(solving, cache, "solver-mini"))
        counts = (writing.count, solving.count)
        again = build(loop_teacher(writing, cache, "writer-4o"), loop_teacher(solving, cache, "solver-mini"))

        assert all("use the skill" in prompt_text(r.body) and r.body["model"] == "writer-4o" for r in writing.received)
        assert all(prompt_text(r.body).startswith("Solve the following") for r in solving.received)
        assert {r.body["model"] for r in solving.received} == {"solver-mini"}
        assert counts == (3, 5)
        assert (writing.count, solving.count) == counts  # the rerun is answered from the cache
    assert {row.record.problem for row in first.rows} == set(CONSISTENT)
    assert [r.to_json() for r in again.rows] == [r.to_json() for r in first.rows]
    assert first.stats["question_teacher"]["requests"] == 3 and again.stats["question_teacher"]["requests"] == 0


def test_the_live_loop_sends_question_writing_to_the_question_teacher(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    with LoopbackTeacherServer(script) as writing, LoopbackTeacherServer(script) as solving:
        syn = StatSyn(question_teacher=loop_teacher(writing, tmp_path / "w"))
        guard = ContaminationGuard.from_records([*pool(), TEST_QUESTION])
        rows = syn.synthesize_for_profile(PROFILE, loop_teacher(solving, tmp_path / "s"), pool(), 10, guard)

        assert writing.count == 3 and all("use the skill" in prompt_text(r.body) for r in writing.received)
        assert solving.count == 5 and all("Solve the" in prompt_text(r.body) for r in solving.received)
    assert {r.record.problem for r in rows} == set(CONSISTENT)


def test_the_paper_config_writes_stat_syn_questions_with_gpt4o_and_solves_with_gpt4o_mini():
    paper = Path(__file__).resolve().parents[1] / "configs" / "paper" / "build_llama32_3b.yaml"
    argv = ["build", "--config", str(paper), "--print_config"]
    out = io.StringIO()
    with mock.patch.object(sys, "argv", ["stat_pl", *argv]), redirect_stdout(out), pytest.raises(SystemExit):
        main(argv)
    config = yaml.safe_load(out.getvalue())

    (syn,) = [b["init_args"] for b in config["builders"] if b["class_path"].endswith("StatSyn")]
    writer, solver = syn["question_teacher"]["init_args"], config["teacher"]["init_args"]
    assert (writer["model"], solver["model"]) == ("gpt-4o", "gpt-4o-mini")
    assert {k: v for k, v in writer.items() if k != "model"} == {k: v for k, v in solver.items() if k != "model"}
