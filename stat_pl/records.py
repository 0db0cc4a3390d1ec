"""Problem records and their loading from JSONL / JSON / Parquet files or a Hugging Face dataset.

Every training, validation and benchmark question in stat-pl is a :class:`ProblemRecord`. A
:class:`RecordSource` says where the rows are and which column holds which field, so the MATH files in
``../shared/data``, the Hub's MATH and GSM8K all load through one function.
"""

from __future__ import annotations

import dataclasses
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stat_pl.errors import MissingFileError, UserError
from stat_pl.skills import normalize_skill

RECORD_FIELDS = ("id", "problem", "answer", "solutions", "subject", "level", "skills", "source")
_FILE_SUFFIXES = {".jsonl", ".json", ".parquet"}
_DROPPED = re.compile(r"\$|\\left(?![a-z])|\\right(?![a-z])|\\[,;:! ]")
_TOKEN = re.compile(r"\\[a-z]+|[a-z]+|\d+|[^\sa-z\d]")


def problem_tokens(text: str) -> tuple[str, ...]:
    """A question's normalised token sequence: lower case; ``$``, ``\\left``/``\\right`` and LaTeX spacing
    dropped; words, numbers, LaTeX commands and single symbols as tokens.

    Two copies of a question (a local file and the Hub, a teacher reproducing it) differ in ids and in
    spacing, ``$`` and ``\\left(`` more often than in content, so this, not the record id, is what
    identifies a question: the MATH split and the contamination guard are keyed on it.
    """
    return tuple(_TOKEN.findall(_DROPPED.sub(" ", text.lower())))


def problem_key(text: str) -> str:
    """The normalised text of a question (:func:`problem_tokens` joined by spaces): equal for copies."""
    return " ".join(problem_tokens(text))


#: Provenance keys a row may carry besides the record's own fields (written flat into the JSONL row).
PROVENANCE_KEYS = (
    "builder",
    "difficult_question",
    "target_skill",
    "origin",
    "origin_id",
    "example_ids",
    "votes",
    "similarity",
)
#: Where a row's question and answer came from: a pool solution, a teacher solution of a pool
#: question checked against the gold answer, or a question the teacher wrote (STAT-Syn, Embed-Syn).
ORIGINS = ("pool", "teacher_answer", "synthetic")


class RecordError(UserError):
    """A row that cannot become a :class:`ProblemRecord`; the message names file, row and field."""


@dataclass(frozen=True)
class ProblemRecord:
    """One question. ``answer`` is the gold final answer (LaTeX); ``solutions`` are worked solutions."""

    id: str
    problem: str
    answer: str
    solutions: tuple[str, ...] = ()
    subject: str = ""
    level: int | None = None
    skills: tuple[str, ...] = ()
    source: str = ""


@dataclass(frozen=True)
class BuiltRow:
    """One training row: a record (one solution for selected data, the agreeing ones for synthetic
    data) and why it is in the dataset.

    Stage 3 (:mod:`stat_pl.building`) makes these; it lives here, beside the records, so that the data
    modules and sources that train on them need not import the builders.
    """

    record: ProblemRecord
    provenance: Mapping[str, Any]

    def __post_init__(self) -> None:
        unknown = sorted(set(self.provenance) - set(PROVENANCE_KEYS))
        if unknown:
            raise ValueError(f"row {self.record.id}: unknown provenance key(s) {unknown}; known: {PROVENANCE_KEYS}")
        origin = self.provenance.get("origin")
        if origin not in ORIGINS:
            raise ValueError(f"row {self.record.id}: provenance 'origin' must be one of {ORIGINS}, got {origin!r}")

    def to_json(self) -> dict[str, Any]:
        """The JSONL row: the record's fields (as :class:`~stat_pl.records.RecordSource` reads them) and the
        provenance fields beside them."""
        r = self.record
        return {
            "id": r.id,
            "problem": r.problem,
            "answer": r.answer,
            "solutions": list(r.solutions),
            "subject": r.subject,
            "level": r.level,
            "skills": list(r.skills),
            "source": r.source,
            **self.provenance,
        }


class DataSource(ABC):
    """Anything that yields problem records: files, Hub datasets, the skill world, synthetic data."""

    @abstractmethod
    def load(self) -> list[ProblemRecord]:
        """All records of the source, validated."""


@dataclass
class RecordSource(DataSource):
    """Records from a file or a Hub dataset.

    Args:
        path: a ``.jsonl`` / ``.json`` / ``.parquet`` file, or a Hugging Face dataset name.
        split: the split of a Hub dataset (ignored for files).
        fields: record field -> column name, for columns named otherwise (e.g. ``{problem: question}``).
            ``solutions`` may map to a string column (one solution) or a list column.
        answer_delimiter: when set, the answer column holds ``solution <delimiter> answer`` and is split
            there (GSM8K on the Hub uses ``"####"``).
        name: recorded as each record's ``source``; defaults to the file stem or dataset name.
        subset: a Hub dataset configuration name.
        limit: keep only the first ``limit`` rows.
    """

    path: str
    split: str = "train"
    fields: dict[str, str] = field(default_factory=dict)
    answer_delimiter: str | None = None
    name: str | None = None
    subset: str | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.fields) - set(RECORD_FIELDS))
        if unknown:
            raise UserError(
                f"RecordSource({self.path}).fields: unknown record field(s) {unknown}; known: {list(RECORD_FIELDS)}"
            )

    def load(self) -> list[ProblemRecord]:
        return load_records(self)


def load_records(source: RecordSource | str) -> list[ProblemRecord]:
    """Load and validate every row of ``source``; the first bad row raises :class:`RecordError`."""
    if isinstance(source, str):
        source = RecordSource(path=source)
    name = source.name or _default_name(source.path)
    records = []
    for where, row in _iter_rows(source):
        records.append(_to_record(row, source, where, default_id=f"{name}/{len(records)}", name=name))
        if source.limit is not None and len(records) >= source.limit:
            break
    return records


def _default_name(path: str) -> str:
    """``../shared/data/math/train.jsonl`` -> ``math/train``; a Hub name stays as it is."""
    if not _is_file_path(path):
        return path
    p = Path(path)
    return f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem


def _is_file_path(path: str) -> bool:
    return Path(path).suffix.lower() in _FILE_SUFFIXES or Path(path).exists()


def _iter_rows(source: RecordSource) -> Iterator[tuple[str, Mapping[str, Any]]]:
    path = Path(source.path)
    suffix = path.suffix.lower()
    if suffix in _FILE_SUFFIXES and not path.is_file():
        raise MissingFileError(f"data file {path} does not exist (resolved to {path.resolve()})")
    if suffix == ".jsonl":
        yield from _iter_jsonl(path)
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        rows = data if isinstance(data, list) else data.get("data") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise RecordError(f"{path}: expected a JSON list of rows (or {{'data': [...]}})")
        for i, row in enumerate(rows):
            yield f"{path}: row {i}", row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}: row {i}", row
    elif path.is_dir():
        raise RecordError(f"{path} is a directory; give a .jsonl, .json or .parquet file")
    else:
        import datasets

        rows = datasets.load_dataset(source.path, source.subset, split=source.split)
        for i, row in enumerate(rows):
            yield f"{source.path}[{source.split}]: row {i}", row


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise RecordError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row


def _to_record(row: Mapping[str, Any], source: RecordSource, where: str, default_id: str, name: str) -> ProblemRecord:
    def column(field_name: str) -> str:
        return source.fields.get(field_name, "solution" if field_name == "solutions" else field_name)

    def get(field_name: str, required: bool) -> Any:
        col = column(field_name)
        if col not in row or row[col] is None:
            if field_name == "solutions" and "solutions" in row:
                return row["solutions"]
            if required:
                raise RecordError(f"{where}: field {field_name!r} (column {col!r}) is missing")
            return None
        return row[col]

    problem = _expect_str(get("problem", True), where, "problem")
    solutions = _solutions(get("solutions", False), where)
    answer = get("answer", not solutions and source.answer_delimiter is None)
    if answer is None:
        from stat_pl.grading import extract_answer

        answer = extract_answer(solutions[0]) if solutions else None
        if not answer:
            raise RecordError(f"{where}: field 'answer' is missing and no \\boxed{{}} answer in the solution")
    answer = _expect_str(answer, where, "answer") if not isinstance(answer, (int, float)) else str(answer)
    if source.answer_delimiter is not None and source.answer_delimiter in answer:
        worked, answer = answer.rsplit(source.answer_delimiter, 1)
        solutions = solutions or (worked.strip(),)
        answer = answer.strip().replace(",", "")
    rid = get("id", False)
    return ProblemRecord(
        id=str(rid) if rid is not None else default_id,
        problem=problem,
        answer=answer.strip(),
        solutions=solutions,
        subject=normalize_skill(_expect_str(get("subject", False) or "", where, "subject")),
        level=_level(get("level", False), where),
        skills=_skills(get("skills", False), where),
        source=str(get("source", False) or name),
    )


def _expect_str(value: Any, where: str, field_name: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{where}: field {field_name!r} must be a string, got {type(value).__name__}")
    return value


def _solutions(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise RecordError(f"{where}: field 'solutions' must be a string or a list of strings")


def _level(value: Any, where: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RecordError(f"{where}: field 'level' must be an integer, got bool")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(?:level\s*)?(\d+)\s*", value, flags=re.IGNORECASE)
        if match:
            return int(match.group(1))
        if value.strip() == "?":
            return None
    raise RecordError(f"{where}: field 'level' must be an integer or 'Level N', got {value!r}")


def _skills(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise RecordError(f"{where}: field 'skills' must be a list of strings")
    return tuple(dict.fromkeys(normalize_skill(v) for v in value))


def canonical_subject(record: ProblemRecord) -> ProblemRecord:
    """The record with its subject spelled as the skill catalog spells it.

    ``Counting & Probability`` (Hub MATH) -> ``counting_and_probability`` (the local files' spelling).
    """
    subject = normalize_skill(record.subject.replace("&", " and "))
    return record if subject == record.subject else dataclasses.replace(record, subject=subject)
