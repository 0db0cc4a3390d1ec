"""The statistics of ``bench/skillworld_effect.py``: weakest-skill choice, paired bootstrap, diagnosis.

The experiment itself takes CPU-hours; its analysis is checked here on small made-up results.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "bench" / "skillworld_effect.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("skillworld_effect", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_weakest_skills_rank_by_missing_share_then_nll_never_by_name(bench):
    start = {
        "validation": {
            "missing": {"a": 2.0, "b": 4.0, "c": 2.0, "d": 0.0},
            "nll": {"a": 1.0, "b": 0.5, "c": 3.0, "d": 9.0},
        }
    }
    questions = Counter({"a": 2, "b": 8, "c": 2, "d": 4})
    # a and c are both fully missed (share 1.0): c has the higher NLL, so it ranks first despite its name.
    assert bench.weakest_skills(start, questions, 2) == ["c", "a"]
    assert bench.weakest_skills(start, questions, 3) == ["c", "a", "b"]


def made_up_runs(weak_right_online: bool) -> tuple[dict, list[str]]:
    """Two seeds, skills w (weak) and o (other), 4 test questions each; online solves w if asked to."""
    skills = ["w"] * 4 + ["o"] * 4

    def test(weak: bool, other: bool) -> dict:
        return {"correct": [weak] * 4 + [other] * 4, "nll": [2.0] * 4 + [1.0] * 4}

    shares = [{"w": 0.5, "o": 0.5}, {"w": 0.5, "o": 0.5}]
    runs = {
        "start": {s: {"test": test(False, True)} for s in (0, 1)},
        "uniform": {s: {"test": test(False, True), "skill_shares": shares} for s in (0, 1)},
        "online": {
            s: {"test": test(weak_right_online, True), "skill_shares": [{"w": 0.9, "o": 0.1}] * 2} for s in (0, 1)
        },
    }
    return runs, skills


def test_paired_bootstrap_gives_the_difference_and_a_degenerate_interval_when_there_is_no_noise(bench):
    runs, skills = made_up_runs(weak_right_online=True)
    weakest = {0: ["w"], 1: ["w"]}
    point = bench.summary_statistics(runs, skills, [0, 1], ["uniform", "online"], weakest)
    assert point["online"]["correct_weak"] == 1.0 and point["uniform"]["correct_weak"] == 0.0
    assert point["online"]["correct_others"] == point["uniform"]["correct_others"] == 1.0
    intervals = bench.bootstrap(runs, skills, [0, 1], ["uniform", "online"], weakest, reps=200)
    assert intervals["online-uniform.correct_weak"] == (1.0, 1.0)
    assert intervals["online-uniform.correct_others"] == (0.0, 0.0)


def test_bootstrap_interval_is_wide_when_seeds_disagree(bench):
    runs, skills = made_up_runs(weak_right_online=True)
    runs["online"][1]["test"]["correct"][:4] = [False] * 4  # seed 1: no gain
    intervals = bench.bootstrap(runs, skills, [0, 1], ["uniform", "online"], {0: ["w"], 1: ["w"]}, reps=400)
    low, high = intervals["online-uniform.correct_weak"]
    assert low == 0.0 and high == 1.0


def test_diagnosis_reports_the_realised_weak_share_and_profile_precision(bench):
    runs, skills = made_up_runs(weak_right_online=False)
    found = bench.diagnosis(runs, skills, [0, 1], ["uniform", "online"], {0: ["w"], 1: ["o"]})
    assert found["weak_share"] == {"uniform": [0.5, 0.5], "online": [0.5, 0.5]}  # seed 1 calls "o" weak
    assert found["profile_precision"] == {0: 1.0, 1: 0.0}  # on the test set at the start, w is the weak one
