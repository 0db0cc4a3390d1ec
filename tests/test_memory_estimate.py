"""The GPU memory estimate: its arithmetic by hand, its activation count against torch's, its verdicts and the CLI.

The start-up check only runs on CUDA; here its decision is tested with an explicit device size.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT
from transformers import LlamaConfig, LlamaForCausalLM

from stat_pl.cli import main, run_lightning, stage_parser
from stat_pl.errors import UserError
from stat_pl.memory_check import check_at_start
from stat_pl.memory_config import estimate_config
from stat_pl.memory_estimate import (
    GIB,
    GRPO_LOGIT_COPIES,
    SFT_LOGIT_COPIES,
    Adapter,
    ModelShape,
    activation_bytes,
    base_weight_bytes,
    kv_cache_bytes,
    layer_activation_bytes,
    logit_bytes,
    lora_parameter_count,
    lora_targets,
    optimizer_state_bytes_per_param,
)
from stat_pl.models import PAPER_TARGET_MODULES, LoRAConfig, add_lora, load_causal_lm

#: Llama-3.2-3B-Instruct's config.json, the fields that matter (the Hub's copy is gated).
LLAMA32_3B = {
    "model_type": "llama",
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 28,
    "num_attention_heads": 24,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}


def tiny_config(layers: int = 2) -> LlamaConfig:
    """Width 64, MLP 128, 4 heads of 16 sharing 2 key/value heads, a vocabulary of 100, tied embeddings."""
    sizes = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2}
    return LlamaConfig(vocab_size=100, num_hidden_layers=layers, head_dim=16, tie_word_embeddings=True, **sizes)


@pytest.fixture
def llama3b_config(tmp_path: Path) -> Path:
    path = tmp_path / "llama32-3b" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(LLAMA32_3B))
    return path


def test_tiny_llama_rows_by_hand():
    shape = ModelShape.from_config(tiny_config())
    # per layer: q 64x64, k 64x32, v 64x32, o 64x64, gate/up 64x128, down 128x64 = 36,864; embeddings 100x64 (tied),
    # norms (2 x 2 + 1) x 64
    assert (shape.linear_params(), shape.other_params()) == (2 * 36_864, 6_400 + 320)
    assert base_weight_bytes(shape, "none", "bfloat16") == 80_448 * 2
    assert base_weight_bytes(shape, "nf4", "bfloat16") == 36_864 + 1_152 + 18 + 6_720 * 4  # codes, absmax, absmax2
    assert base_weight_bytes(shape, "int8", "bfloat16") == 73_728 + 2 * 512 * 4 + 6_720 * 4  # + a scale per row
    targets = lora_targets(shape, list(PAPER_TARGET_MODULES), "lora.target_modules")
    params = lora_parameter_count(shape, 8, targets)
    assert params == 2 * 8 * (128 + 96 + 96 + 128 + 192 + 192 + 192)
    assert params * optimizer_state_bytes_per_param("torch.optim.AdamW") == 16_384 * 8
    assert params * optimizer_state_bytes_per_param("bitsandbytes.optim.PagedAdamW8bit") == 16_384 * 2
    adapter = Adapter(quantized=True, compute_dtype="bfloat16", r=8, targets=targets, dropout=0.05)
    # norms 8h + SDPA 2(2 x 64 + 2 x 32) + 4 x 4 heads + SwiGLU 3 x 4 x 128 + LoRA 6 x 512 inputs + 7 x 2 x r
    per_token = 512 + 400 + 1_536 + 3_184
    assert layer_activation_bytes(shape, adapter) == per_token
    assert activation_bytes(shape, adapter, tokens=20, checkpointing=False) == 2 * 20 * per_token
    assert activation_bytes(shape, adapter, tokens=20, checkpointing=True) == 20 * (2 * 4 * 64 + per_token)
    assert logit_bytes(shape, "bfloat16", 20, SFT_LOGIT_COPIES) == 20 * 100 * (2 + 12)
    assert logit_bytes(shape, "bfloat16", 20, GRPO_LOGIT_COPIES) == 20 * 100 * (2 + 16)
    assert kv_cache_bytes(shape, tokens=20, bytes_per_value=2) == 2 * 2 * 32 * 20 * 2


def _saved_bytes_per_token(model: torch.nn.Module, tokens: tuple[int, int]) -> int:
    """Bytes of the tensors autograd saves in one bf16-autocast forward, parameters excluded, per token."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(0, 100, tokens, generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", torch.bfloat16):
        model(input_ids=ids)
    return sum(saved.values()) // (tokens[0] * tokens[1])


