"""Skill catalog, Skill-Map and the Missing-Skill-Profile: histogram, combining rounds, STAT-Sel weights."""

import pytest

from stat_pl.missing_skill_profile import MissingSkillProfile
from stat_pl.records import ProblemRecord
from stat_pl.skills import SkillCatalog, SkillMap, UnknownSkillError, normalize_skill


def record(rid, *skills):
    return ProblemRecord(id=rid, problem=rid, answer="1", solutions=("s",), skills=skills)


def test_catalog_loads_the_shared_math_skills(shared_data):
    catalog = SkillCatalog.from_json(shared_data / "skills/catalog.json")
    assert len(catalog.subjects) == 7 and len(catalog.skills("algebra")) == 21
    assert "Counting Principals" in catalog and "counting-principals" in catalog and "flying" not in catalog
    assert len(SkillCatalog.from_json(shared_data / "skills/catalog.json", "GSM8K").skills()) == 14


def test_a_missing_catalog_says_where_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data/skills/catalog\.json does not exist.*docs/data_sources\.md"):
        SkillCatalog.from_json(tmp_path / "data/skills/catalog.json")


def test_normalisation_is_one_rule():
    assert normalize_skill("  Counting  Principals ") == normalize_skill("counting_principals") == "counting_principals"


def test_skill_map_links_both_ways():
    skill_map = SkillMap.from_records([record("a", "x", "y"), record("b", "x")])
    assert skill_map.problems_with("X") == ("a", "b") and skill_map.skills_of("a") == ("x", "y")


def test_profile_histogram_top_k_and_json_round_trip(tmp_path):
    profile = MissingSkillProfile.from_questions({"q1": ["A", "b"], "q2": ["b"], "q3": ["c", "b"]}, round=1)
    assert profile.histogram == {"a": 1, "b": 3, "c": 1}
    assert profile.top_k(2) == [("b", 3), ("a", 1)]
    loaded = MissingSkillProfile.from_json(profile.to_json(tmp_path / "p.json"))
    assert loaded == profile


def test_merge_adds_and_ema_smooths():
    old = MissingSkillProfile.from_questions({"q1": ["a"], "q2": ["a"]})
    new = MissingSkillProfile.from_questions({"q3": ["b"]})
    assert old.merge(new).histogram == {"a": 2, "b": 1}
    smoothed = old.ema(new, alpha=0.25)
    assert smoothed.histogram == pytest.approx({"a": 1.5, "b": 0.25}) and set(smoothed.questions) == {"q3"}
    assert old.ema(new, alpha=1.0).histogram == new.histogram


def test_unknown_skill_in_profile_file_is_an_error(tmp_path):
    catalog = SkillCatalog({"algebra": ["factoring_skills"]}, source="cat.json")
    path = MissingSkillProfile.from_questions({"q": ["factoring skills", "flying"]}).to_json(tmp_path / "p.json")
    with pytest.raises(UnknownSkillError, match=r"p.json.*\['flying'\].*cat.json"):
        MissingSkillProfile.from_json(path, catalog)


def test_weights_give_each_skill_its_profile_share():
    records = [record("a1", "a"), record("a2", "a"), record("b1", "b"), record("c1", "c")]
    profile = MissingSkillProfile(histogram={"a": 3.0, "b": 1.0})
    weights = profile.to_weights(records, floor=0.0)
    assert weights == pytest.approx([0.375, 0.375, 0.25, 0.0])
    floored = profile.to_weights(records, floor=0.2)
    assert min(floored) == pytest.approx(0.05) and sum(floored) == pytest.approx(1.0)


def test_empty_profile_is_uniform_and_skills_without_records_are_dropped():
    records = [record("a1", "a"), record("b1", "b")]
    assert MissingSkillProfile().to_weights(records) == [0.5, 0.5]
    only_missing = MissingSkillProfile(histogram={"zzz": 5.0, "a": 1.0})
    assert only_missing.to_weights(records, floor=0.0) == pytest.approx([1.0, 0.0])
