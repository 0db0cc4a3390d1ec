"""The paper's Table 3 beside ours: its numbers as data, and ``table3.md`` / ``table3.png`` from a run's results.json.

The numbers are arXiv 2510.10023 **v1** (He, Panigrahi, Lin, Arora, "Skill-Targeted Adaptive Training"), in percent,
copied cell by cell from the text of the v1 PDF (the text copy read carries the PDF's stamp
``arXiv:2510.10023v1 [cs.LG] 11 Oct 2025``); the Llama-3.2-3B-Instruct base row and the first digits of "+SFT" also
appear in the stored copy of https://arxiv.org/html/2510.10023v1. Table 3 holds Llama-3.2-3B-Instruct and
Qwen2.5-3B; Table 7 (appendix D.1) holds Llama-3.2-1B-Instruct in the same shape, kept here too. No cell was
computed or guessed: a cell the text did not show would be ``None``.

The paper's row labels and ours (``eval_table3.yaml``'s adapters):

=================================  =====================
paper                              ours
=================================  =====================
+SFT Base Model                    ``base``
+SFT MATH-Train                    ``math_train``
+SFT MATH-Augment                  ``math_augment``
+SFT MATH-Hard                     ``math_hard``
+SFT Embed-Sel / Embed-Syn         ``embed_sel`` / ``embed_syn``
+SFT STAT-Sel / STAT-Syn           ``stat_sel`` / ``stat_syn``
+GRPO <row>                        ``<ours>+grpo`` (``base+grpo`` for "+GRPO Base Model")
=================================  =====================

The paper's Avg is printed as the paper printed it, even where it is not the mean of the row's nine cells
(:data:`PaperTable.notes` lists those rows); ours is the mean of our nine cells, as
:func:`stat_pl.evaluation.report.markdown_table` computes it, empty when a cell is missing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stat_pl.errors import UserError
from stat_pl.evaluation.benchmarks import BENCHMARKS
from stat_pl.evaluation.report import Summary
from stat_pl.plots import plot_bars

#: Table 3's columns in its order: (our benchmark name, our metric). AMC23 is avg@64, AIME pass@64 (Table 3's caption).
TABLE3_COLUMNS: tuple[tuple[str, str], ...] = (
    ("math", "pass@1"),
    ("math_d", "pass@1"),
    ("math2", "pass@1"),
    ("gsm8k", "pass@1"),
    ("amc23", "avg@64"),
    ("math_perturb_simple", "pass@1"),
    ("math_perturb_hard", "pass@1"),
    ("aime24", "pass@64"),
    ("aime25", "pass@64"),
)

#: our row label -> the paper's row label, in the paper's row order.
PAPER_ROW_LABELS: dict[str, str] = {
    "base": "+SFT Base Model",
    "math_train": "+SFT MATH-Train",
    "math_augment": "+SFT MATH-Augment",
    "math_hard": "+SFT MATH-Hard",
    "embed_sel": "+SFT Embed-Sel",
    "embed_syn": "+SFT Embed-Syn",
    "stat_sel": "+SFT STAT-Sel",
    "stat_syn": "+SFT STAT-Syn",
    "base+grpo": "+GRPO Base Model",
    "math_train+grpo": "+GRPO MATH-Train",
    "math_augment+grpo": "+GRPO MATH-Augment",
    "math_hard+grpo": "+GRPO MATH-Hard",
    "embed_sel+grpo": "+GRPO Embed-Sel",
    "embed_syn+grpo": "+GRPO Embed-Syn",
    "stat_sel+grpo": "+GRPO STAT-Sel",
    "stat_syn+grpo": "+GRPO STAT-Syn",
}

#: The student of the shipped configs (configs/paper/): the table compared against when a run's model is no paper model.
DEFAULT_PAPER_MODEL = "Llama-3.2-3B-Instruct"


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's table: percent per benchmark of :data:`TABLE3_COLUMNS` and the printed Avg."""

    scores: Mapping[str, float | None]
    avg: float | None


