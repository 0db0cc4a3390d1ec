"""What an evaluation leaves for a reader: a Markdown table like the paper's Table 3 and per-group plots.

The table has one row per model and one column per (benchmark, metric), in percent. The plots are
the paper's Figures 4 and 7: accuracy per subject and per skill (and per level where the data has
levels), one bar series per model, so base, SFT and STAT-Sel sit side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

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
    """Horizontal grouped bars: one row per group, one bar per model; returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(tables)
    groups = sorted({g for per_group in tables.values() for g in per_group})
    height = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.22 * len(groups) * max(1, len(models)) ** 0.5))
    for i, model in enumerate(models):
        values = [100 * tables[model].get(g, {}).get("accuracy", 0.0) for g in groups]
        positions = [row + (i - (len(models) - 1) / 2) * height for row in range(len(groups))]
        ax.barh(positions, values, height=height, label=model)
    counts = _question_counts(tables, groups)
    ax.set_yticks(range(len(groups)), [f"{g} ({counts[g]})" for g in groups], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy (%)")
    ax.set_xlim(0, 100)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _question_counts(tables: GroupTables, groups: Sequence[str]) -> dict[str, int]:
    """Questions per group (the same for every model, since all answer the same questions)."""
    return {g: max(int(t.get(g, {}).get("questions", 0)) for t in tables.values()) for g in groups}
