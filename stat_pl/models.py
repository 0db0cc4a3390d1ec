"""Loading the student (or any causal LM): Hub name, local folder or GGUF file; NF4/int8; PEFT LoRA.

``offline:smollm2-135m-instruct`` names the real pretrained model stat-pl can provide without the
Hub (see :mod:`stat_pl.offline_models`); every other string is a Hub name or a local path.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from stat_pl.hardware import remembered
from stat_pl.lora_dropout import use_lora_dropout
from stat_pl.offline_models import resolve_model_path
from stat_pl.small_batch_linear import fastest_form, use_small_batch_linear

logger = logging.getLogger(__name__)
Quantization = Literal["none", "nf4", "int8"]
#: The keyword (and output field) of a KV cache: transformers 5.2x renamed ``past_key_values`` to ``cache``
#: (the old name warns, and goes in 5.40); older releases know only the old one.
CACHE_KWARG = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"
#: The paper's LoRA targets (DESIGN.md section 4): every attention and MLP projection.
PAPER_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoRAConfig:
    """PEFT LoRA settings; the defaults are the paper's (rank 16, alpha 32, dropout 0.05)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(PAPER_TARGET_MODULES))


def torch_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``, with an error that lists the accepted names."""
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(dtypes)}")
    return dtypes[name]


def _pretrained_args(name_or_path: str) -> tuple[str, dict]:
    """Split a GGUF file path into (folder, {gguf_file: name}); pass other names through."""
    path = Path(resolve_model_path(name_or_path))
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        return str(path.parent), {"gguf_file": path.name}
    return str(path), {}


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer with a pad token (the EOS token when the model has none)."""
    source, extra = _pretrained_args(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _quantization_config(quantization: Quantization, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
    if quantization == "none":
        return None
    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_quant_storage=compute_dtype,
        )
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"unknown quantization {quantization!r}; use 'none', 'nf4' or 'int8'")


def load_causal_lm(
    name_or_path: str,
    quantization: Quantization = "none",
    compute_dtype: str = "bfloat16",
    lora: LoRAConfig | None = None,
    gradient_checkpointing: bool = False,
    device: str | torch.device | None = None,
    init_adapter: str | None = None,
) -> torch.nn.Module:
    """Load a causal LM, optionally quantised with bitsandbytes (QLoRA: ``nf4`` + ``lora``) and wrapped in LoRA.

    ``init_adapter`` starts from a saved PEFT adapter (e.g. the SFT run's, for GRPO after SFT), trainable;
    its own ``adapter_config.json`` then fixes rank and targets, and ``lora`` is not used.

    Unquantised weights load in ``compute_dtype`` on CUDA and in float32 on CPU (CPU training uses
    bf16 autocast instead, which keeps fp32 master weights). Quantised weights are placed on
    ``device`` (default: the current CUDA device, else CPU) because bitsandbytes quantises on load.

    ``init_adapter``, a folder written by PEFT's ``save_pretrained`` for this base model, starts
    training from that adapter instead of a new one (the paper's continual setting, STAT-ConSel /
    ConSyn: training goes on from the STAT model). It is loaded trainable, with the LoRA settings saved
    beside it (rank, alpha, targets); a ``lora`` that differs from them is ignored with a warning.

    The adapter's dropout modules are :class:`~stat_pl.lora_dropout.LoRADropout`: PEFT's dropout
    distribution with a mask that costs less than half as much to draw on a CPU.
    """
    source, extra = _pretrained_args(name_or_path)
    dtype = torch_dtype(compute_dtype)
    quant = _quantization_config(quantization, dtype)
    on_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    kwargs: dict = {"dtype": dtype if on_cuda else torch.float32, **extra}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device or (torch.cuda.current_device() if on_cuda else "cpu")}
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if quant is not None and not on_cuda:
        _disable_cpu_inference_packing(model)
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if init_adapter is not None:
        return use_lora_dropout(load_trainable_adapter(model, init_adapter, lora))
    if lora is not None:
        model = use_lora_dropout(add_lora(model, lora))
    return model


def load_trainable_adapter(model: torch.nn.Module, adapter_dir: str, lora: LoRAConfig | None) -> torch.nn.Module:
    """``model`` wrapped in the saved PEFT adapter at ``adapter_dir``, its weights trainable."""
    from peft import PeftConfig, PeftModel

    path = Path(adapter_dir).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"init_adapter: {path} has no adapter_config.json; give the folder a PEFT "
            "save_pretrained wrote (e.g. <run>/adapter of `python -m stat_pl fit`)"
        )
    saved = PeftConfig.from_pretrained(str(path))
    if lora is not None and (lora.r, lora.alpha, sorted(lora.target_modules)) != (
        saved.r,
        saved.lora_alpha,
        sorted(saved.target_modules),
    ):
        logger.warning(
            "init_adapter %s has r=%s, alpha=%s, targets=%s; those are used, not the configured lora %s",
            path,
            saved.r,
            saved.lora_alpha,
            sorted(saved.target_modules),
            lora,
        )
    return PeftModel.from_pretrained(model, str(path), is_trainable=True)


def _disable_cpu_inference_packing(model: torch.nn.Module) -> None:
    """Keep bitsandbytes' 4-bit CPU layers in their trainable layout.

    bitsandbytes 0.50 repacks a ``Linear4bit`` weight for its AVX512-BF16 inference kernel the first time
    the layer runs in eval mode without gradients (our engines do, between epochs) and never packs it
    back; the packed kernel has no autograd formula, so afterwards no gradient flows through the frozen
    base and every LoRA layer but the last ones silently stops learning (measured: layer-0 LoRA-B
    gradient 0.0 after one ``generate``). Turning the repacking off keeps training correct.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


class MergedCopy:
    """A plain model (no PEFT wrapper, no 4-bit layers) with the adapter merged in: what CPU engines sample from.

    On CPU, generating through the live QLoRA model pays, at every decoding step and in every adapted
    projection, bitsandbytes' dequantisation of the 4-bit weight and PEFT's unmerged LoRA path (dropout,
    two rank-r matmuls, an add). This copy holds each adapted weight as ``W + scaling * B @ A``, where ``W``
    is the frozen base weight (dequantised once from NF4, or the live float weight itself), and every other
    weight as a plain tensor. :meth:`refresh` recomputes the merged weights from the adapter now (one rank-r
    product per projection, cheap next to one rollout batch), so after it the copy computes what the trained
    model computes, up to rounding. DoRA and ``fan_in_fan_out`` adapters are refused (their merge differs).
    Where this CPU multiplies a few rows faster another way than ``F.linear`` (``weight @ x.T``, or oneDNN on a
    reordered copy of the weight, remade after each refresh), the copy's linear layers do
    (:mod:`stat_pl.small_batch_linear`).
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
        head = self.model.get_output_embeddings()
        probe = max((m.weight for m in self.model.modules() if type(m) is torch.nn.Linear and m is not head), key=len)
        # for decoding's few-row matmuls, measured on this CPU (once: the same kernels in every run here)
        form = remembered("small_batch_form", lambda: fastest_form(probe), *probe.shape, probe.dtype)
        if form != "linear":
            use_small_batch_linear(self.model, form)

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


def add_lora(model: torch.nn.Module, lora: LoRAConfig) -> torch.nn.Module:
    """Wrap ``model`` in a PEFT LoRA adapter; only the adapter weights stay trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