@dataclass(frozen=True)
class PaperTable:
    """One model's rows of the paper's results table, with where they were read."""

    model: str
    table: str
    rows: Mapping[str, PaperRow]
    arxiv_id: str = "2510.10023"
    arxiv_version: str = "v1"
    source_url: str = "https://arxiv.org/pdf/2510.10023v1"
    unit: str = "percent"
    notes: tuple[str, ...] = field(default_factory=tuple)


def _rows(cells: Mapping[str, tuple[float | None, ...]]) -> dict[str, PaperRow]:
    """``label -> (9 benchmark cells in Table 3's column order, Avg)``, as the paper prints a row."""
    rows = {}
    for label, values in cells.items():
        if len(values) != len(TABLE3_COLUMNS) + 1:
            raise ValueError(f"paper row {label!r}: {len(values)} cells, Table 3 has {len(TABLE3_COLUMNS)} + Avg")
        rows[label] = PaperRow(dict(zip((b for b, _ in TABLE3_COLUMNS), values[:-1], strict=True)), values[-1])
    return rows


# Columns: MATH, MATH-D, MATH^2, GSM8K, AMC23, MATH-perturb simple, hard, AIME 2024, 2025, Avg.
PAPER_TABLES: dict[str, PaperTable] = {
    "Llama-3.2-3B-Instruct": PaperTable(
        model="Llama-3.2-3B-Instruct",
        table="Table 3",
        rows=_rows(
            {
                "base": (44.0, 18.2, 21.9, 73.0, 21.7, 33.7, 12.2, 33.3, 16.7, 30.5),
                "math_train": (44.8, 22.9, 21.0, 75.1, 20.8, 33.0, 12.2, 30.0, 20.0, 31.1),
                "math_augment": (45.2, 23.9, 23.8, 77.8, 23.8, 35.1, 12.5, 30.0, 13.3, 31.7),
                "math_hard": (45.6, 24.9, 23.3, 78.2, 21.6, 38.0, 11.8, 30.0, 26.7, 33.3),
                "embed_sel": (46.0, 26.5, 20.5, 76.6, 21.6, 36.2, 14.7, 36.7, 16.7, 32.8),
                "embed_syn": (48.8, 27.3, 19.5, 78.4, 22.7, 36.9, 13.3, 26.7, 23.3, 33.0),
                "stat_sel": (51.5, 26.6, 25.7, 80.2, 24.7, 39.8, 13.3, 43.3, 23.3, 36.5),
                "stat_syn": (50.2, 31.7, 26.2, 79.2, 23.9, 39.1, 14.7, 40.0, 30.0, 37.2),
                "base+grpo": (45.4, 24.4, 23.3, 77.4, 25.8, 38.4, 11.8, 33.3, 3.3, 31.8),
                "math_train+grpo": (46.4, 28.4, 28.6, 80.7, 29.7, 37.6, 12.5, 36.7, 10.0, 34.5),
                "math_augment+grpo": (47.4, 31.6, 28.6, 81.4, 30.6, 37.6, 14.0, 36.7, 33.3, 37.9),
                "math_hard+grpo": (49.4, 33.2, 28.6, 80.3, 31.3, 39.1, 15.4, 43.3, 13.3, 37.1),
                "embed_sel+grpo": (50.4, 37.5, 23.8, 80.5, 32.0, 38.0, 16.8, 36.7, 20.0, 38.8),
                "embed_syn+grpo": (49.7, 37.8, 19.5, 80.6, 33.9, 39.1, 16.8, 36.7, 23.3, 38.6),
                "stat_sel+grpo": (52.2, 35.0, 32.4, 81.8, 34.2, 42.7, 17.6, 43.3, 26.7, 40.7),
                "stat_syn+grpo": (51.0, 39.1, 29.0, 82.0, 31.9, 43.0, 15.8, 46.7, 33.3, 41.3),
            }
        ),
        notes=(
            "+GRPO Base Model: Table 3 prints AIME 2025 3.3 and Avg 31.8; Table 1 prints AIME 2025 6.7 for the same "
            "row, and 6.7 is the value whose row mean is 31.8 (with 3.3 the mean is 31.5).",
            "+GRPO Embed-Sel: the printed Avg 38.8 is not the mean of the row's cells (37.3).",
            "+GRPO Embed-Syn: the printed Avg 38.6 is not the mean of the row's cells (37.5).",
        ),
    ),
    "Qwen2.5-3B": PaperTable(
        model="Qwen2.5-3B",
        table="Table 3",
        rows=_rows(
            {
                "base": (55.8, 45.3, 34.8, 80.9, 26.4, 43.7, 24.0, 23.3, 20.0, 39.4),
                "math_train": (50.0, 44.2, 32.9, 80.1, 33.6, 42.3, 23.3, 26.7, 26.7, 40.0),
                "math_augment": (56.6, 45.6, 37.1, 80.4, 33.0, 40.9, 21.9, 16.7, 26.7, 39.9),
                "math_hard": (56.7, 45.6, 31.4, 79.8, 33.6, 43.7, 23.7, 30.0, 16.7, 40.1),
                "embed_sel": (57.5, 46.4, 34.3, 80.4, 33.6, 43.7, 21.9, 30.0, 26.7, 41.6),
                "embed_syn": (56.4, 47.4, 34.3, 80.4, 35.2, 43.7, 24.0, 26.7, 26.7, 41.6),
                "stat_sel": (58.4, 47.6, 39.5, 82.3, 35.5, 45.9, 24.0, 33.3, 30.0, 44.1),
                "stat_syn": (59.4, 49.2, 40.5, 81.3, 34.4, 44.8, 25.1, 36.7, 30.0, 44.6),
                "base+grpo": (61.6, 49.8, 41.0, 85.1, 37.7, 49.8, 25.8, 33.3, 30.0, 46.0),
                "math_train+grpo": (61.6, 51.1, 34.8, 84.8, 36.9, 51.6, 26.5, 33.3, 30.0, 45.6),
                "math_augment+grpo": (61.0, 48.2, 40.5, 84.0, 36.3, 48.7, 26.2, 36.7, 26.7, 45.4),
                "math_hard+grpo": (59.0, 51.1, 35.7, 84.2, 37.7, 49.8, 26.5, 33.3, 23.3, 44.5),
                "embed_sel+grpo": (59.7, 48.9, 41.0, 84.3, 38.4, 46.6, 25.8, 26.7, 36.7, 45.3),
                "embed_syn+grpo": (61.4, 52.3, 40.0, 83.7, 38.8, 47.7, 28.0, 26.7, 30.0, 45.4),
                "stat_sel+grpo": (62.8, 52.1, 44.8, 84.8, 38.8, 48.7, 30.1, 36.7, 33.3, 48.0),
                "stat_syn+grpo": (61.8, 52.4, 41.9, 85.6, 39.2, 50.9, 26.9, 40.0, 36.7, 48.4),
            }
        ),
    ),
    "Llama-3.2-1B-Instruct": PaperTable(
        model="Llama-3.2-1B-Instruct",
        table="Table 7",
        rows=_rows(
            {
                "base": (26.0, 15.1, 9.1, 40.7, 11.1, 17.2, 6.5, 20.0, 10.0, 17.3),
                "math_train": (27.0, 14.5, 10.0, 42.8, 8.8, 19.0, 6.8, 26.7, 10.0, 18.4),
                "math_augment": (27.8, 14.2, 8.1, 43.4, 11.1, 17.9, 6.8, 26.7, 3.3, 17.7),
                "math_hard": (28.4, 15.4, 8.6, 44.6, 10.8, 18.6, 7.2, 23.3, 3.3, 17.8),
                "embed_sel": (27.4, 15.6, 8.6, 44.6, 8.8, 18.6, 6.8, 26.7, 3.3, 17.8),
                "embed_syn": (28.4, 17.2, 11.0, 44.3, 10.0, 20.1, 7.9, 23.3, 6.7, 18.8),
                "stat_sel": (32.4, 15.6, 11.0, 45.0, 12.0, 19.4, 7.9, 26.7, 16.7, 20.7),
                "stat_syn": (34.5, 18.3, 12.4, 45.6, 11.0, 20.8, 7.5, 23.3, 10.0, 20.4),
                "base+grpo": (31.8, 14.4, 9.5, 49.7, 13.3, 23.3, 8.2, 20.0, 6.7, 19.7),
                "math_train+grpo": (32.0, 16.0, 11.9, 50.8, 10.0, 23.7, 7.9, 16.7, 6.7, 19.5),
                "math_augment+grpo": (31.2, 15.0, 9.0, 49.1, 13.6, 24.7, 7.9, 23.3, 13.3, 20.8),
                "math_hard+grpo": (32.2, 14.8, 11.0, 50.6, 11.6, 22.9, 6.5, 26.7, 10.0, 20.7),
                "embed_sel+grpo": (32.8, 16.2, 11.4, 49.9, 12.0, 21.9, 6.5, 23.3, 13.3, 20.8),
                "embed_syn+grpo": (32.6, 15.0, 10.5, 51.0, 13.9, 21.1, 6.8, 26.7, 3.3, 20.1),
                "stat_sel+grpo": (34.8, 16.6, 13.8, 50.1, 14.8, 23.7, 9.0, 30.0, 16.7, 23.3),
                "stat_syn+grpo": (35.2, 21.1, 13.8, 51.0, 14.8, 24.7, 7.9, 33.3, 16.7, 24.3),
            }
        ),
    ),
}


def write_table3(results_json: Path, output_dir: Path, paper_model: str | None = None) -> tuple[Path, Path]:
    """Write ``table3.md`` and ``table3.png``: an evaluation's numbers beside the paper's, row by row.

    Args:
        results_json: the ``results.json`` of ``python -m stat_pl evaluate`` (its ``summary``: row label ->
            benchmark -> metric -> value in [0, 1]; its ``models``: each row's base model).
        output_dir: where the two files go (created).
        paper_model: a key of :data:`PAPER_TABLES`; default the paper model whose name ends the run's base model
            (``meta-llama/Llama-3.2-3B-Instruct`` -> ``Llama-3.2-3B-Instruct``), else :data:`DEFAULT_PAPER_MODEL`,
            and the table says which model each side is.

    Returns:
        The paths of ``table3.md`` and ``table3.png``.
    """
    results_json, output_dir = Path(results_json), Path(output_dir)
    results = _read_results(results_json)
    student = _student(results)
    paper = PAPER_TABLES[_paper_model(paper_model, student)]
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown = output_dir / "table3.md"
    markdown.write_text(comparison_markdown(results["summary"], paper, f"{results_json} (model {student})"))
    figure = plot_comparison(results["summary"], paper, output_dir / "table3.png")
    return markdown, figure