@pytest.mark.parametrize("quantization", ["nf4", "none"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_count_matches_what_torch_saves(tmp_path: Path, quantization: str, checkpointing: bool):
    """One more layer costs what the formula says a layer costs (CPU, bf16 autocast, SDPA, the project's loader)."""
    lora = LoRAConfig(r=8, dropout=0.05)
    measured = []
    for layers in (2, 3):
        torch.manual_seed(0)
        LlamaForCausalLM(tiny_config(layers)).save_pretrained(tmp_path / str(layers))
        if quantization == "nf4":
            model = load_causal_lm(str(tmp_path / str(layers)), "nf4", "bfloat16", lora, checkpointing, "cpu")
        else:  # load_causal_lm keeps a CPU model in float32; a GPU holds it in the compute dtype
            base = LlamaForCausalLM.from_pretrained(tmp_path / str(layers), dtype=torch.bfloat16)
            if checkpointing:
                base.gradient_checkpointing_enable()
            model = add_lora(base.requires_grad_(False), lora)
        measured.append(_saved_bytes_per_token(model.train(), (4, 128)))
    shape = ModelShape.from_config(tiny_config())
    targets = lora_targets(shape, list(PAPER_TARGET_MODULES), "lora.target_modules")
    adapter = Adapter(quantization == "nf4", "bfloat16", 8, targets, 0.05)
    if checkpointing:  # each layer keeps its input; one layer's activations come back in its recompute
        expected = (4 if quantization == "nf4" else 2) * shape.hidden_size
    else:
        expected = layer_activation_bytes(shape, adapter)
    assert measured[1] - measured[0] == pytest.approx(expected, rel=0.03)


def test_smollm2_figures_match_its_known_size(smollm2_dir: Path):
    from transformers import AutoConfig

    shape = ModelShape.from_config(AutoConfig.from_pretrained(smollm2_dir))
    assert shape.parameter_count() == 134_515_008  # SmolLM2-135M's published count (biases: none)
    assert base_weight_bytes(shape, "none", "bfloat16") / GIB == pytest.approx(0.25, abs=0.005)
    # NF4: the decoder's 106M linear weights in ~0.52 byte, the 28M tied embeddings upcast to float32
    assert base_weight_bytes(shape, "nf4", "bfloat16") / GIB == pytest.approx(0.156, abs=0.002)


def _paper(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / "paper" / name).read_text())


def test_refusal_names_the_generation_batch_size(llama3b_config: Path):
    config = _paper("grpo_qlora_llama32_3b.yaml")
    args = config["model"]["init_args"]
    args["engine"] = "hf"  # HF rollouts hold their KV cache beside the 4-bit student
    args["student"]["gradient_checkpointing"] = True
    args["generation_batch_size"] = 64
    assert estimate_config("fit", config, str(llama3b_config), 80 * GIB).total_gib < 80
    args["generation_batch_size"] = 1024  # 1,024 sequences x 2,560 tokens of float32 keys and values
    estimate = estimate_config("fit", config, str(llama3b_config), 80 * GIB)
    assert estimate.largest().key == "model.init_args.generation_batch_size"
    with pytest.raises(UserError, match=r"change model\.init_args\.generation_batch_size$"):
        _check("fit", config, llama3b_config)


def _check(stage: str, config: dict, model_config: Path, gib: float = 80):
    """check_at_start's decision with an explicit device and a stand-in model config (it takes the model's own)."""
    config = copy.deepcopy(config)
    key = "model" if stage == "evaluate" else "student"
    if stage == "fit":
        config["model"]["init_args"]["student"]["model"] = str(model_config.parent)
    else:
        config[key] = str(model_config.parent)
    return check_at_start(stage, config, device_bytes=int(gib * GIB))


def test_checkpointing_is_the_hint_when_activations_do_not_fit(llama3b_config: Path):
    """The paper's GRPO config holds 16 completions of 2,560 tokens per backward: without checkpointing, too much."""
    config = _paper("grpo_qlora_llama32_3b.yaml")
    assert _check("fit", config, llama3b_config).total_gib < 80  # as shipped
    config["model"]["init_args"]["student"]["gradient_checkpointing"] = False
    with pytest.raises(UserError) as refused:
        _check("fit", config, llama3b_config)
    message = str(refused.value)
    assert "change model.init_args.micro_batch_groups" in message
    assert "set model.init_args.student.gradient_checkpointing: true" in message


def test_vllm_share_must_hold_its_weights(llama3b_config: Path):
    config = {"model": "meta-llama/Llama-3.2-3B-Instruct", "benchmarks": [{"name": "gsm8k"}], "engine": "vllm"}
    config["vllm"] = {"gpu_memory_utilization": 0.3}
    assert _check("evaluate", config, llama3b_config, gib=80) is not None
    with pytest.raises(UserError, match=r"raise vllm\.gpu_memory_utilization"):
        _check("evaluate", config, llama3b_config, gib=16)  # 4.8 GiB cannot hold 6 GiB of bf16 weights


def test_estimate_command_on_the_paper_configs(llama3b_config: Path, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    device = ["--device_memory_gib", "80"]
    main(
        [
            "estimate",
            "--config",
            "configs/paper/sft_qlora_llama32_3b.yaml",
            *device,
            "--model_config",
            str(llama3b_config),
        ]
    )
    out = capsys.readouterr().out
    assert "activations, 2 x 2048 tokens, checkpointed" in out and "fits: about" in out
    folder = str(llama3b_config.parent)
    main(["estimate", "--config", "configs/paper/grpo_qlora_llama32_3b.yaml", *device, "--model_config", folder])
    assert "KV cache, rollouts: 64 x 2560 tokens" in capsys.readouterr().out
    grpo = yaml.safe_load((ROOT / "configs/paper/grpo_qlora_llama32_3b.yaml").read_text())
    grpo["model"]["init_args"]["generation_batch_size"] = 256
    too_big = tmp_path / "grpo.yaml"
    too_big.write_text(yaml.safe_dump(grpo))
    with pytest.raises(SystemExit) as exit_:
        main(["estimate", "--config", str(too_big), *device, "--model_config", folder])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("stat_pl estimate: error: ") and "model.init_args.generation_batch_size" in err


def test_parsed_configs_give_the_yaml_estimate(smollm2_dir: Path, monkeypatch):
    """The start-up check reads the parsed config (defaults filled in by jsonargparse); the estimate command reads
    the YAML over the classes' defaults: both give the same table."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["stat_pl"])
    cli = run_lightning(["--config", "configs/demo.yaml", "--trainer.precision=bf16-mixed"], run=False)
    parsed = check_at_start("fit", cli.config.as_dict(), device_bytes=80 * GIB)
    demo = yaml.safe_load((ROOT / "configs/demo.yaml").read_text())
    demo["trainer"]["precision"] = "bf16-mixed"
    assert parsed is not None and parsed.format_table() == estimate_config("fit", demo, None, 80 * GIB).format_table()
    assert "KV cache, SkillReprofiler: 40 x 256 tokens" in parsed.format_table()
    parsed_stage = stage_parser("evaluate").parse_args(["--config", "configs/eval_math.yaml"]).as_dict()
    stage = check_at_start("evaluate", parsed_stage, device_bytes=80 * GIB)
    eval_math = yaml.safe_load((ROOT / "configs/eval_math.yaml").read_text())
    assert (
        stage is not None
        and stage.format_table() == estimate_config("evaluate", eval_math, None, 80 * GIB).format_table()
    )
