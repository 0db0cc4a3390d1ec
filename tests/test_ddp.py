"""DDP for real: 2 CPU processes (gloo). Ranks draw disjoint shares; rank 0 profiles; every rank gets its weights."""

import json

import yaml
from test_sft_cli import run_cli, tiny_config


def test_two_process_ddp_shards_the_sampler_and_broadcasts_the_profile(tmp_path, tiny_model_dir):
    config_path = tiny_config(tmp_path, tiny_model_dir, devices=2, strategy="ddp", max_steps=-1, max_epochs=2)
    config = yaml.safe_load(config_path.read_text())
    config["data"]["init_args"]["samples_per_epoch"] = 8
    config["trainer"]["callbacks"] = [
        {"class_path": "batch_recorder.BatchRecorder", "init_args": {"path": str(tmp_path / "batches.jsonl")}},
        {
            "class_path": "stat_pl.callbacks.skill_reprofiler.SkillReprofiler",
            "init_args": {
                "questions": {
                    "class_path": "stat_pl.data.skillworld.SkillWorldSource",
                    "init_args": {"split": "validation", "n": 20, "levels": [1]},
                },
                "detector": {"class_path": "stat_pl.profiling.detectors.GroundTruthDetector"},
                "profiler": {"class_path": "stat_pl.profiling.oracle.SkillWorldOracle"},
                "num_questions": 4,
                "max_new_tokens": 4,
            },
        },
    ]
    config_path.write_text(yaml.safe_dump(config))
    out = run_cli("fit", "--config", str(config_path))
    assert out.returncode == 0, out.stderr[-3000:]

    rows = {r: [json.loads(x) for x in (tmp_path / f"batches.rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    assert len(rows[0]) == len(rows[1]) == 4  # 8 samples per epoch / 2 ranks / batch 2, 2 epochs
    for epoch in (0, 1):
        shares = [sorted(i for row in rows[r] if row["epoch"] == epoch for i in row["index"]) for r in (0, 1)]
        assert len(shares[0]) == len(shares[1]) == 4 and shares[0] != shares[1]
        digests = {row["weights"] for r in (0, 1) for row in rows[r] if row["epoch"] == epoch}
        assert len(digests) == 1  # identical weights on both ranks
    profiles = sorted(p.name for p in (tmp_path / "run").glob("profile-epoch*.json"))
    assert profiles == ["profile-epoch0.json", "profile-epoch1.json", "profile-epoch2.json"]  # written once, by rank 0