def comparison_markdown(summary: Summary, paper: PaperTable, ours: str) -> str:
    """Table 3 with each cell ``ours (paper)`` in percent: the paper's rows in its order, then rows it lacks.

    A side without the number leaves its part out (``45.1`` or ``(44.0)``); a cell neither side has is empty.
    ``ours`` names the run the numbers come from.
    """
    titles = [_column_title(benchmark, metric) for benchmark, metric in TABLE3_COLUMNS]
    header = ["Row", "Paper's row", *titles, "Avg", "Δ Avg"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in _row_order(summary, paper):
        values = _our_values(summary.get(label, {}))
        average = _row_average(values)
        row = paper.rows.get(label)
        paper_values = [row.scores.get(b) if row else None for b, _ in TABLE3_COLUMNS]
        paper_average = row.avg if row else None
        cells = [_cell(v, p) for v, p in zip(values, paper_values, strict=True)]
        delta = "" if average is None or paper_average is None else _signed(average - paper_average)
        paper_label = PAPER_ROW_LABELS[label] if row else ""
        lines.append("| " + " | ".join([label, paper_label, *cells, _cell(average, paper_average), delta]) + " |")
    notes = "".join(f"\n- {note}" for note in paper.notes)
    return (
        "\n".join(lines)
        + "\n\nEach cell is ours (paper), accuracy in %; AMC23 avg@64, AIME pass@64, the rest pass@1. Avg is the mean"
        " of the nine columns, empty when one is missing; Δ Avg is ours minus the paper's."
        f"\n\nPaper: {paper.model}, {paper.table} of arXiv {paper.arxiv_id}{paper.arxiv_version} ({paper.source_url}),"
        f" as stat_pl/evaluation/paper_table3.py transcribes it.\nOurs: {ours}.\n"
        + (f"\nThe paper's own table, as printed:{notes}\n" if notes else "")
    )


def plot_comparison(summary: Summary, paper: PaperTable, path: Path) -> Path:
    """Grouped bars of Avg and MATH per row, ours beside the paper's, for the rows the run has."""
    rows = [label for label in _row_order(summary, paper) if label in summary]
    series: dict[str, dict[str, float]] = {"Avg, paper": {}, "Avg, ours": {}, "MATH, paper": {}, "MATH, ours": {}}
    for label in rows:
        values = _our_values(summary[label])
        ours = {"Avg": _row_average(values), "MATH": values[0]}
        row = paper.rows.get(label)
        theirs = {"Avg": row.avg if row else None, "MATH": row.scores["math"] if row else None}
        for name in ("Avg", "MATH"):
            if theirs[name] is not None:
                series[f"{name}, paper"][label] = theirs[name]
            if ours[name] is not None:
                series[f"{name}, ours"][label] = ours[name]
    title = f"Ours vs the paper ({paper.model}, {paper.table} of arXiv {paper.arxiv_id}{paper.arxiv_version})"
    return plot_bars(series, path, title, "accuracy (%)", rows=rows)


def _read_results(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass the results.json that `python -m stat_pl evaluate` writes")
    results = json.loads(path.read_text())
    if not isinstance(results.get("summary"), dict):
        raise UserError(f"{path}: no `summary` (row label -> benchmark -> metric -> value); is it an evaluate run's?")
    return results


def _student(results: Mapping) -> str:
    """The run's base model (its first row's ``base``), or ``unknown`` for a results.json without ``models``."""
    models = results.get("models") or []
    return str(models[0].get("base", "unknown")) if models else "unknown"


def _paper_model(paper_model: str | None, student: str) -> str:
    if paper_model is not None:
        if paper_model not in PAPER_TABLES:
            raise UserError(
                f"paper_model: {paper_model!r} is not in the paper's tables; use one of {list(PAPER_TABLES)}"
            )
        return paper_model
    stem = Path(student).name.lower()
    return next((name for name in PAPER_TABLES if name.lower() == stem), DEFAULT_PAPER_MODEL)


def _row_order(summary: Summary, paper: PaperTable) -> list[str]:
    return [*paper.rows, *(label for label in summary if label not in paper.rows)]


def _our_values(per_benchmark: Mapping[str, Mapping[str, float]]) -> list[float | None]:
    """Our row in percent, in Table 3's column order; ``None`` where the run lacks the benchmark or metric."""
    values = [per_benchmark.get(benchmark, {}).get(metric) for benchmark, metric in TABLE3_COLUMNS]
    return [None if v is None else 100 * v for v in values]


def _row_average(values: Sequence[float | None]) -> float | None:
    """The mean over the nine columns, ``None`` when one is missing (report.markdown_table's rule)."""
    return None if None in values else sum(values) / len(values)


def _cell(ours: float | None, paper: float | None) -> str:
    parts = [f"{ours:.1f}"] if ours is not None else []
    parts += [f"({paper:.1f})"] if paper is not None else []
    return " ".join(parts)


def _signed(difference: float) -> str:
    """``+0.8`` / ``-1.6``; a difference that rounds to zero reads ``+0.0``, never ``-0.0``."""
    return f"{round(difference, 1) + 0.0:+.1f}"


def _column_title(benchmark: str, metric: str) -> str:
    title = BENCHMARKS[benchmark].title
    return title if metric == "pass@1" else f"{title} {metric}"
