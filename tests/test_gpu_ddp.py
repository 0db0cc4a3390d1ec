"""On 2 CUDA devices: DDP over NCCL with GRPO's batch-scaled advantages (a collective on the rank's GPU) and one
colocated vLLM engine per rank on its own GPU, and a SkillReprofiler round answered on both GPUs.

Marked ``gpu`` and skipped, with the reason, where fewer than 2 CUDA devices are visible. Written to the documented
APIs of Lightning, NCCL and vLLM (``external_launcher``) without GPUs to run them on: not yet run.
"""

import importlib.util
import json

import pytest
import torch
import yaml
from test_ddp import reprofiled_config
from test_gpu import qlora_grpo_config
from test_grpo_cli import callbacks as grpo_callbacks
from test_sft_cli import recorded, run_cli

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices"),
]


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_grpo_over_nccl_samples_on_each_ranks_own_gpu(tmp_path, smollm2_dir, engine):
    if engine == "vllm" and importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed (pip install 'stat-pl[vllm]')")
    config_path = qlora_grpo_config(tmp_path, smollm2_dir, engine, devices=2, strategy="ddp", max_steps=2)
    config = yaml.safe_load(config_path.read_text())
    config["model"]["init_args"]["advantage_scale"] = "batch"  # all-gathers the rewards over NCCL
    config_path.write_text(yaml.safe_dump(config))
    rollouts, ranks = tmp_path / "rollouts.jsonl", tmp_path / "ranks"
    items = json.loads(grpo_callbacks(rollouts))
    items.append({"class_path": "gpu_helpers.RankEngineRecorder", "init_args": {"path": str(ranks)}})
    out = run_cli("fit", "--config", str(config_path), f"--trainer.callbacks={json.dumps(items)}")
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads((tmp_path / f"ranks.rank{r}").read_text()) for r in (0, 1)]
    assert [r["device"] for r in records] == ["cuda:0", "cuda:1"]
    if engine == "vllm":
        for rank, record in enumerate(records):
            assert record["launch"]["distributed_executor_backend"] == "external_launcher"
            assert record["env"]["LOCAL_RANK"] == str(rank) and record["env"]["WORLD_SIZE"] == "2"
    rows = {r: recorded(rollouts.with_name(f"rollouts.rank{r}.jsonl")) for r in (0, 1)}
    assert all([row["step"] for row in rows[r]] == [1, 2] for r in (0, 1))


def test_a_reprofiling_round_is_answered_on_both_gpus(tmp_path, tiny_model_dir):
    config_path = reprofiled_config(tmp_path, tiny_model_dir, devices=2)
    config = yaml.safe_load(config_path.read_text())
    config["trainer"].update({"accelerator": "gpu", "max_epochs": 1})
    counts = tmp_path / "answered"
    config["trainer"]["callbacks"].append(
        {"class_path": "reprofile_helpers.AnswerCounter", "init_args": {"path": str(counts)}}
    )
    config_path.write_text(yaml.safe_dump(config))
    out = run_cli("fit", "--config", str(config_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert [(tmp_path / f"answered.rank{r}").read_text().split() for r in (0, 1)] == [["2", "2"], ["2", "2"]]
