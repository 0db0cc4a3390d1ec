"""`python -m stat_pl fit` with GRPO on a tiny Llama: it trains and resumes exactly; shipped GRPO configs parse."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_sft_cli import recorded, run_cli

ROOT = Path(__file__).resolve().parents[1]
GRPO_CONFIGS = [
    "configs/grpo_smollm2_math.yaml",
    "configs/paper/grpo_qlora_llama32_3b.yaml",
    "configs/grpo_skillworld.yaml",
]


def grpo_config(tmp_path: Path, model_dir: Path, **trainer) -> Path:
    """The shipped SmolLM2 config made tiny: tiny Llama, no quantisation, skill-world prompts, a learnable reward.

    float32 throughout (not the config's ``auto``), so the tests' exact comparisons hold on any CPU."""
    config = yaml.safe_load((ROOT / "configs/grpo_smollm2_math.yaml").read_text())
    config["trainer"].update(
        {
            "max_steps": 4,
            "precision": "32-true",
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path / "run"),
            **trainer,
        }
    )
    config["model"]["init_args"].update(
        {
            "student": {
                "model": str(model_dir),
                "quantization": "none",
                "compute_dtype": "float32",
                "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
            },
            "max_new_tokens": 12,
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-2}},
            "rewards": [{"class_path": "grpo_helpers.CharReward"}],
        }
    )
    config["data"]["init_args"].update(
        {
            "train": [
                {"class_path": "stat_pl.data.skillworld.SkillWorldSource", "init_args": {"n": 40, "levels": [1]}}
            ],
            "catalog": None,
        }
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def callbacks(record: Path, every_n_steps: int | None = None) -> str:
    items = [{"class_path": "grpo_helpers.RolloutRecorder", "init_args": {"path": str(record)}}]
    if every_n_steps:
        items.append(
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"every_n_train_steps": every_n_steps, "save_top_k": -1},
            }
        )
    return json.dumps(items)


def test_fit_trains_the_adapter_and_resumes_exactly(tmp_path, tiny_model_dir):
    """4 straight steps vs 2 steps + a new process resuming for 2: same completions, same adapter tensors."""
    config = grpo_config(tmp_path, tiny_model_dir)
    full, resumed = tmp_path / "full.jsonl", tmp_path / "resumed.jsonl"
    out = run_cli("fit", "--config", str(config), f"--trainer.callbacks={callbacks(full)}")
    assert out.returncode == 0, out.stderr[-3000:]
    part = tmp_path / "part"
    out = run_cli(
        "fit",
        "--config",
        str(config),
        "--trainer.max_steps=2",
        f"--trainer.default_root_dir={part}",
        f"--trainer.callbacks={callbacks(tmp_path / 'first.jsonl', every_n_steps=2)}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (ckpt,) = part.rglob("*.ckpt")
    out = run_cli(
        "fit",
        "--config",
        str(config),
        f"--ckpt_path={ckpt}",
        f"--trainer.default_root_dir={part}",
        f"--trainer.callbacks={callbacks(resumed)}",
    )
    assert out.returncode == 0, out.stderr[-3000:]

    straight = recorded(full)
    assert [row["step"] for row in straight] == [1, 2, 3, 4]  # one optimizer step per rollout batch
    assert 0 < sum(r for row in straight for group in row["rewards"] for r in group) < 64
    assert recorded(tmp_path / "first.jsonl") == straight[:2]
    assert recorded(resumed) == straight[2:]
    adapters = [load_file(d / "adapter" / "adapter_model.safetensors") for d in (tmp_path / "run", part)]
    assert any(float(v.abs().sum()) > 0 for k, v in adapters[0].items() if "lora_B" in k)  # it trained
    for key, value in adapters[0].items():
        torch.testing.assert_close(adapters[1][key], value, rtol=0, atol=0, msg=key)
    assert all("lora_" in key for key in torch.load(ckpt, weights_only=False)["state_dict"])


@pytest.mark.parametrize("config", GRPO_CONFIGS)
def test_shipped_grpo_configs_parse(config):
    out = run_cli("fit", "--config", config, "--print_config")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "stat_pl.modules.grpo.GRPOModule" in out.stdout
