"""FSDP-QLoRA for real on CPU: 2 gloo processes through ``python -m stat_pl fit`` with the shipped strategy's logic.

FSDP on a CPU needs the test-only :class:`cpu_fsdp.CPUQLoRAFSDPStrategy` (torch's FSDP must be told the CPU is its
device; see its docstring). The reference is the same run under DDP, which ``tests/test_ddp.py``,
``tests/test_grpo_ddp.py`` and ``tests/test_sft_resume.py`` prove equal to a single process (GRPO: the single-process
gradient of all groups). float32 throughout, so the adapters are compared to float32 rounding.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file
from test_grpo_cli import grpo_config
from test_sft_cli import run_cli, tiny_config

from stat_pl.engines.decode import decode, sampler
from stat_pl.fsdp import QLoRAFSDPStrategy
from stat_pl.models import load_causal_lm
from stat_pl.padding import left_pad

CPU_FSDP = {"class_path": "cpu_fsdp.CPUQLoRAFSDPStrategy"}
OVERLAYS = [
    ("configs/paper/sft_qlora_llama32_3b.yaml", "configs/paper/sft_qlora_llama32_3b_fsdp.yaml"),
    ("configs/paper/grpo_qlora_llama32_3b.yaml", "configs/paper/grpo_qlora_llama32_3b_fsdp.yaml"),
]


def adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "run" / "adapter" / "adapter_model.safetensors")


def assert_same_adapter(fsdp: dict[str, torch.Tensor], ddp: dict[str, torch.Tensor]) -> None:
    assert fsdp.keys() == ddp.keys() and any(float(v.abs().max()) > 0 for k, v in ddp.items() if "lora_B" in k)
    for name, weight in ddp.items():
        torch.testing.assert_close(fsdp[name], weight, rtol=1e-5, atol=1e-6, msg=name)


def sft_run(tmp_path: Path, model_dir: Path, name: str, strategy, quantization: str) -> Path:
    """The tiny SFT config on 2 ranks for 4 steps, a checkpoint every 2 steps (kept), float32."""
    run = tmp_path / name
    run.mkdir(exist_ok=True)
    path = tiny_config(run, model_dir, devices=2, strategy=strategy, max_steps=4, precision="32-true")
    config = yaml.safe_load(path.read_text())
    student = config["model"]["init_args"]["student"]
    student.update({"quantization": quantization, "compute_dtype": "float32", "cpu_kernels": "off"})
    config["trainer"]["callbacks"] = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"every_n_train_steps": 2, "save_top_k": -1},
        }
    ]
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow  # ~80 s a case on 2 CPU cores (CI's slow step); the default run keeps FSDP GRPO and lockstep
@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_fsdp_sft_trains_the_ddp_adapter_and_resumes_from_its_adapter_only_checkpoint(
    tmp_path, tiny_model_dir, quantization
):
    """4 SFT steps on 2 FSDP ranks save the adapter 4 DDP steps save; a new process resumed from the step-2 checkpoint
    (adapter weights only, FSDP's gathered optimizer state) ends at the same adapter. NF4 too: bitsandbytes' 4-bit
    weights (stored as float32 on CPU) shard like any other weight."""
    for name, strategy in (("fsdp", CPU_FSDP), ("ddp", "ddp")):
        out = run_cli("fit", "--config", str(sft_run(tmp_path, tiny_model_dir, name, strategy, quantization)))
        assert out.returncode == 0, out.stderr[-3000:]
    assert_same_adapter(adapter(tmp_path / "fsdp"), adapter(tmp_path / "ddp"))

    (checkpoint,) = (tmp_path / "fsdp" / "run" / "checkpoints").glob("*step=2.ckpt")
    saved = torch.load(checkpoint, weights_only=False)["state_dict"]
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved)  # the frozen base is never saved
    config = tmp_path / "fsdp" / "config.yaml"
    resumed = tmp_path / "resumed" / "run"
    out = run_cli("fit", "--config", str(config), f"--trainer.default_root_dir={resumed}", f"--ckpt_path={checkpoint}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert_same_adapter(adapter(tmp_path / "resumed"), adapter(tmp_path / "fsdp"))
    # the gathered adapter is a PEFT adapter: it loads on the base model as init_adapter does
    loaded = load_causal_lm(str(tiny_model_dir), init_adapter=str(resumed / "adapter"))
    b = next(p for n, p in loaded.named_parameters() if "lora_B" in n)
    assert float(b.abs().max()) > 0


@pytest.mark.slow  # ~45 s on 2 CPU cores; the default run keeps FSDP SFT, GRPO and lockstep decoding
def test_fsdp_wraps_decoder_layers_and_lora_leaves_and_checkpoints_the_layers_it_is_asked_to(tmp_path, tiny_model_dir):
    """PEFT's wrap policy: one FSDP unit per decoder layer and per LoRA leaf (2 layers x 7 projections x A and B),
    the rest in the root; ``student.gradient_checkpointing`` checkpoints the decoder layers through the strategy
    (transformers' own checkpointing and its KV cache off), and the adapter is the DDP run's with transformers'
    checkpointing."""
    for name, strategy in (("fsdp", CPU_FSDP), ("ddp", "ddp")):
        path = sft_run(tmp_path, tiny_model_dir, name, strategy, "none")
        config = yaml.safe_load(path.read_text())
        config["model"]["init_args"]["student"]["gradient_checkpointing"] = True
        config["trainer"]["callbacks"] = (
            [{"class_path": "cpu_fsdp.WrapRecorder", "init_args": {"path": str(tmp_path / "wrapped.json")}}]
            if name == "fsdp"
            else []
        )
        path.write_text(yaml.safe_dump(config))
        out = run_cli("fit", "--config", str(path))
        assert out.returncode == 0, out.stderr[-3000:]
    assert_same_adapter(adapter(tmp_path / "fsdp"), adapter(tmp_path / "ddp"))
    wrapped = json.loads((tmp_path / "wrapped.json").read_text())
    assert wrapped["units"] == {"SFTModule": 1, "LlamaDecoderLayer": 2, "Linear": 28}
    assert wrapped["checkpointed"] == {"LlamaDecoderLayer": 2}


@pytest.mark.parametrize(
    ("quantization", "checkpointing"), [("none", False), pytest.param("nf4", True, marks=pytest.mark.slow)]
)
def test_fsdp_grpo_steps_train_the_ddp_adapter(tmp_path, tiny_model_dir, quantization, checkpointing):
    """2 GRPO steps on 2 FSDP ranks (2 mini-batches each: off-policy log-probs, lockstep HF decoding, FSDP's
    reduction and clipping, no skipped groups) end at the adapter of the same steps under DDP (whose gradient is the
    single-process one, skipping or not); also NF4 with the decoder layers checkpointed, as the paper's config."""
    runs = {}
    for name, strategy in (("fsdp", CPU_FSDP), ("ddp", "ddp")):
        run = tmp_path / name
        run.mkdir()
        path = grpo_config(run, tiny_model_dir, devices=2, strategy=strategy, max_steps=2)
        config = yaml.safe_load(path.read_text())
        settings = config["model"]["init_args"]
        settings["student"].update(
            {
                "cpu_kernels": "off",
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                "quantization": quantization,
                "gradient_checkpointing": checkpointing,
            }
        )
        settings.update({"engine": "hf", "mini_batch_groups": 2, "max_grad_norm": 1.0})
        path.write_text(yaml.safe_dump(config))
        out = run_cli("fit", "--config", str(path))
        assert out.returncode == 0, out.stderr[-3000:]
        runs[name] = adapter(run)
    assert_same_adapter(runs["fsdp"], runs["ddp"])


def _lockstep_rank(rank: int, model_dir: str, init_file: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = load_causal_lm(model_dir, quantization="none").eval()
        forwards = []
        model.register_forward_hook(lambda *_: forwards.append(1))
        ids, mask = left_pad([[5, 6, 7], [8, 9]], pad_token_id=0)
        stop = list(range(model.config.vocab_size)) if rank == 0 else []  # rank 0 stops at its first token
        new = decode(model, ids, mask, 6, sampler(0.0, 1.0), stop_token_ids=stop, pad_token_id=0, lockstep=True)
        results[rank] = (len(forwards), new.tolist())
    finally:
        dist.destroy_process_group()


def test_lockstep_decoding_runs_every_rank_for_the_longest_ranks_steps(tmp_path, tiny_model_dir):
    """Rank 0's rows all stop at their first token, rank 1's never: with ``lockstep`` both run the prefill and 5
    steps (the per-forward all-gathers of FSDP line up), and rank 0's extra steps only add padding."""
    with mp.Manager() as manager:
        results = manager.dict()
        args = (str(tiny_model_dir), str(tmp_path / "init"), results)
        mp.spawn(_lockstep_rank, args=args, nprocs=2, join=True)
        (count0, new0), (count1, _) = results[0], results[1]
    assert count0 == count1 == 6
    assert all(row[1:] == [0] * 5 for row in new0)


@pytest.mark.parametrize(("base", "overlay"), OVERLAYS)
def test_fsdp_overlays_train_the_paper_config_with_the_qlora_strategy(base, overlay, monkeypatch):
    """Each shipped overlay, parsed on its base as its comment says, builds the QLoRA FSDP strategy (full sharding,
    the student's own wrap policy at wrap time) over 4 devices."""
    from conftest import ROOT

    from stat_pl.cli import run_lightning

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["stat_pl"])
    cli = run_lightning(["--config", base, "--config", overlay, "--trainer.accelerator=cpu"], run=False)
    strategy = cli.trainer.strategy
    assert isinstance(strategy, QLoRAFSDPStrategy) and strategy.num_processes == 4
    assert strategy.sharding_strategy.name == "FULL_SHARD" and strategy.kwargs["use_orig_params"]
    assert cli.model.student.quantization == "nf4" and cli.model.student.gradient_checkpointing


def test_a_precision_that_would_cast_the_nf4_storage_is_refused_naming_both_keys():
    """bf16-mixed makes FSDP compute in bf16; NF4 bytes stored as float32 would be cast, so the run stops first."""
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import FSDPPrecision

    from stat_pl.errors import UserError
    from stat_pl.models import StudentConfig

    strategy = QLoRAFSDPStrategy()
    strategy.precision_plugin = FSDPPrecision("bf16-mixed")
    module = SimpleNamespace(
        model=torch.nn.Linear(2, 2), student=StudentConfig(model="m", quantization="nf4"), compute_dtype="float32"
    )
    with pytest.raises(UserError, match=r"trainer\.precision.*student\.compute_dtype is float32"):
        strategy.configure_policies(module)


def test_lightnings_own_fsdp_strategy_is_refused_naming_the_key():
    """``strategy: fsdp`` has no wrap policy for the student: the module stops before loading it, naming ours."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    from stat_pl.errors import UserError
    from stat_pl.fsdp import is_fsdp

    with pytest.raises(UserError, match=r"trainer\.strategy: FSDPStrategy .*stat_pl\.fsdp\.QLoRAFSDPStrategy"):
        is_fsdp(SimpleNamespace(strategy=FSDPStrategy()))
    assert is_fsdp(SimpleNamespace(strategy=QLoRAFSDPStrategy())) and not is_fsdp(SimpleNamespace(strategy=None))


@pytest.mark.slow  # a 2-rank start-up, ~20 s
def test_callbacks_that_decode_with_the_live_model_refuse_fsdp_naming_what_to_do(tmp_path, tiny_model_dir):
    """The SkillReprofiler with the HF engine and the BenchmarkEvaluator would decode with sharded weights outside
    the root FSDP unit: both stop at setup with what to set instead, before any training."""
    from test_ddp import reprofiled_config

    config_path = reprofiled_config(tmp_path, tiny_model_dir, devices=2, engine="hf")
    config = yaml.safe_load(config_path.read_text())
    config["trainer"]["strategy"] = CPU_FSDP
    config_path.write_text(yaml.safe_dump(config))
    out = run_cli("fit", "--config", str(config_path))
    assert out.returncode != 0
    assert "set SkillReprofiler.engine: vllm" in out.stderr, out.stderr[-3000:]
