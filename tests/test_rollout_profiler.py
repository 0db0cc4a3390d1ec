"""RolloutProfiler: a profile from the rollouts GRPO already made (no extra generation), in the checkpoint too;
the SkillReprofiler works with GRPOModule as well."""

import json

from grpo_helpers import CharReward
from test_grpo_module import fit

from stat_pl.callbacks.rollout_profiler import RolloutProfiler
from stat_pl.callbacks.skill_reprofiler import SkillReprofiler
from stat_pl.data.skillworld import SkillWorldSource
from stat_pl.engines.hf import HFEngine
from stat_pl.profiling.detectors import GroundTruthDetector
from stat_pl.profiling.oracle import SkillWorldOracle


def test_an_epoch_of_rollouts_becomes_the_next_epochs_profile(tiny_model_dir, tmp_path, monkeypatch):
    generate_calls = []
    original = HFEngine.generate
    monkeypatch.setattr(HFEngine, "generate", lambda self, *a: generate_calls.append(1) or original(self, *a))
    profiler = RolloutProfiler(accuracy_threshold=0.0)
    module, _, collect = fit(
        tiny_model_dir,
        steps=4,
        callbacks=[profiler],
        rewards=[CharReward()],
        trainer_args={"default_root_dir": str(tmp_path)},
    )
    assert len(generate_calls) == 4  # one per rollout batch: the profile cost no generation

    outcomes: dict[int, list[float]] = {}
    for rollouts in collect.rollouts:
        for b, record in enumerate(rollouts.record.tolist()):
            outcomes.setdefault(record, []).extend(rollouts.rewards[b].gt(0).float().tolist())
    records = module.trainer.datamodule.records
    difficult = {records[i].id for i, v in outcomes.items() if sum(v) / len(v) <= 0.0}
    assert difficult and len(difficult) < len(outcomes)
    assert set(profiler.profile.questions) == difficult
    assert module.trainer.datamodule.profile is profiler.profile  # the next epoch samples by it
    written = json.loads((tmp_path / "profile-epoch1.json").read_text())
    assert set(written["questions"]) == difficult and (tmp_path / "profile-epoch1.png").is_file()
    assert profiler.buffer == {} and profiler.history[0]["questions"] == len(outcomes)


def test_the_buffer_of_an_epoch_in_progress_is_in_the_checkpoint(tiny_model_dir):
    profiler = RolloutProfiler()
    fit(tiny_model_dir, steps=2, callbacks=[profiler], rewards=[CharReward()])  # 2 of the epoch's 4 batches
    state = json.loads(json.dumps(profiler.state_dict()))  # survives serialisation
    assert len(state["buffer"]) >= 2 and all(len(e["correct"]) % 4 == 0 for e in state["buffer"].values())
    restored = RolloutProfiler()
    restored.load_state_dict(state)
    assert restored.buffer == profiler.buffer


def test_the_skill_reprofiler_works_with_grpo(tiny_model_dir, tmp_path):
    reprofiler = SkillReprofiler(
        questions=SkillWorldSource(split="validation", n=20, levels=(1,)),
        detector=GroundTruthDetector(),
        profiler=SkillWorldOracle(),
        num_questions=4,
        max_new_tokens=4,
    )
    module, _, _ = fit(
        tiny_model_dir, steps=4, callbacks=[reprofiler], trainer_args={"default_root_dir": str(tmp_path)}
    )
    profiles = sorted(p.name for p in tmp_path.glob("profile-epoch*.json"))
    assert profiles == ["profile-epoch0.json", "profile-epoch1.json"]  # before training and after the epoch
    assert module.trainer.datamodule.profile is reprofiler.profile
