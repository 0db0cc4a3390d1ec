"""A resumable store of per-question results: one JSON line per (model, benchmark, question, samples).

The one generate-and-grade store of stat-pl: ``python -m stat_pl evaluate`` and ``python -m stat_pl
profile`` append each chunk's results as soon as they are graded (:meth:`ResultStore.generate_missing`)
and reload the file on start, so an interrupted or repeated run generates only what is missing. The
key covers everything that changes the samples: the model (base name and a hash of the adapter
weights), the benchmark, the question (its id and text) and the sample setting (n, temperatures,
token budget, seed, system prompt).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from stat_pl.engines.base import Engine
from stat_pl.errors import UserError
from stat_pl.evaluation.scoring import QuestionResult, SampleSetting, Timing, generate_and_grade
from stat_pl.grading import DEFAULT_TIMEOUT_S
from stat_pl.records import ProblemRecord

logger = logging.getLogger(__name__)
_RESULT_FIELDS = [f.name for f in dataclasses.fields(QuestionResult)]


def result_key(model_id: str, benchmark: str, question: ProblemRecord, setting: SampleSetting) -> str:
    """A stable key; the question's text is hashed in, so an edited question is generated again."""
    text_hash = hashlib.sha1(question.problem.encode("utf-8")).hexdigest()[:12]
    return f"{model_id}|{benchmark}|{question.id}|{text_hash}|{setting.key()}"


class ResultStore:
    """Results keyed by :func:`result_key`, kept in memory and appended to ``path`` as they arrive.

    A last line cut short by an interruption is dropped (with a warning); a malformed line elsewhere is
    an error naming the file and line, since it means the file was edited.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._rows: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            self._load()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: str) -> QuestionResult | None:
        row = self._rows.get(key)
        return QuestionResult(**{f: row[f] for f in _RESULT_FIELDS}) if row is not None else None

    def row(self, key: str) -> dict[str, Any]:
        """The stored row of ``key``: its result plus the labels written with it (model, benchmark, setting)."""
        return self._rows[key]

    def add(self, key: str, result: QuestionResult, **labels: Any) -> None:
        """Keep ``result`` under ``key`` and append it to the file right away."""
        row = {"key": key, **labels, **dataclasses.asdict(result)}
        self._rows[key] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # the ranks of a stage append to one file: whole lines, never interleaved
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def generate_missing(
        self,
        model_id: str,
        benchmark: str,
        records: Sequence[ProblemRecord],
        setting: SampleSetting,
        engine: Callable[[], Engine],
        chunk_size: int,
        timing: Timing,
        grading_timeout_s: float = DEFAULT_TIMEOUT_S,
        progress: bool = True,
        **labels: Any,
    ) -> int:
        """Generate and grade the ``records`` that have no result under ``model_id``, ``benchmark`` and
        ``setting``, adding each chunk as soon as it is graded; returns how many questions were generated.

        ``engine`` is called only when a question is missing, so a finished run loads no model.
        ``labels`` are written beside each result (e.g. the model's row label).
        """
        missing = [r for r in records if self.get(result_key(model_id, benchmark, r, setting)) is None]
        if not missing:
            return 0
        bar = tqdm(
            total=len(missing),
            desc=f"{labels.get('model', model_id)} {benchmark} ({setting.label()})",
            disable=not progress,
            unit="q",
        )

        def save(chunk: list[ProblemRecord], results: list[QuestionResult]) -> None:
            for record, result in zip(chunk, results, strict=True):
                self.add(
                    result_key(model_id, benchmark, record, setting),
                    result,
                    **labels,
                    benchmark=benchmark,
                    setting=dataclasses.asdict(setting),
                )
            bar.update(len(chunk))

        generate_and_grade(engine(), missing, setting, chunk_size, save, timing, grading_timeout_s)
        bar.close()
        return len(missing)

    def _load(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                if lineno == len(lines):  # drop it from the file too, or the next append would follow it
                    logger.warning("%s:%d: dropping a line cut short by an interrupted run", self.path, lineno)
                    self.path.write_text("".join(f"{kept}\n" for kept in lines[:-1]), encoding="utf-8")
                    continue
                raise UserError(
                    f"{self.path}:{lineno}: malformed result line ({e.msg}); remove the line "
                    "to generate that question again"
                ) from None
            missing = [f for f in ("key", *_RESULT_FIELDS) if f not in row]
            if missing:
                raise UserError(f"{self.path}:{lineno}: result line lacks field(s) {missing}")
            self._rows[row["key"]] = row
