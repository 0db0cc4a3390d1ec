"""A LoRA adapter that changes a model without training: PEFT's LoRA with random B weights, saved to a folder."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel

from stat_pl.models import LoRAConfig, add_lora


def random_adapter(model: torch.nn.Module, out: Path, b_std: float, seed: int = 0) -> PeftModel:
    """``model`` wrapped in LoRA on the paper's targets (r 8), every ``lora_B`` drawn from N(0, b_std²) (PEFT starts
    B at zero, which would make the adapter a no-op); saved to ``out`` and returned in eval mode."""
    torch.manual_seed(seed)  # PEFT draws A from the global generator
    peft_model = add_lora(model, LoRAConfig(r=8, alpha=16))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * b_std)
    peft_model.save_pretrained(str(out))
    return peft_model.eval()
