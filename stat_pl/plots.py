"""PNG plots shared by the callback and the stages: a profile's histogram and per-skill accuracy."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_skill_bars(series: Mapping[str, Mapping[str, float]], path: str | Path, title: str, ylabel: str,
                    top_k: int | None = None) -> Path:
    """Grouped horizontal bars, one group per skill and one bar per series (e.g. per round or model).

    Skills are ordered by the first series' values, largest first, and cut to ``top_k``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = next(iter(series.values()), {})
    skills = sorted({s for values in series.values() for s in values}, key=lambda s: (-first.get(s, 0.0), s))
    skills = skills[:top_k] if top_k else skills
    height = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.35 * len(skills) * max(1, len(series)) ** 0.5))
    for i, (name, values) in enumerate(series.items()):
        positions = [k + i * height for k in range(len(skills))]
        ax.barh(positions, [values.get(s, 0.0) for s in skills], height=height, label=name)
    ax.set_yticks([k + height * (len(series) - 1) / 2 for k in range(len(skills))], skills, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
