"""``python -m stat_pl build --config configs/build_stat_sel.yaml``: Stage 3 as an offline stage.

Reads a profile and the training pool, runs each configured builder and writes each dataset into
``<output_dir>/<builder name>/`` (``data.jsonl``, ``manifest.json``, ``skill_distribution.png``). Every
teacher call goes through the teacher's persistent cache, so an interrupted build is resumed by
running the same command again: what was already answered is not paid for twice. The command line
saves the parsed config, every builder's arguments included, to ``<output_dir>/config.yaml``
(:func:`stat_pl.cli.save_stage_config`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from stat_pl.building.base import BuildInputs, DataBuilder
from stat_pl.building.contamination import ContaminationGuard
from stat_pl.building.output import write_dataset
from stat_pl.evaluation.benchmarks import contamination_sources
from stat_pl.missing_skill_profile import MissingSkillProfile
from stat_pl.records import RecordSource, load_records
from stat_pl.skills import SkillCatalog
from stat_pl.teacher.base import Teacher

log = logging.getLogger(__name__)
_TEACHER_COUNTERS = ("requests", "retries", "failures", "cache_hits", "cache_misses", "cache_writes")


def build(
    builders: list[DataBuilder],
    pool: RecordSource,
    output_dir: str = "runs/build",
    profile: str | None = None,
    questions: RecordSource | None = None,
    contamination: list[RecordSource] | None = None,
    contamination_benchmarks: list[str] | None = None,
    benchmark_paths: dict[str, str] | None = None,
    teacher: Teacher | None = None,
    catalog: str | None = None,
    benchmark: str = "MATH",
    contamination_ngram: int = 8,
    contamination_max_overlap: float = 0.5,
    save_datasets: bool = False,
    plot: bool = True,
) -> list[Path]:
    """Build training data for a Missing-Skill-Profile (STAT-Sel, STAT-Syn) and the paper's baselines.

    Args:
        builders: the methods to run (``stat_pl.building.StatSel``, ``StatSyn``, ``MathTrain``,
            ``MathAugment``, ``MathHard``, ``EmbedSel``, ``EmbedSyn``), each written to its own folder.
        pool: the training questions (paper: MATH train, with skill labels and solutions).
        output_dir: the datasets go to ``<output_dir>/<builder name>/``.
        profile: the ``profile.json`` of Stage 2 (MATH-Train / -Augment / -Hard do not need one).
        questions: the file the difficult questions come from (Embed-Sel and Embed-Syn need their text).
        contamination: test sets that synthetic questions must not copy (the pool is always checked).
        contamination_benchmarks: registry benchmarks (``stat_pl.evaluation.benchmarks.BENCHMARKS``) they
            must not copy either, read whole; ``[all]`` for every one (the paper's configs).
        benchmark_paths: registry name -> a local file read instead of that benchmark's Hub dataset.
        teacher: the teacher for answers and synthesis (class_path / init_args), e.g.
            ``stat_pl.teacher.OpenAICompatibleTeacher``; override its URL with ``--teacher.base_url``.
        catalog: a skill catalog JSON; when set, every skill of the profile must be in it.
        benchmark: the catalog's entry (``MATH``, ``GSM8K``).
        contamination_ngram: the word n-gram length of the contamination guard.
        contamination_max_overlap: the n-gram overlap above which a new question is a near-duplicate.
        save_datasets: also save each dataset as a Hugging Face ``datasets`` folder beside the JSONL.
        plot: write the skill-distribution plot (profile vs the dataset vs the pool).
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("stat_pl").setLevel(logging.INFO)  # our progress, not every HTTP request
    inputs = _inputs(pool, profile, questions, teacher, catalog, benchmark)
    inputs.guard = ContaminationGuard.from_records(inputs.pool, contamination_ngram, contamination_max_overlap)
    benchmarks = contamination_sources(contamination_benchmarks, benchmark_paths) if contamination_benchmarks else []
    for source in [*(contamination or []), *benchmarks]:
        inputs.guard.add_records(load_records(source))
    written = []
    for builder in builders:
        before = teacher.stats() if teacher is not None else {}
        dataset = builder.build(inputs)
        after = teacher.stats() if teacher is not None else {}
        teacher_stats = {k: after.get(k, 0) - before.get(k, 0) for k in _TEACHER_COUNTERS if k in after}
        path = write_dataset(
            dataset,
            Path(output_dir) / dataset.name,
            teacher_stats,
            inputs.profile,
            inputs.pool,
            save_datasets=save_datasets,
            plot=plot,
        )
        shortfall = dataset.stats.get("shortfall", 0)
        log.info(
            "%s: %d rows -> %s%s%s",
            dataset.name,
            len(dataset.rows),
            path,
            f" ({shortfall} short of target_size)" if shortfall else "",
            f"; teacher {teacher_stats}" if teacher_stats else "",
        )
        written.append(path)
    return written


def _inputs(
    pool: RecordSource,
    profile: str | None,
    questions: RecordSource | None,
    teacher: Teacher | None,
    catalog: str | None,
    benchmark: str,
) -> BuildInputs:
    skills = SkillCatalog.from_json(catalog, benchmark) if catalog else None
    return BuildInputs(
        pool=load_records(pool),
        pool_path=pool.path,
        profile=MissingSkillProfile.from_json(profile, skills) if profile else None,
        profile_path=profile or "<no profile>",
        questions={r.id: r for r in load_records(questions)} if questions else {},
        questions_path=questions.path if questions else "<no questions: set `questions:`>",
        teacher=teacher,
    )
