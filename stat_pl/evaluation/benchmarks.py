"""The benchmarks of the paper's Table 3, each a Hub dataset with a local-file alternative.

A :class:`Benchmark` says where a benchmark lives on the Hugging Face Hub (a
:class:`~stat_pl.records.RecordSource` with its split and column mapping) and how its questions are
selected (MATH keeps its evaluation split, MATH-D the difficult questions of that split). A
:class:`BenchmarkSpec` is what a user writes in a config: a registry name, optionally a local file
(``path``) or a full ``source`` instead of the Hub default, the metrics and a question limit. A name
outside the registry is a user benchmark and needs ``path`` or ``source``: any JSONL with ``problem``
and ``answer`` (or a ``solution`` with a ``\\boxed{}`` answer).

Hub names, as of writing (``verified`` in :data:`BENCHMARKS`): the dataset and its columns were checked
against the dataset card for MATH (``DigitalLearningGmbH/MATH-lighteval``, the 5,000-question test
split), MATH-500, GSM8K, AIME 2024, AIME 2025 and AMC23. AMC23 is the source the paper cites,
``AI-MO/aimo-validation-amc``: 83 AMC problems in split ``train``, with columns
``id``, ``problem``, ``answer`` (a number, e.g. ``27.0``, read as the string ``"27.0"``, which grades
equal to ``27``) and ``url``. Each registered benchmark records its Hub source's size
(``hub_questions``); a run that reads another number of questions (a local ``path``, another
``source``) logs it, so a score on a smaller set is not taken for the paper's.

Local copies (``path:``), for tests and CPU configs only: ``../shared/data/eval/amc23.jsonl`` is
**not** the paper's AMC23 but another, smaller set: the 40 AMC 12 2023 problems of ``math-ai/amc23``,
as AdaptMI packages them (40 rows, not 83; ``../shared/data/README.md``).
``../shared/data/math/test.jsonl`` holds 4,000 of MATH's 5,000 test questions (below).

**Not verified** (no Hub access where stat-pl is developed and tested), and exactly what is assumed:

* MATH^2 (``math2``): the Hub dataset ``veds12/math-squared``, split ``train``, one row per question
  with the question in column ``question``, a worked solution in ``solution`` and the final answer in
  ``answer`` (or, failing that, a ``\boxed{}`` answer inside ``solution``).
* MATH-Perturb (``math_perturb_simple`` / ``math_perturb_hard``): the Hub dataset
  ``kaixuanhuang/MATH-Perturb`` with splits ``simple`` and ``hard`` and columns ``problem`` and
  ``answer``. The authors' GitHub repository (Kaffaljidhmah2/MATH-Perturb) ships
  ``math_perturb/math_perturb_{simple,hard}.jsonl``, assumed to have the same two fields; such a file
  loads as it is through ``path``. The continual configs (``configs/paper/continual_*.yaml``) also
  assume a ``subject`` field (MATH's subjects) per row, which the teacher needs for the skill list.

If a guess is wrong, the loader fails with the file, row and missing field named; give ``path`` or a
full ``source`` with the right ``fields`` mapping.

MATH's split: the paper takes 1,000 of the 5,000 MATH test questions as the validation set that the
Missing-Skill-Profile is built on (and each method's learning rate is chosen on: ``math_validation``)
and evaluates on the other 4,000. :func:`split_math_test` makes that
split with a fixed seed, keyed on the normalised question text (so a local file and a Hub copy split
alike), and the profile stage uses the same function, so the two never overlap. The
local copy ``../shared/data/math/test.jsonl`` holds only 4,000 of the 5,000 questions, so with it the
split is 1,000 validation and 3,000 evaluation questions.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from stat_pl.errors import MissingFileError, UserError
from stat_pl.evaluation.metrics import MetricName
from stat_pl.records import ProblemRecord, RecordError, RecordSource, canonical_subject, load_records, problem_key

logger = logging.getLogger(__name__)

Selection = Literal["all", "math_evaluation", "math_validation", "math_difficult"]
MATH_VALIDATION_SIZE = 1000


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark: its title in tables, its Hub source and how questions are selected."""

    name: str
    title: str
    hub: RecordSource
    selection: Selection = "all"
    verified: bool = True
    hub_questions: int | None = None  # rows of the Hub source, from its dataset card; None where unverified


