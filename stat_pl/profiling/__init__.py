"""Stages 1-2: difficult questions (detectors) and their missing skills (profilers), and one round of both.

Configs can name every class here by its short path, e.g. ``stat_pl.profiling.GroundTruthDetector``.
The offline stages themselves are ``profile_stage.profile`` and ``label_stage.build_skill_map``.
"""

from stat_pl.profiling.base import Attempt, Diagnosis, DifficultyDetector, Profiler
from stat_pl.profiling.detectors import ConsistencyDetector, GroundTruthDetector, LengthDetector
from stat_pl.profiling.oracle import SkillWorldOracle
from stat_pl.profiling.proxy import SkillMapProxy
from stat_pl.profiling.reward_models import (
    OutcomeRewardDetector,
    PRMLastStepDetector,
    ProcessRewardDetector,
    RewardModelScorer,
)
from stat_pl.profiling.round import judge, profile_round
from stat_pl.profiling.teacher_profiler import TeacherProfiler

__all__ = [
    "Attempt",
    "ConsistencyDetector",
    "Diagnosis",
    "DifficultyDetector",
    "GroundTruthDetector",
    "LengthDetector",
    "OutcomeRewardDetector",
    "PRMLastStepDetector",
    "ProcessRewardDetector",
    "Profiler",
    "RewardModelScorer",
    "SkillMapProxy",
    "SkillWorldOracle",
    "TeacherProfiler",
    "judge",
    "profile_round",
]
