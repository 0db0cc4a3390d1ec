"""The generation copy: the student with its adapter merged into plain float weights, for sampling on a CPU.

On a CPU, decoding through the live QLoRA model pays at every step, in every adapted projection,
bitsandbytes' dequantisation of the 4-bit weight and PEFT's unmerged LoRA path; bench/README.md
("CPU routes") has what the copy saves on the shipped configs.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM


class MergedCopy:
    """A plain model (no PEFT wrapper, no 4-bit layers) with the adapter merged in: what CPU engines sample from.

    On CPU, generating through the live QLoRA model pays, at every decoding step and in every adapted
    projection, bitsandbytes' dequantisation of the 4-bit weight and PEFT's unmerged LoRA path (dropout,
    two rank-r matmuls, an add). This copy holds each adapted weight as ``W + scaling * B @ A``, where ``W``
    is the frozen base weight (dequantised once from NF4, or the live float weight itself), and every other
    weight as a plain tensor. :meth:`refresh` recomputes the merged weights from the adapter now (one rank-r
    product per projection, cheap next to one rollout batch), so after it the copy computes what the trained
    model computes, up to rounding. DoRA and ``fan_in_fan_out`` adapters are refused (their merge differs).
    """

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> None:
        from peft.tuners.lora import LoraLayer

        base = model.get_base_model()
        config = base.config.to_dict()
        config.pop("quantization_config", None)
        self.adapter = model.active_adapter
        self.dtype = dtype
        self.model = AutoModelForCausalLM.from_config(type(base.config).from_dict(config), dtype=dtype)
        lora_layers = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
        for name, layer in lora_layers.items():
            if layer.use_dora.get(self.adapter) or getattr(layer, "fan_in_fan_out", False):
                raise ValueError(f"MergedCopy: {name} is a DoRA or fan_in_fan_out LoRA layer; only plain LoRA merges")
        # the frozen base weight W of each adapted projection, by its name; refresh() writes W + s * B @ A
        self._frozen = {name: _float_weight(layer.base_layer).to(dtype) for name, layer in lora_layers.items()}
        state = {f"{name}.weight": weight for name, weight in self._frozen.items()}
        for name, module in base.named_modules():
            if "lora_" in name or name in self._frozen:  # the adapter itself, merged in refresh()
                continue
            plain = name.removesuffix(".base_layer")  # where the twin, which has no PEFT wrappers, keeps it
            for param_name, param in module.named_parameters(recurse=False):
                if not (plain in self._frozen and param_name == "weight"):
                    state[f"{plain}.{param_name}" if plain else param_name] = (
                        _float_weight(module) if param_name == "weight" else param
                    )
        missing = set(self.model.state_dict()) - set(state) - {"lm_head.weight"}
        if missing:
            raise RuntimeError(f"MergedCopy: no weights for {sorted(missing)[:5]}")
        self.model.load_state_dict({k: v.detach().to(dtype) for k, v in state.items()}, strict=False)
        self.model.tie_weights()
        self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def refresh(self, model: torch.nn.Module) -> torch.nn.Module:
        """Merge the adapter weights ``model`` holds now into the copy; returns the copy's model."""
        lora_layers = {name: m for name, m in model.get_base_model().named_modules() if name in self._frozen}
        for name, layer in lora_layers.items():
            a = layer.lora_A[self.adapter].weight  # [r, in]
            b = layer.lora_B[self.adapter].weight  # [out, r]
            delta = (b.float() @ a.float()) * layer.scaling[self.adapter]  # [out, in]
            self.model.get_submodule(name).weight.copy_(self._frozen[name] + delta.to(self.dtype))
        return self.model


def _float_weight(module: torch.nn.Module) -> torch.Tensor:
    """A linear (or any) layer's weight as a float tensor: bitsandbytes 4-bit weights are dequantised."""
    import bitsandbytes as bnb

    if isinstance(module, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
    return module.weight
