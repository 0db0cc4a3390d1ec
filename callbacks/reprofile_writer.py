"""What the ``SkillReprofiler`` leaves in the run directory and the loggers after each round.

* ``profile-epoch{N}.json`` and ``.png``: that round's Missing-Skill-Profile and its bar chart;
* ``skill-accuracy.png``: per-skill accuracy on the validation subset, one series per round;
* ``reprofile-history.json``: every round's epoch, accuracy, per-skill accuracy (and answer metrics) and histogram;
* ``reprofile/*`` metrics in every logger (with ``answer_metrics``, ``reprofile/answer_exact/<skill>`` and
  ``reprofile/answer_nll/<skill>`` too), and a histogram table in loggers that have ``log_table``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger

from stat_pl.missing_skill_profile import MissingSkillProfile
from stat_pl.plots import plot_bars


class ReprofileWriter:
    """Writes a round's files and metrics; ``ema`` only changes the profile plot's axis label."""

    def __init__(self, ema: bool = False) -> None:
        self.ema = ema

    def write(
        self,
        run_dir: Path,
        profile: MissingSkillProfile,
        rounds: Sequence[dict[str, Any]],
        loggers: Sequence[Logger],
        step: int,
    ) -> None:
        """The files of the last of ``rounds`` (each a history entry), the history so far, and the metrics."""
        round_ = rounds[-1]
        epoch = round_["epoch"]
        profile.to_json(run_dir / f"profile-epoch{epoch}.json")
        when = "before training" if epoch == 0 else f"after epoch {epoch}"
        plot_bars(
            {f"epoch {epoch}": profile.histogram},
            run_dir / f"profile-epoch{epoch}.png",
            f"Missing-Skill-Profile {when}",
            "count (difficult questions, EMA over rounds)" if self.ema else "count (difficult questions)",
        )
        plot_bars(
            {f"epoch {r['epoch']}": r["skill_accuracy"] for r in rounds},
            run_dir / "skill-accuracy.png",
            "Per-skill accuracy on the validation subset",
            "accuracy",
        )
        (run_dir / "reprofile-history.json").write_text(json.dumps(list(rounds), indent=1))
        metrics = {f"reprofile/{k}": float(v) for k, v in round_["metrics"].items()}
        metrics.update({f"reprofile/missing/{s}": c for s, c in profile.histogram.items()})
        for name in ("answer_exact", "answer_nll"):
            metrics.update({f"reprofile/{name}/{s}": v for s, v in round_.get(name, {}).items()})
        for logger in loggers:
            logger.log_metrics(metrics, step=step)
            if hasattr(logger, "log_table"):  # e.g. WandbLogger
                logger.log_table(
                    key="reprofile/histogram",
                    columns=["skill", "count"],
                    data=[[s, c] for s, c in profile.top_k(len(profile.histogram))],
                )
