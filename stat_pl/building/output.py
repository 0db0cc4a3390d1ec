"""A built dataset on disk: ``data.jsonl``, ``manifest.json``, the skill-distribution plot, and
optionally a Hugging Face ``datasets`` folder.

``data.jsonl`` loads with :class:`~stat_pl.records.RecordSource` (fields id, problem, answer, solutions,
subject, level, skills, source; the provenance fields beside them are ignored by it). The manifest
records what the file holds: rows per skill / origin / subject, rows rejected and why, the shortfall
against the target size, and the teacher's calls and cache hits. The config that made it is the build's
``config.yaml``, one folder up (written by the command line).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from stat_pl.building.base import BuiltDataset, BuiltRow
from stat_pl.building.plot import plot_skill_distribution
from stat_pl.missing_skill_profile import MissingSkillProfile
from stat_pl.records import ProblemRecord

DATA_FILE = "data.jsonl"
MANIFEST_FILE = "manifest.json"
PLOT_FILE = "skill_distribution.png"
UNLABELLED = "(no skill)"


def skill_counts(rows: Iterable[BuiltRow]) -> Counter[str]:
    """Rows per skill: a row built for a target skill counts for it; any other row is split evenly over
    its labelled skills (a row without labels counts for ``(no skill)``)."""
    return _skill_counts((row.provenance.get("target_skill"), row.record) for row in rows)


def pool_skill_counts(records: Iterable[ProblemRecord]) -> Counter[str]:
    """Questions per skill in a pool, counted like :func:`skill_counts` (MATH-Train's distribution)."""
    return _skill_counts((None, r) for r in records)


def _skill_counts(items: Iterable[tuple[str | None, ProblemRecord]]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for target, record in items:
        if target:
            counts[target] += 1.0
        elif record.skills:
            for skill in record.skills:
                counts[skill] += 1.0 / len(record.skills)
        else:
            counts[UNLABELLED] += 1.0
    return counts


def shares(counts: Mapping[str, float]) -> dict[str, float]:
    """Counts as shares of their labelled total (``(no skill)`` excluded), largest first."""
    labelled = {s: c for s, c in counts.items() if s != UNLABELLED}
    total = sum(labelled.values()) or 1.0
    return {s: round(c / total, 6) for s, c in sorted(labelled.items(), key=lambda kv: (-kv[1], kv[0]))}


def write_dataset(
    dataset: BuiltDataset,
    out_dir: str | Path,
    teacher_stats: Mapping[str, int],
    profile: MissingSkillProfile | None = None,
    pool: Iterable[ProblemRecord] = (),
    save_datasets: bool = False,
    plot: bool = True,
) -> Path:
    """Write ``dataset`` into ``out_dir`` (created); returns the path of its ``data.jsonl``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_path = out_dir / DATA_FILE
    _atomic_write(data_path, "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in dataset.rows))
    counts = skill_counts(dataset.rows)
    manifest = _manifest(dataset, counts, teacher_stats, profile)
    if plot and profile is not None:
        series = {dataset.name: shares(counts), "math_train (pool)": shares(pool_skill_counts(pool))}
        plot_skill_distribution(out_dir / PLOT_FILE, profile.shares(), series)
        manifest["files"]["plot"] = PLOT_FILE
    if save_datasets:
        import datasets

        datasets.Dataset.from_list([r.to_json() for r in dataset.rows]).save_to_disk(str(out_dir / "datasets"))
        manifest["files"]["datasets"] = "datasets"
    _atomic_write(out_dir / MANIFEST_FILE, json.dumps(manifest, indent=1, ensure_ascii=False, default=str))
    return data_path


def _manifest(
    dataset: BuiltDataset, counts: Counter[str], teacher_stats: Mapping[str, int], profile: MissingSkillProfile | None
) -> dict[str, Any]:
    rows = dataset.rows
    return {
        "name": dataset.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rows": len(rows),
        "distinct_questions": len({r.record.problem for r in rows}),
        "rows_per_skill": {s: round(c, 3) for s, c in counts.most_common()},
        "skill_shares": shares(counts),
        "profile_shares": {s: round(p, 6) for s, p in profile.shares().items()} if profile else None,
        "rows_per_origin": dict(Counter(r.provenance["origin"] for r in rows).most_common()),
        "rows_per_subject": dict(Counter(r.record.subject for r in rows).most_common()),
        "stats": dataset.stats,
        "teacher": dict(teacher_stats),
        "files": {"data": DATA_FILE},
    }


def _atomic_write(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a crash never leaves half a dataset."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
