"""The paper's Figure 2: the skill distribution of built data against the Missing-Skill-Profile.

One horizontal bar group per skill (the profile's ``top`` skills, largest first): the profile's share
and each dataset's share. STAT-Sel's bars should track the profile's; MATH-Train's follow the
training set instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from stat_pl.plots import plot_bars


def plot_skill_distribution(
    path: str | Path, profile_shares: Mapping[str, float], series: Mapping[str, Mapping[str, float]], top: int = 25
) -> Path:
    """Write a PNG of the ``top`` profile skills' shares in the profile and in each of ``series``."""
    skills = [s for s, _ in sorted(profile_shares.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]
    return plot_bars(
        {"profile": profile_shares, **series},
        path,
        f"Skill distribution: Missing-Skill-Profile vs built data (top {len(skills)} profile skills)",
        "share of data (%)",
        rows=skills,
        scale=100,
        row_labels={s: s.replace("_", " ") for s in skills},
    )