def _hub(path: str, split: str, name: str, **kwargs) -> RecordSource:
    return RecordSource(path=path, split=split, name=name, **kwargs)


_MATH_HUB = _hub("DigitalLearningGmbH/MATH-lighteval", "test", "math", fields={"subject": "type"})
_MATH_QUESTIONS = 5000

#: name -> benchmark. The paper's Table 3 set plus MATH-500.
BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("math", "MATH", _MATH_HUB, selection="math_evaluation", hub_questions=_MATH_QUESTIONS),
        Benchmark("math_d", "MATH-D", _MATH_HUB, selection="math_difficult", hub_questions=_MATH_QUESTIONS),
        # the 1,000 validation questions: the profile's, and what each method's learning rate is chosen on
        Benchmark("math_validation", "MATH-Val", _MATH_HUB, selection="math_validation", hub_questions=_MATH_QUESTIONS),
        Benchmark(
            "math500",
            "MATH-500",
            _hub("HuggingFaceH4/MATH-500", "test", "math500", fields={"id": "unique_id"}),
            hub_questions=500,
        ),
        Benchmark(
            "gsm8k",
            "GSM8K",
            _hub(
                "openai/gsm8k", "test", "gsm8k", subset="main", fields={"problem": "question"}, answer_delimiter="####"
            ),
            hub_questions=1319,
        ),
        Benchmark("amc23", "AMC23", _hub("AI-MO/aimo-validation-amc", "train", "amc23"), hub_questions=83),
        Benchmark("aime24", "AIME24", _hub("HuggingFaceH4/aime_2024", "train", "aime24"), hub_questions=30),
        Benchmark("aime25", "AIME25", _hub("math-ai/aime25", "test", "aime25"), hub_questions=30),
        Benchmark(
            "math2",
            "MATH^2",
            _hub("veds12/math-squared", "train", "math2", fields={"problem": "question", "solutions": "solution"}),
            verified=False,
        ),
        Benchmark(
            "math_perturb_simple",
            "MATH-P-Simple",
            _hub("kaixuanhuang/MATH-Perturb", "simple", "math_perturb_simple"),
            verified=False,
        ),
        Benchmark(
            "math_perturb_hard",
            "MATH-P-Hard",
            _hub("kaixuanhuang/MATH-Perturb", "hard", "math_perturb_hard"),
            verified=False,
        ),
    )
}


