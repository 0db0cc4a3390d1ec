"""``python -m stat_pl export``: the adapter merged into its base, saved as a plain Hugging Face model.

What a user relies on: transformers loads the exported folder without PEFT or stat-pl and it computes what the
adapter on its base computes (logits to bf16 precision on a tiny Llama, the same greedy tokens on the real
SmolLM2); no LoRA weight is left in it; the errors a user can hit name the adapter, base or output folder.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from random_adapter import random_adapter
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from stat_pl.errors import MissingFileError, UserError
from stat_pl.export import export

#: Token ids the tiny Llama's vocabulary has, two rows.
IDS = torch.randint(3, 100, (2, 24), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def tiny_adapter(tiny_model_dir: Path, tmp_path: Path):
    """The tiny Llama with a random-B adapter saved to ``tmp_path/adapter``: (folder, PEFT model)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return tmp_path / "adapter", random_adapter(model, tmp_path / "adapter", b_std=0.05)


def saved_tensor_names(folder: Path) -> list[str]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return list(f.keys())


def test_exported_model_loads_without_peft_and_computes_what_the_adapter_does(tiny_adapter, tiny_model_dir, tmp_path):
    folder, peft_model = tiny_adapter
    out = export(str(folder), str(tmp_path / "merged"))

    merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers: no PEFT, no stat-pl
    assert merged.dtype == torch.bfloat16
    with torch.no_grad():
        expected, got = peft_model(IDS).logits, merged(IDS).logits.float()
        with peft_model.disable_adapter():
            base = peft_model(IDS).logits
    torch.testing.assert_close(got, expected, atol=0.02, rtol=0.0)
    assert (base - expected).abs().max() > 0.2  # the adapter moves the logits ten times the tolerance
    assert not any("lora" in name for name in saved_tensor_names(out))
    assert not (out / "adapter_config.json").exists()
    tokenizer, base_tokenizer = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Step 1: 12 + 30 = 42"
    assert tokenizer(text)["input_ids"] == base_tokenizer(text)["input_ids"]
    assert tokenizer.chat_template == base_tokenizer.chat_template
    record = json.loads((out / "export.json").read_text())
    assert record["adapter"] == str(folder.resolve()) and record["base"] == str(tiny_model_dir)
    assert record["dtype"] == "bfloat16"


def test_export_command_writes_the_model_and_its_config(tiny_adapter, tmp_path):
    folder, _ = tiny_adapter
    out = tmp_path / "merged"
    command = [sys.executable, "-m", "stat_pl", "export", "--adapter", str(folder), "--output_dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "llama"
    assert not any("lora" in name for name in saved_tensor_names(out))
    assert f"adapter: {folder}" in (out / "config.yaml").read_text()  # --config on it reruns the export


def test_an_earlier_export_is_replaced_only_with_overwrite_and_nothing_else_is(tiny_adapter, tmp_path):
    folder, _ = tiny_adapter
    out = export(str(folder), str(tmp_path / "merged"))
    with pytest.raises(UserError, match=re.escape(f"output_dir: {out} is not empty")) as error:
        export(str(folder), str(out))
    assert "overwrite: true" in str(error.value)
    (out / "stale.bin").write_bytes(b"from an earlier export")
    export(str(folder), str(out), overwrite=True)
    assert (out / "model.safetensors").is_file() and not (out / "stale.bin").exists()

    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds files \(todo.txt\) but no export.json"):
        export(str(folder), str(other), overwrite=True)
    assert (other / "todo.txt").read_text() == "mine"


def test_an_adapter_folder_without_its_config_is_named(tmp_path):
    with pytest.raises(
        MissingFileError, match=re.escape(f"adapter: {tmp_path / 'adapter_config.json'} does not exist")
    ):
        export(str(tmp_path), str(tmp_path / "merged"))


def test_a_missing_base_is_named_with_where_it_came_from(tiny_adapter, tmp_path):
    folder, _ = tiny_adapter
    config_path = folder / "adapter_config.json"
    gone = tmp_path / "moved-away"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "base_model_name_or_path": str(gone)}))
    with pytest.raises(MissingFileError, match=re.escape(f"{config_path}: base '{gone}': ")) as error:
        export(str(folder), str(tmp_path / "merged"))
    assert "set --base" in str(error.value)
    with pytest.raises(MissingFileError, match=re.escape(f"base '{gone}': ")):
        export(str(folder), str(tmp_path / "merged"), base=str(gone))


def test_smollm2_export_generates_the_adapters_greedy_tokens(smollm2_dir, tmp_path):
    """The real SmolLM2 with a random-B adapter: the exported bf16 model, read by plain transformers, greedily
    generates what PEFT generates on the same bf16 base (both computed in float32, so that only the export's
    rounding of W + BA to bf16 separates them)."""
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.bfloat16).float()
    peft_model = random_adapter(base, tmp_path / "adapter", b_std=0.1)
    out = export(str(tmp_path / "adapter"), str(tmp_path / "merged"))
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)

    tokenizer = AutoTokenizer.from_pretrained(out, padding_side="left")
    questions = ["What is 12 + 30?", "Name the capital of France.", "Write a haiku about rain.", "Solve x + 5 = 9."]
    prompts = tokenizer.apply_chat_template(
        [[{"role": "user", "content": q}] for q in questions],
        add_generation_prompt=True,
        padding=True,
        return_dict=True,
        return_tensors="pt",
    )

    def greedy(model: torch.nn.Module) -> list[list[int]]:
        with torch.no_grad():
            ids = model.generate(**prompts, max_new_tokens=8, do_sample=False)
        return ids[:, prompts["input_ids"].shape[1] :].tolist()

    expected = greedy(peft_model)
    assert greedy(merged) == expected
    with peft_model.disable_adapter():
        assert greedy(peft_model) != expected  # the adapter changes what is generated
