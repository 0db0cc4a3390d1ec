"""SFT resumes exactly: killed with SIGKILL mid-epoch and resumed from its last checkpoint, it ends with the adapter
the uninterrupted run ends with, bit for bit, LoRA dropout and gradient accumulation included."""

import yaml
from safetensors.torch import load_file
from test_sft_cli import run_cli, tiny_config


def test_a_killed_run_resumed_from_its_checkpoint_ends_bit_identical(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, max_steps=6, accumulate_grad_batches=2)
    settings = yaml.safe_load(config.read_text())
    settings["model"]["init_args"]["student"]["lora"]["dropout"] = 0.1  # masks drawn every micro-batch
    settings["model"]["init_args"]["seed"] = 2**32 - 1  # the largest seed `seed_everything: true` draws
    settings["data"]["init_args"]["samples_per_epoch"] = 16  # 4 steps an epoch: the kill lands mid-epoch 0
    config.write_text(yaml.safe_dump(settings))
    checkpoints = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"every_n_train_steps": 1, "save_top_k": -1, "filename": "{step}"},
    }
    kill = {"class_path": "resume_helpers.KillAtStep", "init_args": {"step": 3}}
    straight, part = tmp_path / "straight", tmp_path / "part"

    out = run_cli("fit", "--config", str(config), f"--trainer.default_root_dir={straight}")
    assert out.returncode == 0, out.stderr[-3000:]
    callbacks = yaml.safe_dump([checkpoints, kill], default_flow_style=True).strip()
    out = run_cli(
        "fit", "--config", str(config), f"--trainer.default_root_dir={part}", f"--trainer.callbacks={callbacks}"
    )
    assert out.returncode == -9  # killed, not finished
    assert not (part / "adapter").exists()
    (ckpt,) = part.rglob("step=3.ckpt")
    out = run_cli("fit", "--config", str(config), f"--trainer.default_root_dir={part}", f"--ckpt_path={ckpt}")
    assert out.returncode == 0, out.stderr[-3000:]

    ours, theirs = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (part, straight))
    assert any(float(v.abs().sum()) > 0 for k, v in theirs.items() if "lora_B" in k)  # it trained
    assert ours.keys() == theirs.keys()
    assert all(ours[k].equal(theirs[k]) for k in theirs), [k for k in theirs if not ours[k].equal(theirs[k])][:3]