@dataclass
class BenchmarkSpec:
    """One benchmark of an evaluation run, as written in a config.

    Args:
        name: a key of :data:`BENCHMARKS` (``math``, ``math_d``, ``gsm8k``, ``amc23``, ``aime24``, ...), or
            any other name for a user benchmark given by ``path`` or ``source``.
        path: a local ``.jsonl`` / ``.json`` / ``.parquet`` file with ``problem`` and ``answer`` instead of
            the Hub dataset (e.g. ``../shared/data/math/test.jsonl`` for MATH; for AMC23,
            ``../shared/data/eval/amc23.jsonl`` is a 40-question set, not the paper's 83: module docstring).
        source: a full :class:`~stat_pl.records.RecordSource` (Hub name, split, column mapping) instead of
            the registry's; for Hub datasets whose columns are named otherwise.
        metrics: ``pass@1`` (sampled at the run's ``temperature``), ``avg@K`` and ``pass@K`` (K samples at
            the run's ``sample_temperature``). Paper: ``pass@1``; AMC23 ``avg@64``; AIME ``pass@64``.
        samples: samples per question for the avg@K / pass@K metrics; default the largest K. More
            samples than K lower the variance of the pass@K estimate.
        limit: evaluate only the first ``limit`` questions (after MATH's split, which shuffles).
        difficult: MATH-D only: a ``profile.json`` from a difficulty run over the MATH evaluation split
            (its ``questions`` are the difficult ones), a JSON list of ids, or a text file of ids.
        split_seed: the seed of :func:`split_math_test` (MATH and MATH-D).
        validation_size: hold out the first ``validation_size`` questions of :func:`split_math_test`
            (``split_seed``) and evaluate on the rest. Default: MATH's 1,000 for MATH and MATH-D, no
            hold-out otherwise. ``math_validation`` keeps the held-out questions instead (the profile's 1,000).
            The continual setting (STAT-ConSel / ConSyn) profiles on such a validation part of a new benchmark
            (``profile --split=validation``); the paper's Figure 3 scores the whole benchmark, profiled questions
            included (``configs/paper/continual_eval.yaml``), and giving the profile's size and seed here leaves
            them out instead (``configs/paper/continual_eval_held_out.yaml``).
    """

    name: str
    path: str | None = None
    source: RecordSource | None = None
    metrics: list[str] = field(default_factory=lambda: ["pass@1"])
    samples: int | None = None
    limit: int | None = None
    difficult: str | None = None
    split_seed: int = 0
    validation_size: int | None = None

    def __post_init__(self) -> None:
        where = f"benchmark {self.name!r}"
        if not self.metrics:
            raise UserError(f"{where}: metrics is empty; use e.g. [pass@1]")
        largest = max(self._sampled_ks(), default=1)
        if self.samples is not None and self.samples < largest:
            raise UserError(
                f"{where}: samples={self.samples} is fewer than the largest K ({largest}) of {self.metrics}"
            )
        if self.path is not None and self.source is not None:
            raise UserError(f"{where}: give either path or source, not both")
        if self.name not in BENCHMARKS and self.path is None and self.source is None:
            raise UserError(
                f"unknown benchmark {self.name!r}; known: {sorted(BENCHMARKS)}. For your own "
                "questions give `path:` a JSONL file with `problem` and `answer` fields"
            )
        if self.name == "math_d" and self.difficult is None:
            raise UserError(
                "benchmark 'math_d' needs `difficult:` a profile.json (or ids file) from a difficulty "
                "run over the MATH evaluation split"
            )
        if self.limit is not None and self.limit < 1:
            raise UserError(f"{where}: limit must be >= 1, got {self.limit}")

    @property
    def title(self) -> str:
        """The column title in tables: the registry's (``MATH-D``) or the user's name."""
        return BENCHMARKS[self.name].title if self.name in BENCHMARKS else self.name

    def metric_names(self) -> list[MetricName]:
        return [MetricName.parse(m) for m in self.metrics]

    def sampled_count(self) -> int:
        """Samples per question for the avg@K / pass@K metrics (0 when there are none)."""
        ks = self._sampled_ks()
        return (self.samples or max(ks)) if ks else 0

    def _sampled_ks(self) -> list[int]:
        """The K of every metric read from the K samples at ``sample_temperature`` (all but pass@1)."""
        return [m.k for m in self.metric_names() if not (m.kind == "pass" and m.k == 1)]


def load_benchmark(spec: BenchmarkSpec) -> list[ProblemRecord]:
    """The questions of ``spec``: loaded, selected (MATH split, MATH-D), subjects canonical, limited."""
    registered = BENCHMARKS.get(spec.name)
    source = spec.source or (RecordSource(path=spec.path, name=spec.name) if spec.path else registered.hub)
    records = [canonical_subject(r) for r in load_records(source)]
    if not records:
        raise RecordError(f"benchmark {spec.name!r}: {source.path} has no rows")
    if registered and registered.hub_questions not in (None, len(records)):
        logger.warning(
            "benchmark %r: %d questions in %s, not the %d of the registry's %s: its scores are on another set",
            spec.name,
            len(records),
            source.path,
            registered.hub_questions,
            registered.hub.path,
        )
    selection = registered.selection if registered else "all"
    if selection != "all" or spec.validation_size is not None:
        validation, evaluation = split_math_test(
            records, seed=spec.split_seed, validation_size=spec.validation_size or MATH_VALIDATION_SIZE
        )
        records = validation if selection == "math_validation" else evaluation
    if selection == "math_difficult":
        records = _difficult_subset(records, spec.difficult)
    return records[: spec.limit] if spec.limit else records


