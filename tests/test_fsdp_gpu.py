"""FSDP-QLoRA on 2 GPUs with the shipped :class:`~stat_pl.fsdp.QLoRAFSDPStrategy` (NCCL, NF4 stored in bf16,
bf16-mixed, ``sync_module_states``): SFT and GRPO train the adapter the same run under DDP trains, and SFT resumes from
its adapter-only checkpoint.

Written against the documented APIs (torch FSDP, Lightning's ``FSDPStrategy``, bitsandbytes' ``bnb_4bit_quant_storage``)
without 2 GPUs to run them on: NOT YET RUN. The CPU versions (``tests/test_fsdp.py``: float32, gloo, the test-only
CPU subclass) pass. bf16 reductions differ between NCCL's reduce-scatter and all-reduce, so adapters are compared
with a bf16 tolerance, not bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_grpo_cli import grpo_config
from test_sft_cli import run_cli, tiny_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP across ranks needs 2 CUDA devices"),
]
FSDP = {"class_path": "stat_pl.fsdp.QLoRAFSDPStrategy"}


def adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "run" / "adapter" / "adapter_model.safetensors")


def assert_close_adapters(fsdp: dict[str, torch.Tensor], ddp: dict[str, torch.Tensor]) -> None:
    assert fsdp.keys() == ddp.keys() and any(float(v.abs().max()) > 0 for k, v in ddp.items() if "lora_B" in k)
    for name, weight in ddp.items():
        torch.testing.assert_close(fsdp[name], weight, rtol=2e-2, atol=2e-3, msg=name)


def gpu_sft(tmp_path: Path, model_dir: Path, name: str, strategy) -> Path:
    run = tmp_path / name
    run.mkdir(exist_ok=True)
    path = tiny_config(
        run, model_dir, accelerator="gpu", devices=2, strategy=strategy, precision="bf16-mixed", max_steps=4
    )
    config = yaml.safe_load(path.read_text())
    config["model"]["init_args"]["student"].update(
        {"quantization": "nf4", "compute_dtype": "bfloat16", "gradient_checkpointing": True}
    )
    config["trainer"]["callbacks"] = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"every_n_train_steps": 2, "save_top_k": -1},
        }
    ]
    path.write_text(yaml.safe_dump(config))
    return path


def test_fsdp_qlora_sft_on_two_gpus_trains_the_ddp_adapter_and_resumes(tmp_path, tiny_model_dir):
    """NF4 + activation checkpointing through the strategy: the DDP adapter, an adapter-only checkpoint, a resume."""
    for name, strategy in (("fsdp", FSDP), ("ddp", "ddp")):
        out = run_cli("fit", "--config", str(gpu_sft(tmp_path, tiny_model_dir, name, strategy)))
        assert out.returncode == 0, out.stderr[-3000:]
    assert_close_adapters(adapter(tmp_path / "fsdp"), adapter(tmp_path / "ddp"))
    (checkpoint,) = (tmp_path / "fsdp" / "run" / "checkpoints").glob("*step=2.ckpt")
    assert all(".lora_" in k for k in torch.load(checkpoint, weights_only=False)["state_dict"])
    resumed = tmp_path / "resumed" / "run"
    config = tmp_path / "fsdp" / "config.yaml"
    out = run_cli("fit", "--config", str(config), f"--trainer.default_root_dir={resumed}", f"--ckpt_path={checkpoint}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert_close_adapters(adapter(tmp_path / "resumed"), adapter(tmp_path / "fsdp"))


def test_fsdp_qlora_grpo_on_two_gpus_trains_the_ddp_adapter(tmp_path, tiny_model_dir):
    """NF4 GRPO with the HF engine in lockstep, FSDP's reduction and clipping: the DDP run's adapter."""
    for name, strategy in (("fsdp", FSDP), ("ddp", "ddp")):
        run = tmp_path / name
        run.mkdir()
        path = grpo_config(run, tiny_model_dir, accelerator="gpu", devices=2, strategy=strategy, max_steps=2)
        config = yaml.safe_load(path.read_text())
        settings = config["model"]["init_args"]
        settings["student"].update(
            {"quantization": "nf4", "compute_dtype": "bfloat16", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
        )
        settings.update({"engine": "hf", "mini_batch_groups": 2})
        config["trainer"]["precision"] = "bf16-mixed"
        path.write_text(yaml.safe_dump(config))
        out = run_cli("fit", "--config", str(path))
        assert out.returncode == 0, out.stderr[-3000:]
    assert_close_adapters(adapter(tmp_path / "fsdp"), adapter(tmp_path / "ddp"))
