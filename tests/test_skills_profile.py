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


# ---- weighting schemes and the questions asked per skill ------------------------------------------


WEIGHTING_POOL = [record("a1", "a"), record("a2", "a"), record("b1", "b"), record("c1", "c")]
# skill a: 4 failures out of 8 questions asked; skill b: 2 out of 2; c: asked, never failed
WEIGHTING_PROFILE = MissingSkillProfile(histogram={"a": 4.0, "b": 2.0}, asked={"a": 8.0, "b": 2.0, "c": 3.0})


@pytest.mark.parametrize(
    ("weighting", "mix", "weights"),
    [
        ("proportional", {"a": 2 / 3, "b": 1 / 3}, [1 / 3, 1 / 3, 1 / 3, 0.0]),  # 4 : 2
        ("rate", {"a": 1 / 3, "b": 2 / 3}, [1 / 6, 1 / 6, 2 / 3, 0.0]),  # 4/8 : 2/2
        ("power", {"a": 0.8, "b": 0.2}, [0.4, 0.4, 0.2, 0.0]),  # 4**2 : 2**2
    ],
)
def test_each_weighting_gives_its_hand_computed_mix_and_weights(weighting, mix, weights):
    assert WEIGHTING_PROFILE.skill_mix(WEIGHTING_POOL, weighting=weighting) == pytest.approx(mix)
    assert WEIGHTING_PROFILE.to_weights(WEIGHTING_POOL, floor=0.0, weighting=weighting) == pytest.approx(weights)
    floored = WEIGHTING_PROFILE.to_weights(WEIGHTING_POOL, floor=0.2, weighting=weighting)
    assert floored == pytest.approx([0.8 * w + 0.2 / 4 for w in weights])


def test_power_one_is_proportional_and_a_larger_power_sharpens():
    proportional = WEIGHTING_PROFILE.skill_mix(WEIGHTING_POOL)
    assert WEIGHTING_PROFILE.skill_mix(WEIGHTING_POOL, weighting="power", power=1.0) == pytest.approx(proportional)
    assert WEIGHTING_PROFILE.skill_mix(WEIGHTING_POOL, weighting="power", power=3.0)["a"] == pytest.approx(64 / 72)


def test_rate_without_asked_counts_and_bad_settings_are_named():
    without = MissingSkillProfile(histogram={"a": 1.0})
    assert without.skill_mix(WEIGHTING_POOL) == {"a": 1.0}  # the paper's rule needs no asked counts
    with pytest.raises(ValueError, match="records no 'asked' counts.*set weighting: proportional"):
        without.to_weights(WEIGHTING_POOL, weighting="rate")
    with pytest.raises(ValueError, match="skill 'a' has 1 failures but no question asked"):
        MissingSkillProfile(histogram={"a": 1.0}, asked={"b": 2.0}).skill_mix(WEIGHTING_POOL, weighting="rate")
    with pytest.raises(ValueError, match="weighting must be one of proportional, rate, power, got 'linear'"):
        WEIGHTING_PROFILE.skill_mix(WEIGHTING_POOL, weighting="linear")
    with pytest.raises(ValueError, match="weight_power must be positive, got 0"):
        WEIGHTING_PROFILE.skill_mix(WEIGHTING_POOL, weighting="power", power=0)
    with pytest.raises(ValueError, match="weight_floor must be in"):
        WEIGHTING_PROFILE.to_weights(WEIGHTING_POOL, floor=1.5)


def test_a_round_counts_the_questions_asked_per_skill_labelled_or_blamed():
    asked = [record("q1", "A"), record("q2", "a", "b"), record("q3", "c")]
    profile = MissingSkillProfile.from_round(asked, {"q2": ["b", "d"]}, epoch=3)
    assert profile.histogram == {"b": 1.0, "d": 1.0} and profile.meta == {"epoch": 3}
    assert profile.asked == {"a": 2.0, "b": 1.0, "c": 1.0, "d": 1.0}  # d: named by the profiler, not labelled
    assert profile.skill_mix(asked + [record("d1", "d")], weighting="rate") == {"b": 0.5, "d": 0.5}
    with pytest.raises(ValueError, match=r"difficult questions \['zz'\] are not among the asked"):
        MissingSkillProfile.from_round(asked, {"zz": ["a"]})


def test_asked_counts_survive_json_and_combine_like_the_histogram(tmp_path):
    old = MissingSkillProfile(histogram={"a": 2.0}, asked={"a": 4.0, "b": 2.0})
    new = MissingSkillProfile(histogram={"b": 1.0}, asked={"a": 2.0, "b": 2.0})
    assert MissingSkillProfile.from_json(old.to_json(tmp_path / "p.json")) == old
    assert old.merge(new).asked == {"a": 6.0, "b": 4.0}
    smoothed = old.ema(new, alpha=0.25)
    assert smoothed.asked == pytest.approx({"a": 3.5, "b": 2.0}) and smoothed.histogram == pytest.approx(
        {"a": 1.5, "b": 0.25}
    )
    unknown = MissingSkillProfile(histogram={"b": 1.0})
    assert old.merge(unknown).asked is None and unknown.ema(old, 0.5).asked is None
    assert "asked" not in unknown.to_dict()
    (tmp_path / "bad.json").write_text('{"questions": {}, "histogram": {"a": 1}, "asked": {"a": "many"}}')
    with pytest.raises(ValueError, match="bad.json: field 'asked' must map skill names to numbers"):
        MissingSkillProfile.from_json(tmp_path / "bad.json")
