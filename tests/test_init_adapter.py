"""Continual training (paper: STAT-ConSel / ConSyn) starts from a saved adapter: ``init_adapter``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from stat_pl.models import LoRAConfig, StudentConfig, load_causal_lm
from stat_pl.modules.sft import SFTModule

SMALL_LORA = LoRAConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])


@pytest.fixture(scope="module")
def saved_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """An adapter with non-zero B matrices (a fresh one is the identity), saved as PEFT writes it."""
    model = load_causal_lm(str(tiny_model_dir), lora=SMALL_LORA)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    path = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(path)
    return path, {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_load_causal_lm_continues_from_the_saved_adapter_and_trains_it(tiny_model_dir, saved_adapter):
    path, weights = saved_adapter
    model = load_causal_lm(str(tiny_model_dir), init_adapter=str(path))

    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[n], w) for n, w in weights.items())
    assert all(p.requires_grad for p in loaded.values())
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    assert model.peft_config["default"].r == 4  # the adapter's own settings
    ids = torch.tensor([[1, 5, 9, 12]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(loaded[n].grad is not None and loaded[n].grad.abs().sum() > 0 for n in loaded if "lora_A" in n)


def test_sft_module_init_adapter_starts_where_the_adapter_left_off(tiny_model_dir, saved_adapter, caplog):
    path, _ = saved_adapter
    ids = torch.tensor([[1, 5, 9, 12]])
    fresh = SFTModule(StudentConfig(str(tiny_model_dir), quantization="none"))
    fresh.configure_model()
    continued = SFTModule(StudentConfig(str(tiny_model_dir), quantization="none", init_adapter=str(path)))
    with caplog.at_level(logging.WARNING, logger="stat_pl.models"):
        continued.configure_model()
    assert "init_adapter" not in caplog.text  # no lora given: nothing to disagree with
    reference = load_causal_lm(str(tiny_model_dir), init_adapter=str(path))

    with torch.no_grad():
        assert torch.allclose(continued(ids, torch.ones_like(ids)), reference(input_ids=ids).logits)
        assert not torch.allclose(fresh(ids, torch.ones_like(ids)), reference(input_ids=ids).logits)
    with caplog.at_level(logging.WARNING, logger="stat_pl.models"):
        SFTModule(
            StudentConfig(str(tiny_model_dir), quantization="none", init_adapter=str(path), lora=LoRAConfig(r=8))
        ).configure_model()
    assert "r=4" in caplog.text and "those are used" in caplog.text


def test_a_folder_without_an_adapter_is_named(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"init_adapter: {tmp_path} has no adapter_config.json"):
        load_causal_lm(str(tiny_model_dir), init_adapter=str(tmp_path))
