"""DDP for real: 2 CPU processes (gloo). Ranks draw disjoint shares; every rank answers its share of a profiling
round, rank 0 judges them all, every rank gets its weights; the round's profile is the 1-rank run's."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_sft_cli import recorded, recorder, run_cli, tiny_config


def reprofiled_config(tmp_path: Path, model_dir: Path, devices: int, **reprofiler) -> Path:
    """The tiny SFT config with a batch recorder and a SkillReprofiler on skill-world questions (oracle profiler)."""
    config_path = tiny_config(tmp_path, model_dir, devices=devices, strategy="ddp", max_steps=-1, max_epochs=2)
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
                **reprofiler,
            },
        },
    ]
    config_path.write_text(yaml.safe_dump(config))
    return config_path


def test_two_process_ddp_shards_the_sampler_and_broadcasts_the_profile(tmp_path, tiny_model_dir):
    config_path = reprofiled_config(tmp_path, tiny_model_dir, devices=2)
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


def test_a_round_sharded_over_two_ranks_profiles_what_one_rank_does(tmp_path, tiny_model_dir):
    """Same weights, questions and seed: the fit-start round of 2 ranks (each answering 3 of 7 questions, one 4)
    writes the profile and per-skill accuracy of the 1-rank round; each rank answered only its share."""
    rounds = {}
    for devices in (1, 2):
        run = tmp_path / f"ranks{devices}"
        run.mkdir()
        config_path = reprofiled_config(run, tiny_model_dir, devices, num_questions=7, max_new_tokens=12)
        config = yaml.safe_load(config_path.read_text())
        config["trainer"]["max_epochs"] = 1
        counts = run / "answered"
        config["trainer"]["callbacks"].append(
            {"class_path": "reprofile_helpers.AnswerCounter", "init_args": {"path": str(counts)}}
        )
        config_path.write_text(yaml.safe_dump(config))
        out = run_cli("fit", "--config", str(config_path))
        assert out.returncode == 0, out.stderr[-3000:]
        rounds[devices] = json.loads((run / "run" / "profile-epoch0.json").read_text())
        answered = [(run / f"answered.rank{r}").read_text().split() for r in range(devices)]
        assert answered == ([["7", "7"]] if devices == 1 else [["4", "4"], ["3", "3"]])  # fit start + epoch 1
    one, two = rounds[1], rounds[2]
    assert one["questions"] and one["questions"] == two["questions"]
    assert one["histogram"] == two["histogram"]
    for key in ("questions", "difficult", "statuses"):
        assert one["meta"][key] == two["meta"][key], key


def test_a_rank_that_waits_past_the_round_timeout_stops_the_run_naming_the_setting(tmp_path, tiny_model_dir):
    """Rank 0 judges for 30 s (a slow teacher); rank 1 waits 3 s in the round's broadcast, then the run stops with
    an error naming SkillReprofiler.round_timeout_s, long before the 30 minutes of the GPU collectives."""
    config_path = reprofiled_config(
        tmp_path,
        tiny_model_dir,
        devices=2,
        round_timeout_s=3,
        profiler={"class_path": "reprofile_helpers.SlowProfiler", "init_args": {"seconds": 30}},
    )
    out = run_cli("fit", "--config", str(config_path))
    assert out.returncode != 0
    assert "SkillReprofiler.round_timeout_s=3 s" in out.stderr, out.stderr[-3000:]


@pytest.mark.slow  # three 2-rank runs, ~70 s on 2 CPU cores (CI's slow step)
def test_two_ranks_resume_mid_epoch_with_each_ranks_batches_and_the_same_adapter(tmp_path, tiny_model_dir):
    """2 gloo ranks: 4 straight steps vs a run stopped after step 2 and a new run resuming from its step-2
    checkpoint; each rank draws the batches it drew uninterrupted, and the adapter ends bit for bit the same."""
    config_path = tiny_config(tmp_path, tiny_model_dir, devices=2, strategy="ddp", max_steps=4)
    full, resumed, part = tmp_path / "full.jsonl", tmp_path / "resumed.jsonl", tmp_path / "part"
    out = run_cli("fit", "--config", str(config_path), f"--trainer.callbacks={recorder(full)}")
    assert out.returncode == 0, out.stderr[-3000:]
    stop = [
        {"class_path": "resume_helpers.StopAtStep", "init_args": {"step": 2}},
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"every_n_train_steps": 1, "save_top_k": -1, "filename": "{step}"},
        },
    ]
    out = run_cli(
        "fit",
        "--config",
        str(config_path),
        f"--trainer.callbacks={json.dumps(stop)}",
        f"--trainer.default_root_dir={part}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (ckpt,) = part.rglob("step=2.ckpt")
    out = run_cli(
        "fit",
        "--config",
        str(config_path),
        f"--ckpt_path={ckpt}",
        f"--trainer.callbacks={recorder(resumed)}",
        f"--trainer.default_root_dir={part}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for rank in (0, 1):
        straight = recorded(full.with_suffix(f".rank{rank}.jsonl"))
        assert recorded(resumed.with_suffix(f".rank{rank}.jsonl")) == [row for row in straight if row["step"] >= 2]
    adapters = [load_file(d / "adapter" / "adapter_model.safetensors") for d in (tmp_path / "run", part)]
    for key, value in adapters[0].items():
        torch.testing.assert_close(adapters[1][key], value, rtol=0, atol=0, msg=key)
