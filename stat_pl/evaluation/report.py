"""What an evaluation leaves for a reader: a Markdown table like the paper's Table 3 and per-group plots.

The table has one row per model and one column per (benchmark, metric), in percent. The plots are
the paper's Figures 4 and 7: accuracy per subject and per skill (and per level where the data has
levels), one bar series per model, so base, SFT and STAT-Sel sit side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from stat_pl.plots import plot_bars

#: model -> benchmark name -> metric -> value in [0, 1]
Summary = Mapping[str, Mapping[str, Mapping[str, float]]]
#: model -> group -> {"accuracy": a, "questions": n}
GroupTables = Mapping[str, Mapping[str, Mapping[str, float]]]


def table_columns(summary: Summary) -> list[tuple[str, str]]:
    """(benchmark, metric) pairs in the order they first appear across models."""
    columns: dict[tuple[str, str], None] = {}
    for per_benchmark in summary.values():
        for benchmark, metrics in per_benchmark.items():
            for metric in metrics:
                columns[(benchmark, metric)] = None
    return list(columns)


def markdown_table(summary: Summary, titles: Mapping[str, str], question_counts: Mapping[str, int]) -> str:
    """Rows = models, columns = ``<benchmark title> <metric>``, cells = percent with one decimal.

    A line under the table gives the number of questions per benchmark, since a subset (``limit``)
    changes what the numbers mean.
    """
    columns = table_columns(summary)
    header = ["Model", *(f"{titles[b]} {m}" for b, m in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, per_benchmark in summary.items():
        cells = [model]
        for benchmark, metric in columns:
            value = per_benchmark.get(benchmark, {}).get(metric)
            cells.append("" if value is None else f"{100 * value:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    counts = ", ".join(f"{titles[b]} {n}" for b, n in question_counts.items())
    return "\n".join(lines) + f"\n\nAccuracy in %. Questions per benchmark: {counts}.\n"


def plot_groups(tables: GroupTables, title: str, path: str | Path) -> Path:
    """Accuracy (%) per group, one bar per model, each group labelled with its question count."""
    groups = sorted({g for per_group in tables.values() for g in per_group})
    counts = _question_counts(tables, groups)
    accuracy = {
        model: {g: row.get("accuracy", 0.0) for g, row in per_group.items()} for model, per_group in tables.items()
    }
    return plot_bars(
        accuracy,
        path,
        title,
        "accuracy (%)",
        rows=groups,
        scale=100,
        row_labels={g: f"{g} ({counts[g]})" for g in groups},
        value_range=(0, 100),
    )


def _question_counts(tables: GroupTables, groups: Sequence[str]) -> dict[str, int]:
    """Questions per group (the same for every model, since all answer the same questions)."""
    return {g: max(int(t.get(g, {}).get("questions", 0)) for t in tables.values()) for g in groups}
