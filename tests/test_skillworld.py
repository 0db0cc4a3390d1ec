"""The skill world: reproducible, disjoint splits, every skill present, chained steps, ids that regenerate."""

from __future__ import annotations

import collections
import re

import pytest

from stat_pl.data.skillworld import (
    SKILLWORLD_SKILLS,
    SkillWorld,
    problem_from_id,
    skillworld_catalog,
)
from stat_pl.grading import is_equivalent
from stat_pl.skills import UnknownSkillError


def test_same_seed_gives_the_same_problems_and_another_seed_others() -> None:
    first = SkillWorld(seed=7).problems("train", 50)
    again = SkillWorld(seed=7).problems("train", 50)
    other = SkillWorld(seed=8).problems("train", 50)
    assert first == again
    assert len({p.text for p in first} & {p.text for p in other}) < 10


def test_splits_are_disjoint_by_problem_text_on_thousands_of_problems() -> None:
    world = SkillWorld(seed=1)
    splits = ("train", "validation", "test")
    texts = {split: [p.text for p in world.problems(split, 2000)] for split in splits}
    for split, split_texts in texts.items():
        assert len(set(split_texts)) == 2000, f"{split} repeats a problem"
    assert not set(texts["train"]) & set(texts["validation"])
    assert not set(texts["train"]) & set(texts["test"])
    assert not set(texts["validation"]) & set(texts["test"])


def test_a_longer_request_extends_a_shorter_one() -> None:
    world = SkillWorld(seed=2)
    assert world.problems("validation", 100)[:40] == world.problems("validation", 40)


def test_every_skill_and_level_appears_and_levels_set_the_step_count() -> None:
    problems = SkillWorld(seed=0).problems("train", 600)
    counts = collections.Counter(skill for p in problems for skill in p.skills)
    assert set(counts) == set(SKILLWORLD_SKILLS)
    assert min(counts.values()) >= 30
    assert {p.level for p in problems} == {1, 2, 3}
    assert all(len(p.steps) == p.level for p in problems)
    assert all(len(set(p.skills)) == len(p.skills) for p in problems)


def test_levels_and_max_skills_limit_the_chains() -> None:
    assert all(len(p.steps) == 1 for p in SkillWorld(levels=(3,), max_skills=1).problems("train", 100))
    assert all(p.level == 2 and len(p.steps) == 2 for p in SkillWorld(levels=(2,)).problems("test", 100))
    with pytest.raises(ValueError, match="levels"):
        SkillWorld(levels=(4,))


def test_each_step_feeds_its_value_to_the_next() -> None:
    for problem in SkillWorld(seed=3, levels=(3,)).problems("train", 200):
        for step, following in zip(problem.steps, problem.steps[1:], strict=False):
            left_side = following.work.rpartition(" = ")[0]
            assert re.search(rf"(?<!\d){step.value}(?!\d)", left_side), (problem.id, following.work)
        assert problem.answer == problem.steps[-1].value


def test_worked_solution_is_one_tagged_line_per_step_then_the_boxed_answer() -> None:
    problem = next(p for p in SkillWorld(seed=4).problems("train", 100) if len(p.steps) == 3)
    lines = problem.solution.splitlines()
    assert len(lines) == 4
    for number, (line, step) in enumerate(zip(lines, problem.steps, strict=False), start=1):
        assert line == f"Step {number} [{step.skill}]: {step.work}"
        assert re.search(rf"= {re.escape(step.value)}( r \d+)?$", line)
    assert lines[-1] == f"Answer: \\boxed{{{problem.answer}}}"


def test_gold_answers_are_integers_or_fractions_the_grader_accepts() -> None:
    problems = SkillWorld(seed=5).problems("train", 400)
    fractions = [p for p in problems if "/" in p.answer]
    assert fractions and all(re.fullmatch(r"\d+/\d+", p.answer) for p in fractions)
    assert all(re.fullmatch(r"\d+(/\d+)?", p.answer) for p in problems)
    numerator, denominator = fractions[0].answer.split("/")
    assert is_equivalent(f"\\frac{{{numerator}}}{{{denominator}}}", fractions[0].answer)


def test_problem_from_id_regenerates_any_problem_and_rejects_other_ids() -> None:
    for split in ("train", "validation", "test"):
        for problem in SkillWorld(seed=9, skill_weights={"powers": 5.0}).problems(split, 100):
            assert problem_from_id(problem.id) == problem
    for bad in ("math/train/17", "skillworld/train/0/1/L9/add", "skillworld/train/0/1/L1/nope", ""):
        with pytest.raises(ValueError, match="not a skill-world problem id"):
            problem_from_id(bad)


def test_records_carry_answer_solution_skills_and_split() -> None:
    record = SkillWorld(seed=6).records("validation", 1)[0]
    problem = problem_from_id(record.id)
    assert (record.problem, record.answer, record.skills, record.level) == (
        problem.text,
        problem.answer,
        problem.skills,
        problem.level,
    )
    assert record.solutions == (problem.solution,)
    assert (record.subject, record.source) == ("skillworld", "skillworld/validation")


def test_catalog_holds_the_twelve_skills_of_every_problem() -> None:
    catalog = skillworld_catalog()
    assert catalog.subjects == ["skillworld"]
    assert len(catalog) == len(SKILLWORLD_SKILLS) >= 12
    catalog.check((s for r in SkillWorld().records("train", 200) for s in r.skills), "skill world records")


def test_skill_weights_shift_the_mix_and_unknown_names_are_refused() -> None:
    heavy = SkillWorld(skill_weights={"Unit Conversion": 10.0, "powers": 0}).problems("train", 300)
    counts = collections.Counter(s for p in heavy for s in p.skills)
    assert "powers" not in counts
    assert counts["unit_conversion"] == max(counts.values())
    with pytest.raises(UnknownSkillError, match="long_division"):
        SkillWorld(skill_weights={"long_division": 1.0})


def test_a_world_that_can_build_no_problem_says_so() -> None:
    world = SkillWorld(levels=(2,), skill_weights={s: 0 for s in SKILLWORLD_SKILLS[1:]})
    with pytest.raises(ValueError, match="skill_weights"):
        world.problems("train", 1)


def test_asking_for_more_problems_than_a_split_holds_is_an_error_not_a_hang() -> None:
    only_powers = {s: 0 for s in SKILLWORLD_SKILLS if s != "powers"}
    world = SkillWorld(levels=(1,), max_skills=1, skill_weights=only_powers)
    assert len(world.problems("test", 1)) == 1  # level-1 powers: one small base and exponent in the test split
    with pytest.raises(ValueError, match=r"distinct test problems, fewer than the 1000 asked for"):
        world.problems("test", 1000)


def test_the_source_is_a_skill_world_with_its_defaults_and_skill_weights():
    from stat_pl.data.skillworld import SkillWorldSource

    world = dict(levels=(1,), max_skills=1, skill_weights={"addition_with_carry": 0})
    source = SkillWorldSource("train", 40, **world)
    assert source.load() == SkillWorld(**world).records("train", 40)
    assert all("addition_with_carry" not in r.skills for r in source.load())
    assert (SkillWorldSource().seed, SkillWorldSource().levels) == (SkillWorld().seed, SkillWorld().levels)
