"""LlamaSteps decodes what the model's own forward decodes: same logits, same greedy and seeded tokens."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from stat_pl.engines import decode as decoding
from stat_pl.engines.decode import decode, sampler
from stat_pl.engines.llama_steps import supports

PROMPTS = torch.tensor([[0, 0, 5, 9, 14, 3], [7, 8, 2, 11, 4, 6]])  # left padding in the first
MASK = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


def qwen2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).eval()


def llama_with_rope_scaling() -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=128,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16},
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


@pytest.fixture(params=["tiny-llama", "qwen2", "llama3-rope"])
def model(request, tiny_model_dir):
    if request.param == "tiny-llama":
        return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    return {"qwen2": qwen2, "llama3-rope": llama_with_rope_scaling}[request.param]()


def decoded(model, monkeypatch, lean: bool, temperature: float, logits_seen: list | None = None):
    monkeypatch.setattr(decoding, "supports", lambda m: lean)

    def pick(logits):
        if logits_seen is not None:
            logits_seen.append(logits.clone())
        return sampler(temperature, 1.0)(logits)

    torch.manual_seed(3)
    return decode(model, PROMPTS, MASK, max_new_tokens=12, pick=pick, stop_token_ids=[], pad_token_id=0, samples=3)


def test_it_serves_plain_llama_and_qwen2_on_a_cpu(model):
    assert supports(model)
    assert not supports(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_it_decodes_what_the_model_forward_decodes(model, monkeypatch, temperature):
    expected_logits, logits = [], []
    expected = decoded(model, monkeypatch, lean=False, temperature=temperature, logits_seen=expected_logits)
    got = decoded(model, monkeypatch, lean=True, temperature=temperature, logits_seen=logits)
    assert torch.equal(got, expected)
    assert len(logits) == len(expected_logits) == 12
    for step, (a, b) in enumerate(zip(logits, expected_logits, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"step {step}")
