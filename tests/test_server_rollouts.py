"""GRPO rollouts and a re-profiling round from a separate server (``engine: vllm_server``): 2 DDP ranks (gloo CPU
processes) push their adapters to one loopback stand-in for ``vllm serve`` and sample from it; the trainer's ranks
hold no engine. The stand-in generates for real with HFEngine through the pushed adapter
(tests/loopback_vllm_server.py).
"""

import json

import pytest
import yaml
from loopback_vllm_server import LoopbackVLLMServer
from test_grpo_cli import grpo_config
from test_sft_cli import run_cli

from stat_pl.engines.live import LiveVLLM, live_generator
from stat_pl.engines.server import LiveServer, ServerSettings
from stat_pl.errors import UserError


def test_two_ranks_train_on_rollouts_from_one_server(tmp_path, tiny_model_dir):
    config_path = grpo_config(tmp_path, tiny_model_dir, devices=2, strategy="ddp", max_steps=2)
    config = yaml.safe_load(config_path.read_text())
    with LoopbackVLLMServer(tiny_model_dir) as server:
        config["model"]["init_args"].update({"engine": "vllm_server", "server": {"url": server.base_url}})
        config_path.write_text(yaml.safe_dump(config))
        out = run_cli("fit", "--config", str(config_path))
        assert out.returncode == 0, out.stderr[-3000:]
        requests = list(server.requests)
    loads = [body["lora_name"] for path, body in requests if path == "/v1/load_lora_adapter"]
    completions = [body for path, body in requests if path == "/v1/completions"]
    assert len(loads) == len(set(loads)) == 4  # each rank pushes its adapter before each of its 2 batches
    assert len({name.rsplit("-", 1)[0] for name in loads}) == 2  # one name prefix per rank
    assert sorted(body["model"] for body in completions) == sorted(loads)  # every batch sampled through its push
    assert all(body["return_token_ids"] and body["n"] == 4 for body in completions)
    adapters = {p.parent.name for p in (tmp_path / "run" / "rollout-adapter").rglob("adapter_config.json")}
    assert adapters == {"rank0", "rank1"}


def test_the_generator_follows_the_engine_and_names_what_does_not_fit():
    settings = ServerSettings(url="http://127.0.0.1:9/v1")
    assert isinstance(live_generator("vllm_server", "model.", None, settings), LiveServer)
    assert live_generator("hf", "model.", None, None) is None
    assert live_generator("auto", "model.", None, None) is None  # no GPU here
    with pytest.raises(UserError, match=r"model.engine: vllm_server needs model.server: \{url"):
        live_generator("vllm_server", "model.", None, None)
    with pytest.raises(UserError, match="model.server is set but model.engine is 'auto'"):
        live_generator("auto", "model.", None, settings)
    with pytest.raises(UserError, match="SkillReprofiler.vllm is set but SkillReprofiler.engine is 'vllm_server'"):
        live_generator("vllm_server", "SkillReprofiler.", LiveVLLM().settings, settings)


def test_a_reprofiling_round_answers_through_the_server(tmp_path, tiny_model_dir):
    from test_ddp import reprofiled_config

    with LoopbackVLLMServer(tiny_model_dir) as server:
        config_path = reprofiled_config(
            tmp_path, tiny_model_dir, devices=1, engine="vllm_server", server={"url": server.base_url}
        )
        config = yaml.safe_load(config_path.read_text())
        config["trainer"]["max_epochs"] = 1
        config_path.write_text(yaml.safe_dump(config))
        out = run_cli("fit", "--config", str(config_path))
        assert out.returncode == 0, out.stderr[-3000:]
        requests = list(server.requests)
    completions = [body for path, body in requests if path == "/v1/completions"]
    assert len(completions) == 2 and all(len(body["prompt"]) == 4 for body in completions)  # 2 rounds x 4 questions
    assert json.loads((tmp_path / "run" / "profile-epoch1.json").read_text())["meta"]["questions"] == 4
