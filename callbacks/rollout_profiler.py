"""RolloutProfiler: GRPO's own rollouts are student responses, so they profile the student for free.

The SkillReprofiler generates answers to a validation set between epochs. Under GRPO the student
already answers every training prompt G times per step, so this callback keeps what those rollouts
tell (each question's group accuracy and responses), and at the end of an epoch treats questions
whose group accuracy is at most ``accuracy_threshold`` as the difficult ones (Stage 1), asks a
``Profiler`` for their missing skills (Stage 2; the Skill-Map proxy by default, a teacher or the
skill-world oracle if given), smooths the new Missing-Skill-Profile into the last one and hands it
to the data module's ``set_profile``: the next epoch's prompts are drawn by it. No extra generation.

Under DDP every rank's buffer is gathered and rank 0 profiles, over a gloo group on the host whose timeout is
``round_timeout_s`` (a teacher profiler may take longer than the GPU collectives' 30 minutes).

Difficulty is judged on the training prompts themselves (the paper profiles a held-out validation
set); they are what GRPO trains on, and a question the student fails is one it can still learn from.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from stat_pl.distributed import ObjectGroup
from stat_pl.missing_skill_profile import MissingSkillProfile
from stat_pl.plots import plot_bars
from stat_pl.profiling.base import Attempt, Profiler
from stat_pl.profiling.proxy import SkillMapProxy


class RolloutProfiler(Callback):
    """Profile from the epoch's rollouts, then sample the next epoch by the profile.

    Args:
        profiler: Stage 2 on the difficult questions (default: :class:`SkillMapProxy`).
        accuracy_threshold: a question is difficult when its mean group accuracy is at most this.
        reward_part: the reward part that says "correct" (a :mod:`stat_pl.rewards` name); when the
            rollouts lack it, a total reward above 0 counts as correct.
        every_n_epochs: profile after every n-th epoch.
        ema_alpha: weight of the new round in the moving average of the histogram (1: replace).
        round_timeout_s: under DDP, how long the other ranks wait for rank 0's profile; past it the run stops with an
            error naming this setting.
    """

    def __init__(
        self,
        profiler: Profiler | None = None,
        accuracy_threshold: float = 0.25,
        reward_part: str = "correct",
        every_n_epochs: int = 1,
        ema_alpha: float = 0.5,
        round_timeout_s: float = 4 * 3600.0,
    ) -> None:
        self.profiler = profiler or SkillMapProxy()
        self.accuracy_threshold = accuracy_threshold
        self.reward_part = reward_part
        self.every_n_epochs = every_n_epochs
        self.ema_alpha = ema_alpha
        self.round_timeout_s = round_timeout_s
        self._ranks: ObjectGroup | None = None
        self.profile: MissingSkillProfile | None = None
        self.history: list[dict[str, Any]] = []
        #: record position -> {"correct": [per completion], "responses": [texts of the latest group]}
        self.buffer: dict[int, dict[str, list]] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._rank_group()  # every rank, at the same point: creating the group is collective

    def _rank_group(self) -> ObjectGroup:
        if self._ranks is None:
            self._ranks = ObjectGroup(self.round_timeout_s, "RolloutProfiler.round_timeout_s")
        return self._ranks

    # ---- collecting ------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        rollouts = outputs["rollouts"]
        correct = rollouts.parts.get(self.reward_part)
        correct = (correct if correct is not None else rollouts.rewards.gt(0).float()).tolist()  # [B][G]
        for b, record in enumerate(rollouts.record.tolist()):
            entry = self.buffer.setdefault(record, {"correct": [], "responses": []})
            entry["correct"].extend(correct[b])
            entry["responses"] = [c.text for c in rollouts.completions[b]]

    # ---- one round -------------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        finished = trainer.fit_loop.epoch_loop.batch_progress.current.processed >= trainer.num_training_batches
        if epoch % self.every_n_epochs or not finished:  # a run stopped by max_steps mid-epoch keeps its buffer
            return
        ranks = self._rank_group()
        buffer = _merged(ranks.gather(self.buffer))
        result = self._profile(trainer, buffer, epoch) if trainer.is_global_zero else None
        result = ranks.broadcast(result)
        self.profile = MissingSkillProfile(**result["profile"])
        self.history.append(result["round"])
        trainer.datamodule.set_profile(self.profile)
        self.buffer = {}

    def _profile(self, trainer: L.Trainer, buffer: dict[int, dict[str, list]], epoch: int) -> dict:
        records = trainer.datamodule.records
        accuracy = {i: sum(e["correct"]) / len(e["correct"]) for i, e in buffer.items()}
        difficult = [
            Attempt(records[i], tuple(buffer[i]["responses"]))
            for i in sorted(buffer)
            if accuracy[i] <= self.accuracy_threshold
        ]
        diagnoses = self.profiler.diagnose(difficult)
        asked = [records[i] for i in sorted(buffer)]
        new = MissingSkillProfile.from_round(asked, {d.question_id: d.skills for d in diagnoses}, epoch=epoch)
        profile = new if self.profile is None else self.profile.ema(new, self.ema_alpha)
        profile.meta.update(epoch=epoch, source="rollouts", questions=len(buffer), difficult=len(difficult))
        round_ = {
            "epoch": epoch,
            "questions": len(buffer),
            "difficult": len(difficult),
            "skill_reward": _skill_accuracy(records, accuracy),
            "histogram": profile.histogram,
        }
        self._write(trainer, profile, round_)
        return {"profile": profile.to_dict(), "round": round_}

    def _write(self, trainer: L.Trainer, profile: MissingSkillProfile, round_: dict) -> None:
        """``profile-epoch{N}.json`` and ``.png`` in the run directory, and the history of rounds."""
        run_dir = Path(trainer.default_root_dir)
        epoch = round_["epoch"]
        profile.to_json(run_dir / f"profile-epoch{epoch}.json")
        plot_bars(
            {f"epoch {epoch}": profile.histogram},
            run_dir / f"profile-epoch{epoch}.png",
            f"Missing-Skill-Profile from the rollouts of epoch {epoch}",
            "count (EMA over rounds)",
        )
        (run_dir / "rollout-profile-history.json").write_text(json.dumps([*self.history, round_], indent=1))
        metrics = {
            "rollout_profile/difficult": float(round_["difficult"]),
            **{f"rollout_profile/accuracy/{s}": a for s, a in round_["skill_reward"].items()},
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    # ---- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "profile": self.profile.to_dict() if self.profile else None,
            "history": self.history,
            "buffer": {str(k): v for k, v in self.buffer.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))
        self.buffer = {int(k): v for k, v in state.get("buffer", {}).items()}
        if state.get("profile"):
            self.profile = MissingSkillProfile(**state["profile"])


def _merged(parts: list[dict[int, dict[str, list]]]) -> dict[int, dict[str, list]]:
    """Every rank's buffer merged (ranks draw different prompts; the same prompt's outcomes are pooled)."""
    merged: dict[int, dict[str, list]] = {}
    for part in parts:
        for record, entry in part.items():
            into = merged.setdefault(record, {"correct": [], "responses": []})
            into["correct"].extend(entry["correct"])
            into["responses"] = entry["responses"]
    return merged


def _skill_accuracy(records, accuracy: dict[int, float]) -> dict[str, float]:
    """Mean group accuracy of the epoch's questions per labelled skill."""
    per_skill: dict[str, list[float]] = defaultdict(list)
    for i, acc in accuracy.items():
        for skill in records[i].skills:
            per_skill[skill].append(acc)
    return {s: sum(v) / len(v) for s, v in sorted(per_skill.items())}
