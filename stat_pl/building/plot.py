"""The paper's Figure 2: the skill distribution of built data against the Missing-Skill-Profile.

One horizontal bar group per skill (the profile's ``top`` skills, largest first): the profile's share
and each dataset's share. STAT-Sel's bars should track the profile's; MATH-Train's follow the
training set instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def plot_skill_distribution(path: str | Path, profile_shares: Mapping[str, float],
                            series: Mapping[str, Mapping[str, float]], top: int = 25) -> Path:
    """Write a PNG of the ``top`` profile skills' shares in the profile and in each of ``series``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    skills = [s for s, _ in sorted(profile_shares.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]
    bars = {"profile": profile_shares, **series}
    height = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.38 * len(skills) * max(1, len(bars) / 2)))
    for i, (label, values) in enumerate(bars.items()):
        positions = [j + i * height for j in range(len(skills))]
        ax.barh(positions, [100 * values.get(s, 0.0) for s in skills], height=height, label=label)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(skills))])
    ax.set_yticklabels([s.replace("_", " ") for s in skills], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("share of data (%)")
    ax.set_title(f"Skill distribution: Missing-Skill-Profile vs built data (top {len(skills)} profile skills)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
