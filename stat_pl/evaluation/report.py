"""What an evaluation leaves for a reader: a Markdown table like the paper's Table 3 and per-group plots.

The table has one row per model and one column per (benchmark, metric), in percent, and the row's average. The plots are
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

    With two columns or more, a last column ``Avg`` is the row's mean over them, as the paper's Table 3 has; it is
    left empty for a row that lacks a column (a mean over fewer benchmarks would not compare). A line under the table
    gives the number of questions per benchmark, since a subset (``limit``) changes what the numbers mean.
    """
    columns = table_columns(summary)
    averaged = len(columns) > 1
    header = ["Model", *(f"{titles[b]} {m}" for b, m in columns), *(["Avg"] if averaged else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, per_benchmark in summary.items():
        values = [per_benchmark.get(benchmark, {}).get(metric) for benchmark, metric in columns]
        cells = [model, *("" if value is None else f"{100 * value:.1f}" for value in values)]
        if averaged:
            complete = None not in values
            cells.append(f"{100 * sum(values) / len(values):.1f}" if complete else "")
        lines.append("| " + " | ".join(cells) + " |")
    counts = ", ".join(f"{titles[b]} {n}" for b, n in question_counts.items())
    return "\n".join(lines) + f"\n\nAccuracy in %. Questions per benchmark: {counts}.\n"


def answer_table(summary: Mapping[str, Mapping[str, Mapping[str, float]]], titles: Mapping[str, str]) -> str:
    """Rows = models, two columns per benchmark: teacher-forced answer exact match (%) and answer-token NLL
    (nats per token), from :func:`~stat_pl.evaluation.answer_metrics.answer_summary`; empty where no question
    of a benchmark has a boxed gold solution."""
    benchmarks = list(titles)
    header = ["Model", *(f"{titles[b]} {column}" for b in benchmarks for column in ("answer EM", "answer NLL"))]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, per_benchmark in summary.items():
        cells = [model]
        for benchmark in benchmarks:
            row = per_benchmark.get(benchmark, {})
            exact, nll = row.get("answer_exact"), row.get("answer_nll")
            cells += ["" if exact is None else f"{100 * exact:.1f}", "" if nll is None else f"{nll:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    first_model = next(iter(summary.values()), {})  # every model answers the same questions
    scored = ", ".join(f"{titles[b]} {int(first_model[b]['questions'])}" for b in benchmarks if b in first_model)
    return "\n".join(lines) + (
        "\n\nTeacher-forced on the gold solution: answer EM in % (every final-answer token the argmax), "
        f"answer NLL in nats per answer token. Questions with a boxed gold solution: {scored}.\n"
    )


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
