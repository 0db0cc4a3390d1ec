"""The rules of ``bench/skillworld_v2.py`` on hand-computed numbers: the scored span, the Phase-0 selection, the
partitions, mixes and profile precision, the predictions, and the pre-registered statistics.

The experiment takes CPU-hours; every decision it makes from its measurements is one of these functions.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from stat_pl.data.skillworld import SkillWorld
from stat_pl.evaluation.answer_metrics import answer_example
from stat_pl.tokenizer import load_tokenizer

SCRIPT = Path(__file__).parents[1] / "bench" / "skillworld_v2_analysis.py"


@pytest.fixture(scope="module")
def v2():
    spec = importlib.util.spec_from_file_location("skillworld_v2_analysis", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- the scored span ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("solution", "value", "before"),
    [
        ("Step 1 [multi_digit_multiplication]: 46 × 9 = 414\nAnswer: \\boxed{414}", "414", "46 × 9 = "),
        ("Step 1 [division_with_remainder]: 40 ÷ 6 = 6 r 4\nAnswer: \\boxed{6}", "6", "40 ÷ 6 = "),
        ("Step 1 [linear_equations]: 4n + 4 = 44, n = 40 / 4 = 10\nAnswer: \\boxed{10}", "10", "40 / 4 = "),
        ("Step 1 [fraction_simplification]: 12/24 = 1/2\nAnswer: \\boxed{1/2}", "1/2", "12/24 = "),
    ],
)
def test_the_scored_span_is_the_last_steps_value_not_the_boxed_copy(v2, solution, value, before):
    start, end = v2.step_value_span(solution)
    assert solution[start:end] == value and solution[:start].endswith(before)
    assert "boxed" not in solution[:end]


def test_a_solution_without_a_step_line_or_box_is_not_scored(v2):
    assert v2.step_value_span("It is 4.") is None
    assert v2.step_value_span("Answer: \\boxed{4}") is None


def test_the_labelled_tokens_are_the_step_value_of_real_skill_world_problems(v2):
    tokenizer = load_tokenizer("offline:smollm2-135m-instruct")
    for record in SkillWorld(seed=0, levels=(1,), max_skills=1).records("test", 12):
        example = answer_example(tokenizer, record, answer_span=v2.step_value_span)
        scored = [i for i, label in enumerate(example["labels"]) if label != -100]
        assert tokenizer.decode([example["input_ids"][i] for i in scored]).strip() == record.answer
        assert "boxed" not in tokenizer.decode(example["input_ids"][: scored[-1] + 1])


# ---- Phase 0 --------------------------------------------------------------------------------------------
def test_slope_is_least_squares_over_the_window_only(v2):
    curve = [(0, 0.0), (20, 0.1), (40, 0.3), (60, 0.5), (100, 0.9)]
    assert v2.learning_slope(curve, (15, 95)) == pytest.approx(0.01)  # (20, .1), (40, .3), (60, .5)
    assert v2.learning_slope(curve, (15, 30)) is None  # one point


def test_selection_keeps_the_fastest_qualifying_skills_and_says_when_too_few_qualify(v2):
    curves = {
        "fast_low": [(20, 0.0), (80, 0.35)],  # fastest but never reaches 40%
        "fast": [(20, 0.2), (80, 0.8)],  # slope 0.01
        "mid": [(20, 0.3), (80, 0.6)],  # 0.005
        "tie_a": [(20, 0.2), (80, 0.44)],  # 0.004, reach 0.44
        "tie_b": [(20, 0.3), (80, 0.54)],  # 0.004, reach 0.54: ranks above tie_a
        "flat": [(20, 0.9), (80, 0.9)],  # slope 0, reach 0.9
    }
    table = v2.screen_table(curves, (15, 95), 0.40)
    assert not table["fast_low"]["qualifies"] and table["fast"]["qualifies"]
    assert v2.select_skills(table, 4) == ["fast", "mid", "tie_b", "tie_a"]
    assert v2.select_skills(table, 6) == ["fast", "mid", "tie_b", "tie_a", "flat"]  # 5 < 6: the caller stops


def test_partitions_alternate_ranks_so_each_b_has_a_fast_and_a_slow_learner(v2):
    ranked = ["r1", "r2", "r3", "r4", "r5", "r6"]
    assert v2.partitions(ranked) == [(["r2", "r4", "r6"], ["r1", "r3", "r5"]), (["r1", "r3", "r5"], ["r2", "r4", "r6"])]


def test_screens_average_point_by_point(v2):
    one = {"a": [(20, 0.2), (40, 0.4)]}
    two = {"a": [(22, 0.4), (42, 0.6)]}
    assert v2.mean_curves([one, two]) == {"a": [(21, pytest.approx(0.3)), (41, pytest.approx(0.5))]}


# ---- mixes, profiles and predictions ----------------------------------------------------------------------
def test_shares_and_exact_counts_of_a_floored_mix(v2):
    shares = v2.arm_shares({"a": 0.75, "b": 0.25}, 0.2, ["a", "b", "c", "d"])
    assert shares == pytest.approx({"a": 0.65, "b": 0.25, "c": 0.05, "d": 0.05})
    assert v2.arm_counts(shares, 20, 2) == {"a": 26, "b": 10, "c": 2, "d": 2}
    assert v2.arm_shares({}, 0.2, ["a", "b"]) == {"a": 0.5, "b": 0.5}  # no profile: even


def test_profile_precision_recall_and_mass_against_the_known_weak_set(v2):
    found = v2.profile_vs_truth({"a": 0.5, "b": 0.3, "c": 0.1, "d": 0.1}, ["a", "c"], ["a", "b", "c", "d"])
    assert found == pytest.approx({"precision": 0.5, "recall": 0.5, "mass": 0.6})  # flags a, b (> 1/4)
    flat = v2.profile_vs_truth({"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25}, ["a"], ["a", "b", "c", "d"])
    assert flat == pytest.approx({"precision": 0.0, "recall": 0.0, "mass": 0.25})  # flags nothing


def test_interpolation_is_piecewise_linear_and_flat_beyond_the_curve(v2):
    curve = [(10, 0.1), (30, 0.5), (50, 0.6)]
    assert [v2.interpolate(curve, x) for x in (0, 20, 40, 90)] == pytest.approx([0.1, 0.3, 0.55, 0.6])


def test_static_prediction_reads_the_curve_at_examples_seen_plus_the_arms(v2):
    curves = {"a": [(0, 0.0), (100, 1.0)], "b": [(0, 0.2), (100, 0.2)]}
    assert v2.predict_static(curves, {"a": 10, "b": 50}, {"a": 30, "b": 30}) == pytest.approx({"a": 0.4, "b": 0.2})


def test_online_prediction_follows_the_failures_epoch_by_epoch(v2):
    curves = {"a": [(0, 0.0), (100, 1.0)], "b": [(0, 0.0), (100, 1.0)]}
    accuracy, mixes = v2.predict_online(
        curves, {}, {"a": 1.0, "b": 0.5}, floor=0.0, power=1.0, alpha=1.0, per_epoch=30, epochs=2
    )
    # epoch 1: failures 1 : 0.5 -> 20 : 10; then failures 0.8 : 0.9 -> 30 * (0.47, 0.53) -> 14 : 16
    assert mixes == [{"a": 20, "b": 10}, {"a": 14, "b": 16}]
    assert accuracy == pytest.approx({"a": 0.34, "b": 0.26})


# ---- the pre-registered test --------------------------------------------------------------------------------
@pytest.mark.parametrize(("df", "t"), [(1, 12.7062047), (2, 4.3026527), (5, 2.5705818), (10, 2.2281389)])
def test_t_quantiles_match_the_table(v2, df, t):
    assert v2.t_quantile(0.975, df) == pytest.approx(t, abs=1e-6)


def test_paired_t_interval_by_hand(v2):
    found = v2.paired_t_interval([2.0, 4.0, 6.0])  # mean 4, sd 2, n 3, t(0.975, 2) = 4.3026527
    half = 4.3026527 * 2 / math.sqrt(3)
    assert found["df"] == 2 and found["mean"] == 4.0 and found["sd"] == pytest.approx(2.0)
    assert (found["low"], found["high"]) == pytest.approx((4 - half, 4 + half))
    assert v2.paired_t_interval([3.0])["low"] is None  # one seed: no interval


def test_exact_sign_flip_counts_every_pattern(v2):
    assert v2.sign_flip_p([1.0, 2.0, 3.0]) == 2 / 8  # only all-plus and all-minus reach |mean| 2
    assert v2.sign_flip_p([1.0, 2.0, 3.0], "greater") == 1 / 8
    # sums of +-1 +-1 +-2: 4, 0, 2, -2, 2, -2, 0, -4; observed 2
    assert v2.sign_flip_p([1.0, -1.0, 2.0]) == 6 / 8
    assert v2.sign_flip_p([1.0, -1.0, 2.0], "greater") == 3 / 8
    assert v2.sign_flip_p([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) == 2 / 64  # the smallest two-sided p with 6 seeds


def test_nested_bootstrap_is_degenerate_without_noise_and_wide_when_seeds_disagree(v2):
    same = [{"s": [0.5, 0.5]}, {"s": [0.5, 0.5]}]
    assert v2.nested_bootstrap(same, reps=200) == pytest.approx((0.5, 0.5))
    low, high = v2.nested_bootstrap([{"s": [1.0, 1.0]}, {"s": [0.0, 0.0]}], reps=400)
    assert low == 0.0 and high == 1.0


def test_margin_verdicts(v2):
    assert v2.margin_verdict(8.5, 20.0, 8.0) == "met"
    assert v2.margin_verdict(-1.0, 7.9, 8.0) == "not met"
    assert v2.margin_verdict(2.0, 12.0, 8.0) == "inconclusive"
    assert v2.margin_verdict(-3.9, 1.0, -4.0) == "met"  # a loss within 4 points
    assert v2.margin_verdict(None, None, 8.0) == "inconclusive"


# ---- the report on made-up job files ------------------------------------------------------------------------
def write_made_up_experiment(out: Path, gains: dict[int, float]) -> None:
    """Two skills (a known, b weak), 4 test questions each, seeds 0 and 1; the sharpened arm solves ``gains[seed]``
    of b's questions more than uniform, and one fewer of a's on seed 1."""
    import json

    machine = {"cpu": "x", "cpu_capability": "AVX2", "cores": 2, "torch": "t", "date": "d"}
    cpu = {"batches": [1.0, 1.0], "score": [[1.0, 8]], "total": 10.0}
    (out / "design.json").write_text(json.dumps({"batch_size": 16}))
    (out / "selection.json").write_text(
        json.dumps({"curves": {"a": [[0, 0.5]], "b": [[0, 0.0]]}, "selected": ["a", "b"], "enough": True})
    )
    (out / "screen-0.json").write_text(json.dumps({"cpu": cpu, "wall_seconds": 1.0, "examples": 10}))
    skills = ["a"] * 4 + ["b"] * 4

    def run(a_right: int, b_right: int, mix: list[dict] | None = None) -> dict:
        exact = [1.0] * a_right + [0.0] * (4 - a_right) + [1.0] * b_right + [0.0] * (4 - b_right)
        return {
            "known": ["a"],
            "weak": ["b"],
            "test": {"exact": exact, "nll": [0.0] * 8},
            "test_skills": skills,
            "test_exact": {"a": a_right / 4, "b": b_right / 4},
            "mix": mix or [{"a": 8, "b": 8}],
            "targeting": [{"precision": 1.0, "recall": 1.0, "mass": 0.9}],
            "cpu": cpu,
            "wall_seconds": 1.0,
            "examples": 16,
            "machine": machine,
        }

    for seed, gain in gains.items():
        warm = run(4, 0) | {
            "targeting": {w: {"precision": 1.0, "recall": 1.0, "mass": 0.8} for w in ("proportional", "sharpened")}
        }
        (out / f"warmup-{seed}.json").write_text(json.dumps(warm))
        (out / f"arm-uniform-{seed}.json").write_text(json.dumps(run(4, 1)))
        sharpened = run(4 - seed, 1 + int(gain), [{"a": 2, "b": 14}])
        (out / f"arm-sharpened-{seed}.json").write_text(json.dumps(sharpened))


def test_the_report_pairs_each_seeds_own_questions_and_gives_verdicts(tmp_path, monkeypatch):
    import argparse
    import json

    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("skillworld_v2_report", SCRIPT.parent / "skillworld_v2_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    write_made_up_experiment(tmp_path, {0: 2, 1: 2})
    args = argparse.Namespace(
        out=tmp_path,
        results=tmp_path / "results",
        seeds=[0, 1],
        screen_seeds=[0],
        arms=["uniform", "sharpened"],
        margin_b=8.0,
        margin_a=-4.0,
        margin_online=-3.0,
        bootstrap=200,
        unregistered=True,
        keep=2,
    )
    result = report.report(args)
    found = {(c["arm"], c["group"]): c for c in result["comparisons"]}
    assert set(found) == {("sharpened", "B"), ("sharpened", "A")}  # no proportional or online arm ran
    b, a = found[("sharpened", "B")], found[("sharpened", "A")]
    assert b["per_seed"] == {0: 50.0, 1: 50.0} and b["verdict"] == "met"  # no spread: [50, 50] clears +8
    assert (b["t_interval"]["low"], b["t_interval"]["high"]) == pytest.approx((50.0, 50.0))
    assert a["per_seed"] == {0: 0.0, 1: -25.0}  # seed 1 lost one of a's 4 questions
    assert a["verdict"] == "inconclusive"  # t(0.975, 1) = 12.7: the interval spans -4
    assert result["realised_b_share"] == {"uniform": [0.5], "sharpened": [14 / 16]}
    assert result["start"] == {"A": 100.0, "B": 0.0}
    assert json.loads((tmp_path / "results" / "skillworld_v2.json").read_text())["unregistered"] is True
    assert (tmp_path / "results" / "skillworld_v2_sharpened_vs_uniform.png").exists()
