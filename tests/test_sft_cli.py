"""`python -m stat_pl fit` on a tiny model: training, checkpoints with only the adapter, exact resume, config errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path: Path, model_dir: Path, **trainer) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 8,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path / "run"),
            "limit_val_batches": 0,
            **trainer,
        },
        "model": {
            "class_path": "stat_pl.modules.sft.SFTModule",
            "init_args": {
                "student": {
                    "model": str(model_dir),
                    "quantization": "none",
                    "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                },
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}},
            },
        },
        "data": {
            "class_path": "stat_pl.data.sft_datamodule.SFTDataModule",
            "init_args": {
                "train": [
                    {"class_path": "stat_pl.data.skillworld.SkillWorldSource", "init_args": {"n": 50, "levels": [1]}}
                ],
                "batch_size": 2,
                "samples_per_epoch": 10,
                "max_length": 128,
            },
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "stat_pl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def recorded(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def recorder(path: Path) -> str:
    return json.dumps([{"class_path": "batch_recorder.BatchRecorder", "init_args": {"path": str(path)}}])


def test_help_lists_every_subcommand():
    """Each subcommand the CLI runs (Lightning's and the offline stages) has a line of its own with its help."""
    from stat_pl.cli import LIGHTNING_SUBCOMMANDS, OFFLINE_STAGES, TOOLS

    out = run_cli("--help")
    assert out.returncode == 0, out.stderr[-3000:]
    listed = out.stdout.split("subcommands:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    described = {name: help_text.strip() for name, _, help_text in (line.strip().partition(" ") for line in listed)}
    assert described.keys() == LIGHTNING_SUBCOMMANDS.keys() | OFFLINE_STAGES.keys() | TOOLS.keys()
    assert {"fit", "validate", "test", "label-skills", "profile", "build", "evaluate", "estimate"} <= described.keys()
    assert all(described.values()), described


def test_typo_in_a_config_key_is_a_clear_error(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir)
    text = config.read_text().replace("samples_per_epoch", "samples_per_epoc")
    config.write_text(text)
    out = run_cli("fit", "--config", str(config))
    assert out.returncode != 0 and "samples_per_epoc" in out.stderr


@pytest.mark.parametrize("sampling", ["weighted", pytest.param("permutation", marks=pytest.mark.slow)])
def test_fit_resumes_mid_epoch_with_the_same_batches(tmp_path, tiny_model_dir, sampling):
    """Uninterrupted 8 steps vs 3 steps + resume in a new process: batches after step 3 are identical."""
    config = tiny_config(tmp_path, tiny_model_dir)
    if sampling == "permutation":  # a fixed set of 10 rows, each once per 5-batch epoch
        settings = yaml.safe_load(config.read_text())
        data = settings["data"]["init_args"]
        del data["samples_per_epoch"]
        data["train"][0]["init_args"]["n"] = 10
        config.write_text(yaml.safe_dump(settings))
    full, resumed = tmp_path / "full.jsonl", tmp_path / "resumed.jsonl"
    out = run_cli("fit", "--config", str(config), f"--trainer.callbacks={recorder(full)}")
    assert out.returncode == 0, out.stderr[-3000:]
    out = run_cli(
        "fit", "--config", str(config), "--trainer.max_steps=3", f"--trainer.default_root_dir={tmp_path / 'part'}"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (ckpt,) = (tmp_path / "part").rglob("*.ckpt")
    out = run_cli(
        "fit",
        "--config",
        str(config),
        f"--ckpt_path={ckpt}",
        f"--trainer.callbacks={recorder(resumed)}",
        f"--trainer.default_root_dir={tmp_path / 'part'}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    after = [row for row in recorded(full) if row["step"] >= 3]
    assert len(after) == 5 and recorded(resumed) == after  # crosses the epoch boundary at step 5 too
    if sampling == "permutation":
        seen = [sorted(i for row in recorded(full) if row["epoch"] == epoch for i in row["index"]) for epoch in (0, 1)]
        assert seen[0] == list(range(10)) and len(set(seen[1])) == 6  # 8 steps: epoch 1 stops after 3 batches

    state = torch.load(ckpt, weights_only=False)
    assert all("lora_" in key for key in state["state_dict"])  # adapter only, never the frozen base
    assert (state["SFTDataModule"]["epoch"], state["SFTDataModule"]["batches_done"]) == (0, 3)


def test_fit_writes_a_peft_adapter_and_the_config(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = tiny_config(tmp_path, tiny_model_dir, logger=True, max_steps=2)
    out = run_cli("fit", "--config", str(config))
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert list(run.rglob("config.yaml")), "the run records the config it used"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, run / "adapter")
    assert any(float(p.abs().sum()) > 0 for n, p in model.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("model.init_args.optimizer=torch.optim.NoSuchOptimizer", "torch.optim.NoSuchOptimizer"),
        (
            "data.init_args.train=[{class_path: stat_pl.records.RecordSource, init_args: {path: missing.jsonl}}]",
            "missing.jsonl does not exist",
        ),
    ],
)
def test_bad_values_name_the_problem(tmp_path, tiny_model_dir, bad, message):
    config = tiny_config(tmp_path, tiny_model_dir)
    key, value = bad.split("=", 1)
    out = run_cli("fit", "--config", str(config), f"--{key.replace('.init_args', '')}={value}")
    assert out.returncode != 0 and message in out.stderr
