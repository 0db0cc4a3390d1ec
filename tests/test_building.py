"""STAT-Sel and the builders' input checks: what a user building targeted data relies on.

Each skill's share of the built data is its share of the profile (within one row of the target size);
the target size is met exactly when the pool allows it, and the shortfall is reported when it does
not; every row says why it is there; a malformed profile or pool is refused with the file and field.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from loopback_teacher import Body, LoopbackTeacherServer, prompt_text

from stat_pl.building import (
    BuildInputError,
    BuildInputs,
    EmbedSel,
    EmbedSyn,
    MathAugment,
    MathHard,
    MathTrain,
    StatSel,
    StatSyn,
)
from stat_pl.building.run import build
from stat_pl.building.selection import allocate, draw_per_missing_skill
from stat_pl.building.stat_syn import stat_syn_tasks
from stat_pl.missing_skill_profile import MissingSkillProfile
from stat_pl.records import ProblemRecord, RecordError, RecordSource
from stat_pl.teacher import OpenAICompatibleTeacher
from stat_pl.teacher.templates import PromptTemplates

KEY_ENV = "STAT_PL_TEST_BUILD_KEY"


def pool_records(per_skill: dict[str, int]) -> list[ProblemRecord]:
    return [
        ProblemRecord(
            id=f"train/{skill}/{i}",
            problem=f"A {skill} question number {i}: what is {i} + 1?",
            answer=str(i + 1),
            solutions=(f"{i} + 1 = \\boxed{{{i + 1}}}",),
            subject="algebra",
            level=1 + i % 5,
            skills=(skill,),
        )
        for skill, n in per_skill.items()
        for i in range(n)
    ]


def hand_profile() -> MissingSkillProfile:
    """Histogram a: 5, b: 3, c: 2 over 8 difficult questions (two of them miss two skills)."""
    return MissingSkillProfile.from_questions(
        {
            "test/1": ["a"],
            "test/2": ["a"],
            "test/3": ["a", "b"],
            "test/4": ["a"],
            "test/5": ["a", "c"],
            "test/6": ["b"],
            "test/7": ["b"],
            "test/8": ["c"],
        }
    )


def inputs_for(pool: list[ProblemRecord], profile: MissingSkillProfile | None = None, **extra) -> BuildInputs:
    return BuildInputs(pool=pool, pool_path="pool.jsonl", profile=profile, profile_path="profile.json", **extra)


def target_counts(rows) -> Counter[str]:
    return Counter(r.provenance["target_skill"] for r in rows)


@pytest.mark.parametrize("target", [37, 50])
def test_each_skills_share_matches_the_profile_and_the_target_is_met_exactly(target):
    profile = hand_profile()
    dataset = StatSel(questions_per_skill=5, target_size=target).build(
        inputs_for(pool_records({"a": 20, "b": 20, "c": 20, "unrelated": 20}), profile)
    )

    assert len(dataset.rows) == target and dataset.stats["shortfall"] == 0
    counts = target_counts(dataset.rows)
    for skill, share in profile.shares().items():
        # largest-remainder quotas: every skill within one row of its exact share
        assert abs(counts[skill] - target * share) < 1
        assert abs(counts[skill] / target - share) < 1 / target
    assert "unrelated" not in counts
    assert len({r.record.id for r in dataset.rows}) == target


def test_every_row_says_why_it_is_there():
    profile = hand_profile()
    pool = pool_records({"a": 20, "b": 20, "c": 20})
    dataset = StatSel(target_size=30).build(inputs_for(pool, profile))

    by_id = {r.id: r for r in pool}
    for row in dataset.rows:
        p = row.provenance
        assert p["builder"] == "stat_sel" and p["origin"] == "pool"
        assert p["target_skill"] in profile.questions[p["difficult_question"]]
        assert p["target_skill"] in by_id[p["origin_id"]].skills
        assert row.record.problem == by_id[p["origin_id"]].problem and row.record.source == "stat_sel"


def test_the_same_seed_builds_the_same_data_and_another_seed_other_data():
    inputs = inputs_for(pool_records({"a": 30, "b": 30, "c": 30}), hand_profile())
    first, again = (StatSel(target_size=30, seed=1).build(inputs) for _ in range(2))
    other = StatSel(target_size=30, seed=2).build(inputs)

    assert [r.to_json() for r in first.rows] == [r.to_json() for r in again.rows]
    assert [r.provenance["origin_id"] for r in first.rows] != [r.provenance["origin_id"] for r in other.rows]


def test_a_short_skill_gives_all_it_has_and_the_others_fill_the_target():
    # c has 2 linked questions: its 2 pairs give at most 4 rows, it wants 40 * 0.2 = 8
    dataset = StatSel(questions_per_skill=5, target_size=40).build(
        inputs_for(pool_records({"a": 20, "b": 20, "c": 2}), hand_profile())
    )

    counts = target_counts(dataset.rows)
    assert len(dataset.rows) == 40 and dataset.stats["shortfall"] == 0
    assert counts["c"] == 4 and counts["a"] + counts["b"] == 36
    assert abs(counts["a"] / 36 - 5 / 8) < 1 / 36  # the deficit is spread by the others' shares
    assert dataset.stats["short_groups"] == {"c": {"wanted": 8.0, "available": 4}}
    assert dataset.stats["skills_with_fewer_questions"] == {"c": 2}


def test_when_the_pool_cannot_meet_the_target_everything_is_kept_and_the_shortfall_reported():
    dataset = StatSel(questions_per_skill=5, target_size=100).build(
        inputs_for(pool_records({"a": 20, "b": 20, "c": 2}), hand_profile())
    )

    assert len(dataset.rows) == 5 * 5 + 3 * 5 + 2 * 2
    assert dataset.stats["shortfall"] == 100 - len(dataset.rows)
    assert set(dataset.stats["short_groups"]) == {"a", "b", "c"}


def test_allocation_sums_to_the_target_and_respects_availability():
    quotas = allocate({"x": 1.0, "y": 1.0, "z": 1.0}, {"x": 100, "y": 100, "z": 100}, 100)
    assert sorted(quotas.values()) == [33, 33, 34]
    assert allocate({"x": 9.0, "y": 1.0}, {"x": 3, "y": 50}, 20) == {"x": 3, "y": 17}
    assert allocate({"x": 1.0, "y": 1.0}, {"x": 3, "y": 4}, 20) == {"x": 3, "y": 4}


def test_algorithm1_draws_k_linked_questions_per_pair_independently_of_other_pairs():
    inputs = inputs_for(pool_records({"a": 8, "b": 8, "c": 2}), hand_profile())

    draws, unlinked = draw_per_missing_skill(hand_profile(), inputs.skill_map, k=5, seed=0)

    assert [(d.question_id, d.skill) for d in draws] == [
        (q, s) for q in sorted(hand_profile().questions) for s in hand_profile().questions[q]
    ]
    for d in draws:
        assert len(set(d.drawn_ids)) == min(5, len(inputs.skill_map.problems_with(d.skill)))
        assert all(d.skill in inputs.pool_by_id[p].skills for p in d.drawn_ids)
    assert not unlinked
    alone = MissingSkillProfile.from_questions({"test/3": ["a", "b"]})
    again, _ = draw_per_missing_skill(alone, inputs.skill_map, k=5, seed=0)
    assert again == [d for d in draws if d.question_id == "test/3"]  # a pair's draw ignores the other pairs
    assert draw_per_missing_skill(hand_profile(), inputs.skill_map, k=5, seed=1)[0] != draws


def test_stat_sel_and_stat_syn_use_the_one_algorithm1_draw():
    inputs = inputs_for(pool_records({"a": 9, "b": 9, "c": 9}), hand_profile())
    sel_draws, _ = draw_per_missing_skill(hand_profile(), inputs.skill_map, k=5, seed=3)
    syn_draws, _ = draw_per_missing_skill(hand_profile(), inputs.skill_map, k=3, seed=3)

    picks, _ = StatSel(questions_per_skill=5, seed=3).picks(hand_profile(), inputs)
    tasks, _ = stat_syn_tasks(
        hand_profile(), inputs, PromptTemplates(), examples_per_prompt=3, questions_per_pair=2, seed=3
    )

    picked = Counter((p.provenance["difficult_question"], p.group, p.record.id) for p in picks)
    assert picked == Counter((d.question_id, d.skill, pid) for d in sel_draws for pid in d.drawn_ids)
    assert [
        (t.provenance["difficult_question"], t.provenance["target_skill"], tuple(t.provenance["example_ids"]))
        for t in tasks
    ] == [(d.question_id, d.skill, d.drawn_ids) for d in syn_draws]


def solve_script(body: Body) -> list[str]:
    """Solve requests: the first sample right, the second wrong (gold is the number after 'what is')."""
    text = prompt_text(body)
    number = int(text.split("what is ")[1].split(" + 1")[0]) + 1
    return [f"So it is \\boxed{{{number}.0}}", "So it is \\boxed{-1}"][: int(body.get("n") or 1)]


def test_teacher_answers_join_only_when_their_final_answer_is_the_gold_one(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    with LoopbackTeacherServer(solve_script) as server:
        teacher = OpenAICompatibleTeacher(
            model="loop",
            base_url=server.base_url,
            api_key_env=KEY_ENV,
            cache_dir=str(tmp_path),
            concurrency=4,
            max_retries=0,
        )
        dataset = StatSel(questions_per_skill=2, answers_per_question=3, target_size=None).build(
            inputs_for(pool_records({"a": 10, "b": 10, "c": 10}), hand_profile(), teacher=teacher)
        )

    origins = Counter(r.provenance["origin"] for r in dataset.rows)
    assert origins["pool"] == origins["teacher_answer"] == 10 * 2  # 10 pairs x 2 questions, 1 right answer each
    teacher_rows = [r for r in dataset.rows if r.provenance["origin"] == "teacher_answer"]
    assert all(r.record.solutions[0].endswith(".0}") for r in teacher_rows)
    assert dataset.stats["rejected"] == {"teacher_answer_wrong": len({r.provenance["origin_id"] for r in dataset.rows})}


class _NeverCalled:
    """A teacher for the input checks: every builder must refuse before asking anything."""

    def complete_many(self, requests):
        raise AssertionError("the teacher was called before the inputs were checked")

    def stats(self):
        return {}


ALL_BUILDERS = [StatSel(), StatSyn(), MathTrain(), MathAugment(), MathHard(), EmbedSel(), EmbedSyn()]
PROFILE_BUILDERS = [StatSel(), StatSyn(), EmbedSel(), EmbedSyn()]


@pytest.mark.parametrize("builder", ALL_BUILDERS, ids=lambda b: b.name)
def test_every_builder_refuses_a_pool_question_without_solution(builder):
    pool = pool_records({"a": 5, "b": 5, "c": 5}) + [
        ProblemRecord(id="train/bare", problem="1+1?", answer="2", skills=("a",), level=5)
    ]
    inputs = inputs_for(
        pool,
        hand_profile(),
        teacher=_NeverCalled(),
        questions={f"test/{i}": ProblemRecord(f"test/{i}", "q", "1") for i in range(1, 9)},
    )
    with pytest.raises(BuildInputError, match=r"pool pool\.jsonl: question 'train/bare' has no 'solution'"):
        builder.build(inputs)


@pytest.mark.parametrize("builder", PROFILE_BUILDERS, ids=lambda b: b.name)
def test_every_profile_builder_refuses_an_empty_profile(builder):
    inputs = inputs_for(pool_records({"a": 5}), MissingSkillProfile(), teacher=_NeverCalled())
    with pytest.raises(BuildInputError, match=r"profile profile\.json: field 'questions' is empty"):
        builder.build(inputs)


@pytest.mark.parametrize("builder", [StatSel(), StatSyn()], ids=lambda b: b.name)
def test_skill_builders_refuse_an_unlabelled_pool_or_a_profile_from_another_catalog(builder):
    unlabelled = [ProblemRecord(r.id, r.problem, r.answer, r.solutions) for r in pool_records({"a": 5})]
    with pytest.raises(BuildInputError, match=r"pool pool\.jsonl: no question has field 'skills'"):
        builder.build(inputs_for(unlabelled, hand_profile(), teacher=_NeverCalled()))
    with pytest.raises(BuildInputError, match=r"profile profile\.json \(field 'histogram'\).*field 'skills'"):
        builder.build(inputs_for(pool_records({"zeta": 5}), hand_profile(), teacher=_NeverCalled()))


@pytest.mark.parametrize("builder", [EmbedSel(), EmbedSyn()], ids=lambda b: b.name)
def test_embedding_builders_name_the_questions_file_when_a_difficult_question_is_missing(builder):
    inputs = inputs_for(
        pool_records({"a": 5}),
        hand_profile(),
        teacher=_NeverCalled(),
        questions={"test/1": ProblemRecord("test/1", "q", "1")},
        questions_path="test.jsonl",
    )
    with pytest.raises(BuildInputError, match=r"names 7 question\(s\) not in test\.jsonl \(field 'id'\)"):
        builder.build(inputs)


def test_the_build_stage_names_the_file_and_field_of_a_malformed_profile_or_pool(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(
        "".join(
            json.dumps({"id": r.id, "problem": r.problem, "solution": r.solutions[0], "skills": list(r.skills)}) + "\n"
            for r in pool_records({"a": 3})
        )
    )
    bad_profile = tmp_path / "profile.json"
    bad_profile.write_text(json.dumps({"questions": {"test/1": "a"}}))
    with pytest.raises(ValueError, match=rf"{bad_profile}: field 'questions' must map question ids to lists"):
        build([StatSel()], RecordSource(str(pool)), str(tmp_path / "out"), profile=str(bad_profile))

    good_profile = tmp_path / "good.json"
    hand_profile().to_json(good_profile)
    with pool.open("a") as f:
        f.write(json.dumps({"id": "train/x", "solution": "\\boxed{1}"}) + "\n")
    with pytest.raises(RecordError, match=rf"{pool}:4: field 'problem' \(column 'problem'\) is missing"):
        build([StatSel()], RecordSource(str(pool)), str(tmp_path / "out"), profile=str(good_profile))
    assert not Path(tmp_path / "out").exists()


def rewrite_script(body: Body) -> list[str]:
    """Solve requests: ``n`` different right solutions (gold is the number after 'what is')."""
    number = int(prompt_text(body).split("what is ")[1].split(" + 1")[0]) + 1
    return [f"Way {k}: so it is \\boxed{{{number}}}" for k in range(int(body.get("n") or 1))]


def loopback_teacher(server: LoopbackTeacherServer, tmp_path: Path) -> OpenAICompatibleTeacher:
    return OpenAICompatibleTeacher(
        model="loop",
        base_url=server.base_url,
        api_key_env=KEY_ENV,
        cache_dir=str(tmp_path),
        concurrency=4,
        max_retries=0,
    )


def test_baselines_default_to_the_papers_comparable_sizes():
    assert (MathHard().levels, MathHard().answers_per_question, MathHard().target_size) == ([4, 5], 3, 9500)
    assert (MathAugment().rewrites_per_solution, MathAugment().include_original, MathAugment().target_size) == (
        3,
        False,
        9500,
    )
    assert (EmbedSel().neighbours, EmbedSel().answers_per_question, EmbedSel().target_size) == (5, 3, 9500)
    embed_syn = EmbedSyn()
    assert (
        embed_syn.neighbours,
        embed_syn.questions_per_question,
        embed_syn.examples_per_prompt,
        embed_syn.target_size,
    ) == (5, 5, 3, 9500)


def test_math_hard_gives_hard_questions_three_verified_answers_cut_to_the_target(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    pool = pool_records({"a": 20})  # levels 1..5 in turn: 8 of the 20 are level 4 or 5
    with LoopbackTeacherServer(rewrite_script) as server:
        dataset = MathHard(target_size=20).build(inputs_for(pool, teacher=loopback_teacher(server, tmp_path)))

    assert len(dataset.rows) == 20 and dataset.stats["hard_questions"] == 8  # of 8 x 3 = 24 candidates
    assert all(r.record.level in (4, 5) for r in dataset.rows)
    assert Counter(r.provenance["origin"] for r in dataset.rows).keys() == {"pool", "teacher_answer"}
    assert max(Counter(r.provenance["origin_id"] for r in dataset.rows).values()) == 3


def test_math_augment_is_made_of_the_three_teacher_rewrites(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    pool = pool_records({"a": 4})
    with LoopbackTeacherServer(rewrite_script) as server:
        teacher = loopback_teacher(server, tmp_path)
        dataset = MathAugment(target_size=None).build(inputs_for(pool, teacher=teacher))
        with_original = MathAugment(target_size=None, include_original=True).build(inputs_for(pool, teacher=teacher))

    assert len(dataset.rows) == 4 * 3 and {r.provenance["origin"] for r in dataset.rows} == {"teacher_answer"}
    assert all(Counter(r.provenance["origin_id"] for r in dataset.rows)[p.id] == 3 for p in pool)
    assert len(with_original.rows) == 4 * 4
