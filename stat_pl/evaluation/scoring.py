"""Generate, grade and score: the evaluation core shared by ``python -m stat_pl evaluate`` and the
``BenchmarkEvaluator`` callback.

A benchmark's metrics fall into sample settings (DESIGN.md, Evaluation): pass@1 reads one sample at
the low temperature (paper 0.1), avg@K / pass@K read K samples at temperature 1.0. Each question is
generated once per setting, graded with :func:`stat_pl.grading.extract_answer` and
:func:`~stat_pl.grading.is_equivalent` (the one grader), and every metric of the setting is computed
from the same per-question counts.
"""

from __future__ import annotations

import dataclasses
import json
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from stat_pl.data.formatting import prompt_messages
from stat_pl.engines.base import Completion, Engine, SamplingParams
from stat_pl.evaluation.benchmarks import BenchmarkSpec
from stat_pl.evaluation.metrics import GroupedAccuracy, MetricName
from stat_pl.grading import DEFAULT_TIMEOUT_S, extract_answer, is_equivalent
from stat_pl.records import ProblemRecord


@dataclass(frozen=True)
class SampleSetting:
    """How a benchmark's questions are sampled for one group of metrics; part of every result's key."""

    n: int
    temperature: float
    max_new_tokens: int
    top_p: float
    seed: int
    system_prompt: str | None

    def key(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def label(self) -> str:
        return f"n={self.n}, T={self.temperature:g}"

    def sampling(self, first_question_id: str) -> SamplingParams:
        """Sampling for a chunk; the seed follows the chunk's first question, so a resumed run, whose
        chunks start where the interrupted run's did, draws the same samples."""
        seed = zlib.crc32(f"{self.seed}:{first_question_id}".encode()) & 0x7FFFFFFF
        return SamplingParams(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p, n=self.n, seed=seed
        )


@dataclass(frozen=True)
class EvalSettings:
    """The sampling and bookkeeping settings of an evaluation; their defaults (the paper's) live here only.

    ``python -m stat_pl evaluate`` and the ``BenchmarkEvaluator`` callback take the same fields as
    arguments, with these defaults.
    """

    temperature: float = 0.1
    sample_temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    batch_size: int = 32
    system_prompt: str | None = None
    seed: int = 0
    grading_timeout_s: float = DEFAULT_TIMEOUT_S
    progress: bool = True

    def sample_settings(self, spec: BenchmarkSpec) -> dict[SampleSetting, list[MetricName]]:
        """Group ``spec``'s metrics by the samples they read: pass@1 -> 1 sample at ``temperature``;
        avg@K / pass@K -> ``spec.sampled_count()`` samples at ``sample_temperature``."""
        settings: dict[SampleSetting, list[MetricName]] = {}
        for metric in spec.metric_names():
            single = metric.kind == "pass" and metric.k == 1
            setting = SampleSetting(
                n=1 if single else spec.sampled_count(),
                temperature=self.temperature if single else self.sample_temperature,
                max_new_tokens=self.max_new_tokens,
                top_p=self.top_p,
                seed=self.seed,
                system_prompt=self.system_prompt,
            )
            settings.setdefault(setting, []).append(metric)
        return settings


@dataclass
class QuestionResult:
    """One question's samples: the responses, the extracted answers and whether each is correct."""

    question_id: str
    responses: list[str]
    answers: list[str | None]
    correct: list[bool]
    num_tokens: list[int]
    finish_reasons: list[str]

    @property
    def num_correct(self) -> int:
        return sum(self.correct)

    @property
    def score(self) -> float:
        """The share of correct samples (the question's accuracy)."""
        return self.num_correct / len(self.correct)


@dataclass
class Timing:
    """Where the wall time went; written into results.json and read by ``bench/eval_throughput.py``."""

    generation_s: float = 0.0
    grading_s: float = 0.0
    questions_generated: int = 0
    completions_generated: int = 0


def grade_question(
    record: ProblemRecord, completions: Sequence[Completion], timeout_s: float = DEFAULT_TIMEOUT_S
) -> QuestionResult:
    """Extract each completion's final answer and compare it with the gold answer."""
    answers = [extract_answer(c.text) for c in completions]
    return QuestionResult(
        question_id=record.id,
        responses=[c.text for c in completions],
        answers=answers,
        correct=[is_equivalent(a, record.answer, timeout_s) for a in answers],
        num_tokens=[c.num_tokens for c in completions],
        finish_reasons=[c.finish_reason for c in completions],
    )


def _chunks(records: Sequence[ProblemRecord], size: int) -> Iterator[list[ProblemRecord]]:
    for start in range(0, len(records), size):
        yield list(records[start : start + size])


def generate_and_grade(
    engine: Engine,
    records: Sequence[ProblemRecord],
    setting: SampleSetting,
    chunk_size: int,
    on_chunk: Callable[[list[ProblemRecord], list[QuestionResult]], None],
    timing: Timing,
    grading_timeout_s: float = DEFAULT_TIMEOUT_S,
) -> None:
    """Generate ``setting.n`` samples per question in chunks of ``chunk_size`` questions, grade them, and
    hand each finished chunk to ``on_chunk`` (which saves it), so an interruption loses one chunk at most.

    Questions go longest first, so a chunk's prompts have similar lengths and pad little. The order is
    a stable sort, so the questions a resumed run still lacks form the same chunks as before.
    """
    ordered = sorted(records, key=lambda r: -len(r.problem))
    for chunk in _chunks(ordered, max(1, chunk_size)):
        started = time.perf_counter()
        prompts = [prompt_messages(r.problem, setting.system_prompt) for r in chunk]
        completions = engine.generate(prompts, setting.sampling(chunk[0].id))
        graded = time.perf_counter()
        results = [grade_question(r, c, grading_timeout_s) for r, c in zip(chunk, completions, strict=True)]
        finished = time.perf_counter()
        timing.generation_s += graded - started
        timing.grading_s += finished - graded
        timing.questions_generated += len(chunk)
        timing.completions_generated += sum(len(c) for c in completions)
        on_chunk(chunk, results)


def score(results: Sequence[QuestionResult], metrics: Sequence[MetricName]) -> dict[str, float]:
    """Each metric over the questions' (correct, samples) counts, e.g. ``{"pass@1": 0.42}``.

    ``results`` are all the questions already, held by this one process (profiling runs on rank 0 only),
    so the metrics never sync across ranks: a rank-0-only ``compute`` that waited for the others would
    hang a DDP run."""
    values = {}
    for name in metrics:
        metric = name.build(sync_on_compute=False)
        metric.update([r.num_correct for r in results], [len(r.correct) for r in results])
        values[str(name)] = float(metric.compute())
    return values


def breakdowns(records: Sequence[ProblemRecord], scores: Sequence[float]) -> dict[str, dict[str, dict[str, float]]]:
    """Accuracy per subject, per level and per skill (paper Figures 4 and 7), for the groupings the data
    has: ``{"subject": {"algebra": {"accuracy": .., "questions": ..}}, "skill": {...}}``. ``scores`` are
    the questions' accuracies in [0, 1] (a :class:`QuestionResult`'s ``score``: its share of correct samples).
    The ``SkillReprofiler`` reads its per-skill accuracy from here too."""
    memberships = {
        "subject": [[r.subject] if r.subject else [] for r in records],
        "level": [[f"level {r.level}"] if r.level is not None else [] for r in records],
        "skill": [list(r.skills) for r in records],
    }
    tables = {}
    for grouping, groups in memberships.items():
        names = sorted({g for member in groups for g in member})
        if not names:
            continue
        metric = GroupedAccuracy(names, sync_on_compute=False)  # local results, as in score()
        metric.update(groups, list(scores))
        tables[grouping] = metric.as_table()
    return tables
