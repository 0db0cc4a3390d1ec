"""The Skill-Map proxy: a profiler that needs no teacher.

Without a teacher, the best guess at what a student lacks on a difficult question is what the
question needs: its own skill labels from the Skill-Map (DESIGN.md, Stages 0 and 2). It is the cheap
baseline a teacher's diagnosis must beat, and the profiler to use when no teacher is reachable.
"""

from __future__ import annotations

from collections.abc import Sequence

from stat_pl.profiling.base import Attempt, Diagnosis


class SkillMapProxy:
    """A :class:`~stat_pl.profiling.base.Profiler`: missing skills := the question's labelled skills.

    A question without labels gets status ``"unlabelled"`` and no skills, so it is counted but adds
    nothing to the profile's histogram.
    """

    def diagnose(self, attempts: Sequence[Attempt]) -> list[Diagnosis]:
        return [
            Diagnosis(a.record.id, a.record.skills, status="labelled" if a.record.skills else "unlabelled")
            for a in attempts
        ]
