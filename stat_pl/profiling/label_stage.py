"""``python -m stat_pl label-skills --config configs/label_skills.yaml``: Stage 0, a Skill-Map from a teacher.

STAT needs a Skill-Map (skill -> training questions) to turn a Missing-Skill-Profile into training data
(DESIGN.md, Stage 0). For a dataset without skill labels the teacher labels each question with up to
``max_skills`` skills from its subject's list in the catalog (Didolkar et al. 2024), through
:func:`~stat_pl.profiling.teacher_profiler.label_skills`. Written to ``output_dir``:

* ``records.jsonl``: every record, in order, with its skills (a record the teacher could not label keeps
  an empty list and is counted); it loads back with :class:`~stat_pl.records.RecordSource`;
* ``skill_map.json``: skill -> question ids, the Skill-Map itself;
* ``summary.md`` / ``summary.json``: labelled, unlabelled, unmatched skill names, teacher calls, cache
  hits; from the command line, ``config.yaml``: the parsed config that reruns the stage.

Every answer is committed to the teacher's cache as it arrives, so an interrupted run resumes where it
stopped and a rerun makes no teacher call.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

from stat_pl.profiling.run_files import write_summary
from stat_pl.profiling.teacher_profiler import label_skills
from stat_pl.records import RecordSource, canonical_subject, load_records
from stat_pl.skills import SkillMap
from stat_pl.teacher.base import Teacher
from stat_pl.teacher.templates import PromptTemplates


def build_skill_map(
    records: RecordSource,
    teacher: Teacher,
    catalog: str = "../shared/data/skills/catalog.json",
    benchmark: str = "MATH",
    output_dir: str = "runs/label_skills",
    max_skills: int = 5,
    max_attempts: int = 3,
    relabel: bool = False,
    templates: PromptTemplates | None = None,
) -> dict[str, Any]:
    """Label every record with skills of its subject and write the records, the Skill-Map and a summary.

    Args:
        records: the questions to label (a file or Hub dataset; ``limit`` takes the first N).
        teacher: the labelling teacher (``class_path`` / ``init_args``, e.g. ``OpenAICompatibleTeacher``).
        catalog: the skill catalog JSON; ``benchmark`` its entry (``MATH``, ``GSM8K``).
        output_dir: where the outputs go.
        max_skills: the most skills per question (Didolkar et al.: up to 5).
        max_attempts: tries per question in all, re-asking after an answer without a usable tag.
        relabel: label records that already have skills too (default: keep their labels).
        templates: prompt files; the ``label_skills`` template is used.
    """
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    loaded = [canonical_subject(r) for r in load_records(records)]
    labelled, stats = label_skills(
        loaded,
        teacher,
        catalog,
        benchmark=benchmark,
        templates=templates,
        max_skills=max_skills,
        max_attempts=max_attempts,
        relabel=relabel,
    )
    with (output / "records.jsonl").open("w", encoding="utf-8") as f:
        for record in labelled:
            f.write(json.dumps(dataclasses.asdict(record), ensure_ascii=False) + "\n")
    skill_map = SkillMap.from_records(labelled)
    (output / "skill_map.json").write_text(
        json.dumps({skill: list(skill_map.problems_with(skill)) for skill in skill_map.skills}, indent=1)
    )
    counts = {
        "records": len(labelled),
        "with_skills": sum(bool(r.skills) for r in labelled),
        "kept_existing_labels": stats["kept_existing_labels"],
        "labelled": stats["labelled"],
        "unlabelled": stats["unlabelled"],
        "unmatched_skill_names": stats["unmatched_skill_names"],
        "skills_used": len(skill_map.skills),
        "teacher_calls": stats["teacher_calls"],
        "cache_hits": stats["cache_hits"],
    }
    skill_counts = Counter(s for r in labelled for s in r.skills)
    table = write_summary(
        output,
        f"skill labels for {records.path}",
        counts,
        {"unmatched_skills": stats["unmatched_skills"], "skill_counts": dict(skill_counts.most_common())},
    )
    print(table)
    return counts
