"""HFEngine on a tiny model: batching is exact, samples come grouped, the live model is left as it was."""

import importlib.util

import pytest
import torch

from stat_pl.engines.base import SamplingParams
from stat_pl.engines.hf import HFEngine
from stat_pl.models import LoRAConfig, add_lora, load_causal_lm
from stat_pl.tokenizer import load_tokenizer

PROMPTS = [
    [{"role": "user", "content": q}]
    for q in ("what is 2+3", "compute the sum of 12 and 30 and then the product", "x", "find the value of y = 7 * 8")
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return HFEngine(str(tiny_model_dir), batch_size=8, progress=False)


def test_batched_greedy_equals_one_by_one(engine):
    sampling = SamplingParams(max_new_tokens=12)
    batched = engine.generate(PROMPTS, sampling)
    single = [engine.generate([p], sampling)[0] for p in PROMPTS]
    assert [c[0].text for c in batched] == [c[0].text for c in single]
    assert all(c[0].num_tokens == 12 or c[0].finish_reason == "stop" for c in batched)


def test_n_samples_come_back_grouped_per_prompt_and_are_seeded(engine):
    sampling = SamplingParams(max_new_tokens=8, temperature=1.0, n=3, seed=7)
    out = engine.generate(PROMPTS[:2], sampling)
    assert [len(c) for c in out] == [3, 3]
    assert [[c.text for c in cs] for cs in out] == [
        [c.text for c in cs] for cs in engine.generate(PROMPTS[:2], sampling)
    ]
    assert len({c.text for c in out[0]}) > 1


def test_a_stop_string_stops(engine):
    free = engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=20))[0][0].text
    assert len(free) > 2
    stop = free[1:3]
    stopped = engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=20, stop=(stop,)))[0][0]
    assert stop not in stopped.text and free.startswith(stopped.text) and stopped.finish_reason == "stop"


def test_live_training_model_is_back_in_train_mode_with_gradients_and_rng_intact(tiny_model_dir):
    model = add_lora(load_causal_lm(str(tiny_model_dir)), LoRAConfig(r=4))
    model.train()
    batch = torch.tensor([[5, 6, 7, 8]])
    model(input_ids=batch, labels=batch).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    HFEngine(model, load_tokenizer(str(tiny_model_dir)), progress=False).generate(
        PROMPTS, SamplingParams(max_new_tokens=5, temperature=1.0)
    )
    assert torch.rand(1) == expected_next  # generation did not consume the training RNG
    assert model.training and all(m.training for m in model.modules() if hasattr(m, "lora_A"))
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters() if n in grads)


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None,
    reason="vLLM is installed here; tests/test_vllm_engine.py runs it for real",
)
def test_vllm_engine_says_how_to_install_vllm_where_it_is_missing():
    from stat_pl.engines.vllm import VLLMEngine

    with pytest.raises(ImportError, match="install_vllm_cpu.sh"):
        VLLMEngine("offline:smollm2-135m-instruct")


def test_sampling_draws_from_the_whole_vocabulary_not_the_top_50(engine):
    """SamplingParams has no top-k (as VLLMEngine): transformers' default top_k=50 must not creep in."""
    hot = engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=1, temperature=1000.0, n=200, seed=0))[0]
    first_tokens = {engine.tokenizer(c.text, add_special_tokens=False)["input_ids"][:1][0] for c in hot if c.text}
    assert len(first_tokens) > 50


def test_generation_does_not_break_qlora_gradients_on_cpu(tiny_model_dir):
    """bitsandbytes repacks 4-bit CPU weights for inference in eval mode; training must still get gradients."""
    model = load_causal_lm(str(tiny_model_dir), quantization="nf4", lora=LoRAConfig(r=4, dropout=0.0))
    tokenizer = load_tokenizer(str(tiny_model_dir))
    for name, p in model.named_parameters():
        if "lora_A" in name:
            torch.nn.init.normal_(p)
    batch = torch.tensor([[5, 6, 7, 8, 9, 10]])

    def first_layer_grad() -> float:
        model.zero_grad()
        model.train()
        model(input_ids=batch, labels=batch).loss.backward()
        return sum(float(p.grad.norm()) for n, p in model.named_parameters() if "layers.0." in n and "lora_B" in n)

    before = first_layer_grad()
    HFEngine(model, tokenizer, progress=False).generate(PROMPTS[:2], SamplingParams(max_new_tokens=4))
    assert before > 0 and first_layer_grad() == pytest.approx(before, rel=1e-4)


@pytest.mark.parametrize("quantization", ["nf4", "none"])
def test_merged_copy_computes_what_the_lora_model_computes(tiny_model_dir, quantization):
    from stat_pl.cpu.merged_copy import MergedCopy

    # float32 compute: with bf16 compute, bitsandbytes rounds the live model's (large, here) LoRA output to bf16
    model = load_causal_lm(
        str(tiny_model_dir), quantization=quantization, compute_dtype="float32", lora=LoRAConfig(r=4, dropout=0.0)
    ).eval()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    merged = MergedCopy(model)
    copy = merged.refresh(model)
    assert not any("lora_" in name for name, _ in copy.named_parameters())  # a plain model: the adapter is merged
    tolerance = 1e-3  # float32 rounding of the (large, here) LoRA delta, merged vs unmerged
    batch = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=batch).logits.float(), copy(input_ids=batch).logits, atol=tolerance)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(1.0)
        assert not torch.allclose(model(input_ids=batch).logits.float(), copy(input_ids=batch).logits, atol=tolerance)
        assert merged.refresh(model) is copy
        assert torch.allclose(model(input_ids=batch).logits.float(), copy(input_ids=batch).logits, atol=tolerance)


def test_token_id_prompts_generate_what_their_text_generates(engine):
    sampling = SamplingParams(max_new_tokens=10, temperature=1.0, n=2, seed=3)
    ids = [engine.prompt_ids(p) for p in PROMPTS]
    by_text, by_ids = engine.generate(PROMPTS, sampling), engine.generate(ids, sampling)
    assert [[c.token_ids for c in cs] for cs in by_ids] == [[c.token_ids for c in cs] for cs in by_text]
    for cs in by_ids:
        for c in cs:  # token ids end at the EOS the model chose; the text is their decoding without it
            assert engine.tokenizer.decode(c.token_ids, skip_special_tokens=True) == c.text
            assert len(c.token_ids) == c.num_tokens + (c.finish_reason == "stop")


def test_prefilling_each_prompt_once_samples_what_n_prefills_sample(tiny_model_dir):
    """Prompts of different lengths (left padding): the shared KV cache gives the same samples."""
    sampling = SamplingParams(max_new_tokens=12, temperature=1.0, n=4, seed=11)
    shared = HFEngine(str(tiny_model_dir), batch_size=16, progress=False).generate(PROMPTS, sampling)
    plain = HFEngine(str(tiny_model_dir), batch_size=16, progress=False, share_prefill=False)
    plain = plain.generate(PROMPTS, sampling)
    assert [[c.token_ids for c in cs] for cs in shared] == [[c.token_ids for c in cs] for cs in plain]
    assert len({c.token_ids for c in shared[1]}) > 1
