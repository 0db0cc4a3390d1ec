"""On a CUDA device: the paper's QLoRA path (NF4, bf16-mixed, PagedAdamW8bit) trains and resumes exactly, GRPO samples
with the HF engine and with colocated vLLM, every model lands on the GPU, and ``evaluate`` writes its table there.

Every test is marked ``gpu``: skipped, with the reason, where there is no CUDA device (CI, the development machines).
``bench/gpu_smoke.sh`` runs them on a GPU machine. Written to the libraries' documented APIs without a GPU to run
them on: not yet run. The runs are tiny (a 2-layer Llama, SmolLM2-135M for what needs real weights) so that the
file should take a few minutes on one H100.

Exact resume on a GPU needs deterministic kernels (attention backward, cuBLAS): the resume tests set Lightning's
``trainer.deterministic``, which turns on ``torch.use_deterministic_algorithms`` and cuBLAS's fixed workspace.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_grpo_cli import callbacks as grpo_callbacks
from test_grpo_cli import grpo_config
from test_sft_cli import recorded, run_cli, tiny_config

from stat_pl.engines.base import SamplingParams
from stat_pl.engines.hf import HFEngine
from stat_pl.evaluation.adapters import ModelEntry, load_for_evaluation
from stat_pl.evaluation.benchmarks import BenchmarkSpec
from stat_pl.evaluation.evaluate import evaluate
from stat_pl.models import LoRAConfig, load_causal_lm

pytestmark = pytest.mark.gpu
PAGED_ADAMW_8BIT = "bitsandbytes.optim.PagedAdamW8bit"


def placement(path: Path) -> str:
    """``--trainer.callbacks`` entry of a :class:`gpu_helpers.PlacementRecorder` writing to ``path``."""
    return json.dumps({"class_path": "gpu_helpers.PlacementRecorder", "init_args": {"path": str(path)}})


def qlora_sft_config(tmp_path: Path, model_dir: Path, lr: float, **trainer) -> Path:
    """The CLI test config on the GPU as the paper trains: NF4 with the compute dtype ``auto`` resolves to (bf16),
    bf16-mixed, PagedAdamW8bit; four rows, so a few steps visibly lower the loss."""
    config = tiny_config(tmp_path, model_dir, accelerator="gpu", precision="bf16-mixed", **trainer)
    settings = yaml.safe_load(config.read_text())
    model = settings["model"]["init_args"]
    model["student"].update({"quantization": "nf4", "compute_dtype": "auto"})
    model["optimizer"] = {"class_path": PAGED_ADAMW_8BIT, "init_args": {"lr": lr}}
    model["warmup_ratio"] = 0.0
    settings["data"]["init_args"]["train"][0]["init_args"]["n"] = 4
    settings["data"]["init_args"]["samples_per_epoch"] = 4
    config.write_text(yaml.safe_dump(settings))
    return config


def assert_on_the_gpu(record: dict, optimizer: str) -> None:
    """The student's 4-bit and LoRA weights and the optimizer state on the strategy's CUDA device; no CPU door."""
    device = record["root_device"]
    assert device.startswith("cuda"), record
    assert record["four_bit"]["count"] > 0 and record["four_bit"]["devices"] == [device], record
    assert record["lora"]["count"] > 0 and record["lora"]["devices"] == [device], record
    assert record["optimizer"] == optimizer and record["optimizer_state"] == [device], record
    assert (record["precision"], record["compute_dtype"]) == ("bf16-mixed", "bfloat16"), record
    assert record["cpu_door"] == [], record


# The random tiny Llama's tied 32-wide embeddings cap how far its loss can fall: about 2% in 10 steps (measured on
# the CPU with AdamW), where SmolLM2's falls below a tenth.
@pytest.mark.parametrize(("model", "lr", "falls_to"), [("tiny_model_dir", 1e-2, 0.99), ("smollm2_dir", 2e-3, 0.5)])
def test_qlora_sft_with_paged_adamw8bit_trains_on_the_gpu(tmp_path, request, model, lr, falls_to):
    model_dir = request.getfixturevalue(model)
    config = qlora_sft_config(tmp_path, model_dir, lr, max_steps=10)
    out = run_cli("fit", "--config", str(config), f"--trainer.callbacks=[{placement(tmp_path / 'placed.json')}]")
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((tmp_path / "placed.json").read_text())
    assert_on_the_gpu(record, "PagedAdamW8bit")
    losses = record["losses"]
    assert len(losses) == 10 and sum(losses[-3:]) < falls_to * sum(losses[:3]), losses  # 4 rows, 2 a batch: overfit
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_qlora_sft_killed_and_resumed_on_the_gpu_ends_bit_identical(tmp_path, tiny_model_dir):
    """As tests/test_sft_resume.py on the CPU: SIGKILL after step 3's checkpoint, resume, same adapter bits."""
    config = qlora_sft_config(
        tmp_path, tiny_model_dir, 1e-2, max_steps=6, accumulate_grad_batches=2, deterministic=True
    )
    settings = yaml.safe_load(config.read_text())
    settings["model"]["init_args"]["student"]["lora"]["dropout"] = 0.1  # masks drawn on the GPU every micro-batch
    settings["data"]["init_args"]["train"][0]["init_args"]["n"] = 50
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
    callbacks = json.dumps([checkpoints, kill])
    out = run_cli(
        "fit", "--config", str(config), f"--trainer.default_root_dir={part}", f"--trainer.callbacks={callbacks}"
    )
    assert out.returncode == -9, out.stderr[-3000:]  # killed, not finished
    (ckpt,) = part.rglob("step=3.ckpt")
    out = run_cli("fit", "--config", str(config), f"--trainer.default_root_dir={part}", f"--ckpt_path={ckpt}")
    assert out.returncode == 0, out.stderr[-3000:]

    ours, theirs = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (part, straight))
    assert any(float(v.abs().sum()) > 0 for k, v in theirs.items() if "lora_B" in k)  # it trained
    assert ours.keys() == theirs.keys()
    assert all(ours[k].equal(theirs[k]) for k in theirs), [k for k in theirs if not ours[k].equal(theirs[k])][:3]


