"""Evaluation: benchmarks, generation and grading, pass@k / avg@k, breakdowns, the results store, reports.

Configs can name the classes here by their short path, e.g. ``stat_pl.evaluation.BenchmarkSpec``.
The offline stage itself is ``evaluate.evaluate``.
"""

from stat_pl.evaluation.adapters import AdapterMismatchError, ModelEntry
from stat_pl.evaluation.benchmarks import BenchmarkSpec, load_benchmark, split_math_test
from stat_pl.evaluation.metrics import AvgAtK, GroupedAccuracy, MetricName, PassAtK, pass_at_k
from stat_pl.evaluation.scoring import EvalSettings, QuestionResult, SampleSetting, breakdowns, score
from stat_pl.evaluation.store import ResultStore

__all__ = [
    "AdapterMismatchError",
    "AvgAtK",
    "BenchmarkSpec",
    "EvalSettings",
    "GroupedAccuracy",
    "MetricName",
    "ModelEntry",
    "PassAtK",
    "QuestionResult",
    "ResultStore",
    "SampleSetting",
    "breakdowns",
    "load_benchmark",
    "pass_at_k",
    "score",
    "split_math_test",
]
