"""Loading causal LMs: the student (a :class:`StudentConfig`) and any other model, with NF4/int8 and PEFT LoRA.

``offline:smollm2-135m-instruct`` names the real pretrained model stat-pl can provide without the Hub
(see :mod:`stat_pl.offline_models`); every other string is a Hub name, a local folder or a GGUF file.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaForCausalLM

from stat_pl.errors import MissingFileError, UserError
from stat_pl.tokenizer import pretrained_source

logger = logging.getLogger(__name__)
Quantization = Literal["none", "nf4", "int8"]
ComputeDtype = Literal["auto", "bfloat16", "float32", "float16"]
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


@dataclass
class StudentConfig:
    """The student and how its adapter trains: the model settings every training module takes, defaults in one place.

    In YAML this is ``model.init_args.student`` of :class:`~stat_pl.modules.sft.SFTModule` and
    :class:`~stat_pl.modules.grpo.GRPOModule`.

    Args:
        model: Hub name, local folder, GGUF file or ``offline:smollm2-135m-instruct``.
        quantization: ``"nf4"`` for QLoRA (the paper), ``"int8"``, or ``"none"``.
        compute_dtype: bitsandbytes' compute dtype and the generation copy's dtype. ``"auto"`` is the dtype of the
            trainer's precision: ``python -m stat_pl fit`` resolves both from the hardware and writes them into the
            run's ``config.yaml`` (:mod:`stat_pl.precision`).
        lora: adapter settings; default the paper's (``LoRAConfig()``), or with ``init_adapter`` that adapter's own.
        gradient_checkpointing: trade compute for memory on long sequences.
        init_adapter: a saved PEFT adapter folder to continue training from (continual STAT, GRPO after SFT).
        cpu_kernels: ``"auto"``: on a CPU, :func:`stat_pl.cpu.accelerate` makes generation and training faster
            (it logs what it turned on); ``"off"``: plain transformers and PEFT. Nothing changes on a GPU.
    """

    model: str
    quantization: Quantization = "nf4"
    compute_dtype: ComputeDtype = "auto"
    lora: LoRAConfig | None = None
    gradient_checkpointing: bool = False
    init_adapter: str | None = None
    cpu_kernels: Literal["auto", "off"] = "auto"


# Modules keep these in their hyperparameters, which Lightning saves in every checkpoint; torch.load's default
# weights_only unpickler accepts only allow-listed classes, so resuming would fail without this.
torch.serialization.add_safe_globals([StudentConfig, LoRAConfig])


def load_student(
    student: StudentConfig, compute_dtype: str, device: torch.device, sharded: bool = False
) -> torch.nn.Module:
    """The student's causal LM with its trainable adapter, its weights loaded on ``device``; ``sharded``: for FSDP
    (see :func:`load_causal_lm`)."""
    return load_causal_lm(
        student.model,
        quantization=student.quantization,
        compute_dtype=compute_dtype,
        lora=student.lora if student.init_adapter else (student.lora or LoRAConfig()),  # an adapter has its own
        gradient_checkpointing=student.gradient_checkpointing,
        device=device,
        init_adapter=student.init_adapter,
        sharded=sharded,
    )


def default_device() -> torch.device:
    """Where a model goes when no trainer or config says: the current CUDA device if there is one, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def torch_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``, with an error that lists the accepted names."""
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise UserError(f"unknown dtype {name!r}; use one of {sorted(dtypes)}")
    return dtypes[name]


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
    raise UserError(f"unknown quantization {quantization!r}; use 'none', 'nf4' or 'int8'")


def load_causal_lm(
    name_or_path: str,
    quantization: Quantization = "none",
    compute_dtype: str = "bfloat16",
    lora: LoRAConfig | None = None,
    gradient_checkpointing: bool = False,
    device: str | torch.device | None = None,
    init_adapter: str | None = None,
    sharded: bool = False,
) -> torch.nn.Module:
    """Load a causal LM, optionally quantised with bitsandbytes (QLoRA: ``nf4`` + ``lora``) and wrapped in LoRA.

    ``init_adapter`` starts from a saved PEFT adapter (e.g. the SFT run's, for GRPO after SFT), trainable;
    its own ``adapter_config.json`` then fixes rank and targets, and ``lora`` is not used.

    Weights load straight onto ``device`` (default :func:`default_device`: the current CUDA device, else the CPU),
    never through a full host copy on a GPU: unquantised in ``compute_dtype`` on CUDA and in float32 on a CPU (CPU
    training uses bf16 autocast instead, which keeps fp32 master weights); quantised ones are quantised by
    bitsandbytes as they load.

    ``init_adapter``, a folder written by PEFT's ``save_pretrained`` for this base model, starts
    training from that adapter instead of a new one (the paper's continual setting, STAT-ConSel /
    ConSyn: training goes on from the STAT model). It is loaded trainable, with the LoRA settings saved
    beside it (rank, alpha, targets); a ``lora`` that differs from them is ignored with a warning.

    ``sharded``: for FSDP (:mod:`stat_pl.fsdp`), whose flat parameters hold one dtype per wrapped unit. Every frozen
    weight loads in ``compute_dtype`` on any device (NF4 stored in it too), PEFT's ``prepare_model_for_kbit_training``
    (a float32 upcast of norms and embeddings, and transformers' gradient checkpointing) is skipped, and
    ``gradient_checkpointing`` is left to the strategy; the LoRA weights stay float32, each in a unit of its own.
    """
    source, extra = pretrained_source(name_or_path)
    dtype = torch_dtype(compute_dtype)
    quant = _quantization_config(quantization, dtype)
    target = default_device() if device is None else torch.device(device)
    on_cuda = target.type == "cuda"
    kwargs: dict = {"dtype": dtype if on_cuda or sharded else torch.float32, **extra}
    if quant is not None:
        kwargs["quantization_config"] = quant
    if quant is not None or target.type != "cpu":  # on a CPU plain weights load as before, without a device map
        kwargs["device_map"] = {"": str(target)}
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if quant is not None and not on_cuda:
        _disable_cpu_inference_packing(model)
    if sharded:
        model.requires_grad_(False)
        # The strategy recomputes each decoder layer in the backward; a training forward's KV cache would be written
        # twice (transformers turns it off under its own checkpointing only). Decoding passes use_cache itself.
        model.config.use_cache = not gradient_checkpointing
    elif quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if init_adapter is not None:
        return load_trainable_adapter(model, init_adapter, lora)
    if lora is not None:
        model = add_lora(model, lora)
    return model


def load_trainable_adapter(model: torch.nn.Module, adapter_dir: str, lora: LoRAConfig | None) -> torch.nn.Module:
    """``model`` wrapped in the saved PEFT adapter at ``adapter_dir``, its weights trainable."""
    from peft import PeftConfig, PeftModel

    path = Path(adapter_dir).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise MissingFileError(
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
