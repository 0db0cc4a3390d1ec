"""The one bar chart of stat-pl: grouped horizontal bars, one row per category, one bar per series.

Its users only prepare data: a profile's histogram and per-skill accuracy per round
(``SkillReprofiler``, ``profile``), the skill distribution of built data against the profile (paper
Figure 2, :func:`stat_pl.building.plot.plot_skill_distribution`) and accuracy per subject / level /
skill per model (Figures 4 and 7, :func:`stat_pl.evaluation.report.plot_groups`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def plot_bars(
    series: Mapping[str, Mapping[str, float]],
    path: str | Path,
    title: str,
    value_label: str,
    rows: Sequence[str] | None = None,
    top_k: int | None = None,
    scale: float = 1.0,
    row_labels: Mapping[str, str] | None = None,
    value_range: tuple[float, float] | None = None,
) -> Path:
    """Write a PNG of ``series`` (name -> row -> value) and return its path.

    Args:
        series: one bar per series in each row (a round, a model, a dataset), in this order.
        path: the PNG; its folder is created.
        title: the chart's title; ``value_label`` labels the value (x) axis.
        rows: the rows, top to bottom; default every row of any series, the first series' largest first.
        top_k: keep only the first ``top_k`` rows.
        scale: multiplies every value (100 for shares drawn as percent).
        row_labels: text shown for a row instead of its name.
        value_range: fixed limits of the value axis, e.g. ``(0, 100)``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if rows is None:
        first = next(iter(series.values()), {})
        rows = sorted({r for values in series.values() for r in values}, key=lambda r: (-first.get(r, 0.0), r))
    rows = list(rows)[:top_k] if top_k else list(rows)
    height = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.35 * len(rows) * max(1, len(series)) ** 0.5))
    for i, (name, values) in enumerate(series.items()):
        positions = [k + i * height for k in range(len(rows))]
        ax.barh(positions, [scale * values.get(r, 0.0) for r in rows], height=height, label=name)
    labels = [(row_labels or {}).get(r, r) for r in rows]
    ax.set_yticks([k + height * (len(series) - 1) / 2 for k in range(len(rows))], labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(value_label)
    if value_range is not None:
        ax.set_xlim(*value_range)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