def qlora_grpo_config(tmp_path: Path, model_dir: Path, engine: str, **trainer) -> Path:
    """tests/test_grpo_cli.py's tiny GRPO config on the GPU: NF4, bf16-mixed (so bf16 compute), the given engine."""
    config = grpo_config(tmp_path, model_dir, accelerator="gpu", precision="bf16-mixed", **trainer)
    settings = yaml.safe_load(config.read_text())
    model = settings["model"]["init_args"]
    model["student"].update({"quantization": "nf4", "compute_dtype": "auto"})
    model["engine"] = engine
    if engine == "vllm":  # bf16 as the student computes; eager: no compilation, a start-up of seconds
        model["vllm"] = {"dtype": "bfloat16", "enforce_eager": True, "gpu_memory_utilization": 0.3}
    config.write_text(yaml.safe_dump(settings))
    return config


def test_grpo_with_the_hf_engine_trains_on_the_gpu_and_resumes_exactly(tmp_path, tiny_model_dir):
    """As tests/test_grpo_cli.py on the CPU: 4 straight steps vs 2 + a new process resuming for 2."""
    config = qlora_grpo_config(tmp_path, tiny_model_dir, "hf", deterministic=True)
    full, resumed = tmp_path / "full.jsonl", tmp_path / "resumed.jsonl"
    with_placement = json.loads(grpo_callbacks(full)) + [json.loads(placement(tmp_path / "placed.json"))]
    out = run_cli("fit", "--config", str(config), f"--trainer.callbacks={json.dumps(with_placement)}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert_on_the_gpu(json.loads((tmp_path / "placed.json").read_text()), "AdamW")
    part = tmp_path / "part"
    out = run_cli(
        "fit",
        "--config",
        str(config),
        "--trainer.max_steps=2",
        f"--trainer.default_root_dir={part}",
        f"--trainer.callbacks={grpo_callbacks(tmp_path / 'first.jsonl', every_n_steps=2)}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (ckpt,) = part.rglob("*.ckpt")
    out = run_cli(
        "fit",
        "--config",
        str(config),
        f"--ckpt_path={ckpt}",
        f"--trainer.default_root_dir={part}",
        f"--trainer.callbacks={grpo_callbacks(resumed)}",
    )
    assert out.returncode == 0, out.stderr[-3000:]

    straight = recorded(full)
    assert [row["step"] for row in straight] == [1, 2, 3, 4]
    assert recorded(tmp_path / "first.jsonl") == straight[:2]
    assert recorded(resumed) == straight[2:]
    adapters = [load_file(d / "adapter" / "adapter_model.safetensors") for d in (tmp_path / "run", part)]
    assert any(float(v.abs().sum()) > 0 for k, v in adapters[0].items() if "lora_B" in k)  # it trained
    for key, value in adapters[0].items():
        torch.testing.assert_close(adapters[1][key], value, rtol=0, atol=0, msg=key)
    assert not (tmp_path / "run" / "rollout-adapter").exists()  # the HF engine samples from the live model


def test_grpo_with_colocated_vllm_trains_on_the_gpu(tmp_path, smollm2_dir):
    """Two rollout batches sampled by vLLM on the training GPU from the adapter saved before each batch."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed (pip install 'stat-pl[vllm]')")
    config = qlora_grpo_config(tmp_path, smollm2_dir, "vllm", max_steps=2)
    rollouts = tmp_path / "rollouts.jsonl"
    items = json.loads(grpo_callbacks(rollouts)) + [json.loads(placement(tmp_path / "placed.json"))]
    out = run_cli("fit", "--config", str(config), f"--trainer.callbacks={json.dumps(items)}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert_on_the_gpu(json.loads((tmp_path / "placed.json").read_text()), "AdamW")
    rows = recorded(rollouts)
    assert [row["step"] for row in rows] == [1, 2]
    assert all(len(ids) > 0 for row in rows for group in row["ids"] for ids in group)  # G completions a prompt
    assert (tmp_path / "run" / "rollout-adapter" / "rank0" / "adapter_config.json").is_file()
    trained = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    assert any(float(v.abs().sum()) > 0 for k, v in trained.items() if "lora_B" in k)


def test_models_load_onto_the_gpu(tiny_model_dir):
    """load_causal_lm (NF4 + LoRA, and plain in bf16), HFEngine by name and load_for_evaluation put every weight on
    the current CUDA device without being told; HFEngine generates there."""
    cuda = torch.device("cuda", torch.cuda.current_device())
    qlora = load_causal_lm(str(tiny_model_dir), quantization="nf4", lora=LoRAConfig(r=4))
    assert {p.device for p in qlora.parameters()} == {cuda}
    assert any(type(p).__name__ == "Params4bit" for p in qlora.parameters())
    plain = load_causal_lm(str(tiny_model_dir))
    assert {(p.device, p.dtype) for p in plain.parameters()} == {(cuda, torch.bfloat16)}
    engine = HFEngine(str(tiny_model_dir), progress=False)
    assert {p.device for p in engine.model.parameters()} == {cuda}
    (completions,) = engine.generate(["what is 1 + 2"], SamplingParams(max_new_tokens=4, n=2, temperature=1.0))
    assert len(completions) == 2 and all(c.token_ids for c in completions)
    evaluated = load_for_evaluation(ModelEntry("base", str(tiny_model_dir)))
    assert {p.device for p in evaluated.parameters()} == {cuda} and not evaluated.training


def test_evaluate_with_the_hf_engine_on_the_gpu_writes_its_table(tmp_path, tiny_model_dir):
    from stat_pl.data.skillworld import SkillWorldSource

    benchmark = tmp_path / "skillworld.jsonl"
    rows = [{"id": r.id, "problem": r.problem, "answer": r.answer} for r in SkillWorldSource(n=6, levels=[1]).load()]
    benchmark.write_text("".join(json.dumps(row) + "\n" for row in rows))
    adapter = tmp_path / "adapter"
    load_causal_lm(str(tiny_model_dir), lora=LoRAConfig(r=2, alpha=4)).save_pretrained(str(adapter))
    torch.cuda.reset_peak_memory_stats()
    results = evaluate(
        str(tiny_model_dir),
        [BenchmarkSpec("skillworld", path=str(benchmark), metrics=["pass@1", "pass@2"])],
        adapters={"sft": str(adapter)},
        output_dir=str(tmp_path / "eval"),
        engine="hf",
        max_new_tokens=4,
        batch_size=8,
        progress=False,
    )
    assert torch.cuda.max_memory_allocated() > 0  # the models were on the GPU
    assert list(results["summary"]) == ["base", "sft"]
    assert results["generation"]["completions_generated"] == 2 * 6 * (1 + 2)
    table = (tmp_path / "eval" / "table.md").read_text()
    assert "pass@2" in table and "| base |" in table and "| sft |" in table


def test_paged_optimizer_state_is_paged_again_after_a_resume():
    """A PagedAdamW8bit state saved, reloaded as Lightning does (host, then the device) and repaged: paged buffers
    with the saved values, and the optimizer still steps."""
    import bitsandbytes as bnb
    from lightning.pytorch.core.optimizer import _optimizer_to_device

    from stat_pl.paged_optimizer import repage_optimizer_state

    param = torch.nn.Parameter(torch.randn(1024, 1024, device="cuda"))
    optimizer = bnb.optim.PagedAdamW8bit([param], lr=1e-3)
    param.grad = torch.randn_like(param)
    optimizer.step()
    saved = torch.load(_saved(optimizer.state_dict()), map_location=lambda storage, loc: storage, weights_only=False)
    resumed = bnb.optim.PagedAdamW8bit([param], lr=1e-3)
    resumed.load_state_dict(saved)
    _optimizer_to_device(resumed, param.device)
    assert not getattr(resumed.state[param]["state1"], "is_paged", False)  # what a resume gives without the fix
    assert repage_optimizer_state(resumed) == 2
    for key in ("state1", "state2"):
        assert resumed.state[param][key].is_paged
        torch.testing.assert_close(resumed.state[param][key].cpu(), optimizer.state[param][key].cpu())
    resumed.step()


def _saved(state: dict):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer
