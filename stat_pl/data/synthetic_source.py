"""SyntheticSource: the synthetic rows a run adds as it trains, kept in a JSONL file in the run directory.

The live loop (DESIGN.md, "What stat-pl adds") re-synthesises between epochs: STAT-Syn rows for the
newest Missing-Skill-Profile are appended here by ``SFTDataModule.add_synthetic``. The file is the
record of what was added: a resumed run reads it back at setup, and the data module cuts it back to
the rows its checkpoint knew (rows added after that checkpoint are made again, from the teacher's
cache). Rows are written in the format of ``stat_pl build`` (record fields + provenance), so the
file also loads with :class:`~stat_pl.records.RecordSource`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stat_pl.records import BuiltRow, DataSource, ProblemRecord, RecordSource, load_records


@dataclass
class SyntheticSource(DataSource):
    """Synthetic training rows in ``path`` (a ``.jsonl`` file, created on the first append).

    Put it last in the data module's ``train`` sources and give it its share in ``mix_ratios``
    (e.g. ``[0.7, 0.3]``: 70% real data re-weighted by the profile, 30% synthetic). Before anything
    was added it is empty, and its share goes to the other sources.
    """

    path: str

    def load(self) -> list[ProblemRecord]:
        """The rows added so far (none when the file does not exist yet)."""
        if not Path(self.path).is_file():
            return []
        return load_records(RecordSource(self.path, name="synthetic"))

    def append(self, rows: Sequence[ProblemRecord | BuiltRow]) -> None:
        """Append ``rows`` to the file and flush them to disk (the run may be killed right after)."""
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(as_built_row(row).to_json(), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate(self, count: int) -> None:
        """Keep the first ``count`` rows of the file (a resumed run drops rows its checkpoint never saw)."""
        path = Path(self.path)
        lines = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True) if line.strip()]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(lines[:count]), encoding="utf-8")
        tmp.replace(path)


def as_built_row(row: ProblemRecord | BuiltRow) -> BuiltRow:
    """A row with provenance: a bare record is a synthetic row of unknown origin beyond that."""
    return row if isinstance(row, BuiltRow) else BuiltRow(row, {"origin": "synthetic"})


def synthetic_records(rows: Sequence[ProblemRecord | BuiltRow], path: str) -> list[ProblemRecord]:
    """The records of ``rows``, checked to be trainable (a problem and at least one solution)."""
    records = [as_built_row(r).record for r in rows]
    for record in records:
        if not record.problem.strip() or not record.solutions:
            raise ValueError(
                f"synthetic row {record.id!r} for {path}: field 'problem' is empty or field "
                "'solutions' has no solution; only solved questions can be trained on"
            )
    return records
