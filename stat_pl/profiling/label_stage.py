"""``python -m stat_pl label-skills --config configs/label_skills.yaml``: Stage 0, a Skill-Map from a teacher.

STAT needs a Skill-Map (skill -> training questions) to turn a Missing-Skill-Profile into training data
(DESIGN.md, Stage 0; paper Sec. 3.3). The paper's map labels each training question with up to five
skills of its subject's list (Didolkar et al. 2024); the labels shipped in ``../shared/data`` give
almost every MATH question one skill and 948 none. This stage has the teacher label the questions,
through :func:`~stat_pl.profiling.teacher_profiler.label_skills`:

* the prompt (``label_skills``) shows the question and its subject's skill list only, as the paper's
  labelling does; ``include_solution: true`` also shows the reference solution (an option, template
  ``label_skills_with_solution``);
* the teacher's first ``max_skills`` (default 5) catalog names are kept; names outside the subject's
  list are counted as unmatched and never added;
* ``relabel: false`` (the default) asks only about questions without skills and keeps the others'
  labels, to fill gaps cheaply; ``relabel: true`` asks about every question and its labels replace the
  input's, the paper's Skill-Map (``configs/paper/label_skills_math.yaml``);
* a question the teacher could not label (no usable ``<skill>`` tag after ``max_attempts`` tries, or a
  failed request) keeps its input skills, possibly none, and is counted ``unlabelled``: nothing is
  dropped.

Cost: at most (questions asked) x ``max_attempts`` teacher calls; every answer is committed to the
teacher's cache as it arrives, so a killed run resumes where it stopped and a rerun makes no call.

Written to ``output_dir``:

* ``records.jsonl``: every record, in input order, with its skills; it loads back with
  :class:`~stat_pl.records.RecordSource`;
* ``skill_map.json``: skill -> question ids, the Skill-Map itself;
* ``summary.md`` / ``summary.json`` (also printed): the counters (labelled, unlabelled, unmatched
  skill names, teacher calls, cache hits) and the coverage report of
  :mod:`~stat_pl.profiling.label_report`, skills per question and questions per skill, before (the
  input's labels) and after;
* ``skills_per_question.png``, ``questions_per_skill.png``: the same report drawn;
* from the command line, ``config.yaml``: the parsed config that reruns the stage.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stat_pl.profiling.label_report import coverage_markdown, plot_coverage, skill_coverage
from stat_pl.profiling.run_files import write_summary
from stat_pl.profiling.teacher_profiler import label_skills
from stat_pl.records import ProblemRecord, RecordSource, canonical_subject, load_records
from stat_pl.skills import SkillCatalog, SkillMap
from stat_pl.teacher.base import Teacher
from stat_pl.teacher.templates import PromptTemplates

#: How many least-linked skills the report lists.
FEWEST_SKILLS_SHOWN = 10


def build_skill_map(
    records: RecordSource,
    teacher: Teacher,
    catalog: str = "../shared/data/skills/catalog.json",
    benchmark: str = "MATH",
    output_dir: str = "runs/label_skills",
    max_skills: int = 5,
    max_attempts: int = 3,
    relabel: bool = False,
    include_solution: bool = False,
    templates: PromptTemplates | None = None,
) -> dict[str, Any]:
    """Label the records with skills of their subjects; write the records, the Skill-Map and the report.

    Args:
        records: the questions to label (a file or Hub dataset; ``limit`` takes the first N).
        teacher: the labelling teacher (``class_path`` / ``init_args``, e.g. ``OpenAICompatibleTeacher``).
        catalog: the skill catalog JSON; ``benchmark`` its entry (``MATH``, ``GSM8K``).
        output_dir: where the outputs go.
        max_skills: the most skills per question (the paper: up to 5); the teacher's first ones are kept.
        max_attempts: tries per question in all, re-asking after an answer without a usable tag.
        relabel: ask about every question and replace its labels (the paper's Skill-Map); default:
            ask only about questions without skills and keep the others' labels.
        include_solution: show the teacher the reference solution too (default: the question and the
            skill list only, the paper's inputs); every question asked about must then have one.
        templates: prompt files; ``label_skills`` (``label_skills_with_solution`` with ``include_solution``).

    Returns the summary: the counters, and ``before`` / ``after`` coverage (see :mod:`label_report`).
    """
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    skill_catalog = SkillCatalog.from_json(catalog, benchmark)
    loaded = [canonical_subject(r) for r in load_records(records)]
    labelled, stats = label_skills(
        loaded,
        teacher,
        skill_catalog,
        templates=templates,
        max_skills=max_skills,
        max_attempts=max_attempts,
        relabel=relabel,
        include_solution=include_solution,
    )
    _write_records(labelled, output / "records.jsonl")
    skill_map = SkillMap.from_records(labelled)
    (output / "skill_map.json").write_text(
        json.dumps({skill: list(skill_map.problems_with(skill)) for skill in skill_map.skills}, indent=1)
    )
    skills = _catalog_skills_of(loaded, skill_catalog)
    before = skill_coverage(loaded, skills, max_skills)
    after = skill_coverage(labelled, skills, max_skills)
    counts = {
        "records": len(labelled),
        "asked": stats["questions"],
        "labelled": stats["labelled"],
        "unlabelled": stats["unlabelled"],
        "kept_existing_labels": stats["kept_existing_labels"],
        "with_skills_before": len(loaded) - before.skills_per_question[0],
        "with_skills_after": len(labelled) - after.skills_per_question[0],
        "mean_skills_per_question_before": before.mean_skills_per_question,
        "mean_skills_per_question_after": after.mean_skills_per_question,
        "unmatched_skill_names": stats["unmatched_skill_names"],
        "skills_used": len(skill_map.skills),
        "teacher_calls": stats["teacher_calls"],
        "cache_hits": stats["cache_hits"],
    }
    details = {
        "unmatched_skills": stats["unmatched_skills"],
        "before": before.to_json(FEWEST_SKILLS_SHOWN),
        "after": after.to_json(FEWEST_SKILLS_SHOWN),
    }
    table = write_summary(output, f"skill labels for {records.path}", counts, details)
    report = coverage_markdown(before, after, FEWEST_SKILLS_SHOWN)
    with (output / "summary.md").open("a", encoding="utf-8") as f:
        f.write("\n" + report)
    plot_coverage(before, after, output)
    print(table + "\n" + report)
    return {**counts, **details}


def _write_records(records: Sequence[ProblemRecord], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(dataclasses.asdict(record), ensure_ascii=False) + "\n")


def _catalog_skills_of(records: Sequence[ProblemRecord], catalog: SkillCatalog) -> list[str]:
    """The catalog skills of the subjects the records are from: the skills a Skill-Map should cover."""
    if len(catalog.subjects) == 1:
        return catalog.skills(catalog.subjects[0])
    subjects = {r.subject for r in records} & set(catalog.subjects)
    return sorted({s for subject in subjects for s in catalog.skills(subject)})