def split_math_test(
    records: Sequence[ProblemRecord], seed: int = 0, validation_size: int = MATH_VALIDATION_SIZE
) -> tuple[list[ProblemRecord], list[ProblemRecord]]:
    """Split MATH test questions into (validation, evaluation) with a fixed seed (paper: 1k / 4k of 5k).

    The profile stage builds its Missing-Skill-Profile on ``validation`` and evaluation reads
    ``evaluation``, both through this function, so they are disjoint for the same seed. The split is
    keyed on each question's normalised text (:func:`stat_pl.records.problem_key`), never on record
    ids or file order: the local files (ids ``test/<subject>/<n>``) and a Hub copy (row numbers) of the
    same questions split the same way. Questions are ranked by a seeded hash of their text and the
    first ``validation_size`` distinct texts are the validation set; copies of one text (a question
    listed twice) always fall on the same side, so the validation half can hold a few more records
    than ``validation_size``. Both halves come in hash order, a random order across subjects, so the
    first N of either is a random sample.
    """
    by_text: dict[str, list[ProblemRecord]] = {}
    for record in records:
        by_text.setdefault(problem_key(record.problem), []).append(record)
    if not 0 < validation_size < len(by_text):
        raise UserError(
            f"split_math_test: validation_size={validation_size} must be between 1 and "
            f"{len(by_text) - 1} for {len(by_text)} distinct questions"
        )
    ranked = sorted(by_text, key=lambda text: hashlib.sha256(f"{seed}\n{text}".encode()).hexdigest())
    validation = [r for text in ranked[:validation_size] for r in by_text[text]]
    evaluation = [r for text in ranked[validation_size:] for r in by_text[text]]
    return validation, evaluation


def contamination_sources(
    names: Sequence[str] = ("all",), paths: Mapping[str, str] | None = None
) -> list[RecordSource]:
    """Every question of the named registry benchmarks (``all``: every one), for the contamination guard.

    Synthetic questions must copy no test question of any benchmark a model is evaluated on, not only
    MATH's; the guard matches on normalised text (:mod:`stat_pl.building.contamination`), so which
    copy is read (Hub or local, whatever its ids) does not matter. A benchmark is read whole: MATH's
    validation questions are test questions too. ``paths`` maps a registry name to a local file read
    instead of its Hub dataset (``math`` serves ``math_d`` as well); benchmarks sharing one source
    (MATH and MATH-D) are read once.
    """
    paths = dict(paths or {})
    wanted = sorted(BENCHMARKS) if "all" in names else list(names)
    unknown = sorted({*wanted, *paths} - set(BENCHMARKS))
    if unknown:
        raise UserError(
            f"contamination benchmarks: unknown name(s) {unknown}; known: {sorted(BENCHMARKS)} or 'all'. "
            "Give other test sets as `contamination:` files"
        )
    if "math_d" in wanted and "math" in paths:
        paths.setdefault("math_d", paths["math"])
    sources: dict[tuple, RecordSource] = {}
    for name in wanted:
        source = RecordSource(path=paths[name], name=name) if name in paths else BENCHMARKS[name].hub
        sources.setdefault((source.path, source.split, source.subset), source)
    return list(sources.values())


def read_difficult_ids(path: str | Path) -> list[str]:
    """Question ids from a profile.json (its ``questions``), a JSON list of ids, or a text file, one per line."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"difficult-question file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".json":
        return [line.strip() for line in text.splitlines() if line.strip()]
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    ids = payload.get("questions") if isinstance(payload, dict) else payload
    if not isinstance(ids, (dict, list)) or not all(isinstance(i, str) for i in ids):
        raise UserError(f"{path}: expected a profile with a 'questions' object, or a JSON list of question ids")
    return list(ids)


def _difficult_subset(evaluation: list[ProblemRecord], difficult: str | None) -> list[ProblemRecord]:
    ids = set(read_difficult_ids(difficult))
    kept = [r for r in evaluation if r.id in ids]
    if not kept:
        raise UserError(
            f"MATH-D: none of the {len(ids)} ids in {difficult} is in the MATH evaluation split "
            f"({len(evaluation)} questions, e.g. {evaluation[0].id!r}); run the difficulty detector "
            "over the evaluation split (not the validation split) and pass that profile"
        )
    if len(kept) < len(ids):
        logger.warning(
            "MATH-D: %d of the %d ids in %s are not in the MATH evaluation split and are skipped",
            len(ids) - len(kept),
            len(ids),
            difficult,
        )
    return kept
