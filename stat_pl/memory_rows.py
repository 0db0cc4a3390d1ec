"""The rows of a run's memory estimate: the arithmetic of :mod:`stat_pl.memory_estimate` applied to what a run does.

A training run holds the base weights, the LoRA adapter and its optimizer states; its backward adds the
activations and logits of the largest micro-batch and the adapter's gradients; its generation (GRPO rollouts, a
SkillReprofiler round) adds a KV cache, or wakes vLLM in its share of the device. ``profile`` and ``evaluate``
hold one unquantised model and generate. Each row names the config key that sets it, so a refusal can.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stat_pl.memory_estimate import (
    CUDA_CONTEXT_BYTES,
    DTYPE_BYTES,
    FP32,
    GIB,
    Adapter,
    ModelShape,
    Row,
    activation_bytes,
    base_weight_bytes,
    kv_cache_bytes,
    logit_bytes,
    lora_parameter_count,
    lora_targets,
    optimizer_state_bytes_per_param,
)

STUDENT_KEY = "model.init_args.student"


@dataclass(frozen=True)
class Student:
    """The student's settings memory depends on (``compute_dtype`` resolved; LoRA from ``lora`` or the adapter)."""

    model: str
    quantization: str
    compute_dtype: str
    r: int
    target_modules: list[str]
    dropout: float
    gradient_checkpointing: bool
    lora_source: str  # "lora", or "init_adapter" (its saved rank and targets): the key LoRA's size comes from


@dataclass(frozen=True)
class MicroBatch:
    """The largest forward + backward of a training step."""

    label: str  # how it is made up, for the table
    tokens: int  # positions through the decoder
    logit_tokens: int  # positions through the LM head at once
    repeated_prompt_tokens: int  # GRPO's shared prompt: positions copied into each completion's cache
    key: str  # the config key that sets its size
    logit_key: str
    logit_copies: int  # float32 copies of the logits the loss makes (SFT_LOGIT_COPIES, GRPO_LOGIT_COPIES)


@dataclass(frozen=True)
class Generation:
    """The largest generation batch of a run and the engine that runs it."""

    label: str
    batch_size: int  # sequences decoded together (prompts x samples), as HFEngine counts them
    samples: int  # completions per prompt
    prompts: int | None  # prompts available per call (a rollout batch), None: unbounded
    tokens_per_sequence: int  # longest prompt + max_new_tokens
    key: str
    engine: str  # "hf", "vllm" or "vllm_server"
    vllm: Any  # VLLMSettings fields as given (a dict, the dataclass, or None)
    vllm_key: str
    colocated: bool  # LiveVLLM beside training: asleep between uses unless enable_sleep_mode is false


def weight_row(shape: ModelShape, student: Student, key: str) -> Row:
    billions = shape.parameter_count() / 1e9
    storage = student.quantization if student.quantization != "none" else student.compute_dtype
    size = base_weight_bytes(shape, student.quantization, student.compute_dtype)
    return Row(f"base weights ({storage}, {billions:.2f}B params)", size, key, "resident")


def training_rows(
    shape: ModelShape, student: Student, optimizer_class: str, micro: MicroBatch, other: MicroBatch
) -> tuple[list[Row], dict[str, str]]:
    """Rows of training and the refusal's hint; ``other`` is the micro-batch with gradient checkpointing flipped."""
    adapter_key = student.lora_source == "init_adapter"
    lora_key = f"{STUDENT_KEY}.init_adapter" if adapter_key else f"{STUDENT_KEY}.lora.r"
    targets_key = f"{STUDENT_KEY}.init_adapter" if adapter_key else f"{STUDENT_KEY}.lora.target_modules"
    targets = lora_targets(shape, student.target_modules, targets_key)
    adapter = Adapter(student.quantization != "none", student.compute_dtype, student.r, targets, student.dropout)
    params = lora_parameter_count(shape, student.r, targets)
    checkpointing = student.gradient_checkpointing
    activations = activation_bytes(shape, adapter, micro.tokens, checkpointing, micro.repeated_prompt_tokens)
    alternative = activation_bytes(shape, adapter, other.tokens, not checkpointing, other.repeated_prompt_tokens)
    optimizer = optimizer_class.rsplit(".", 1)[-1]
    states = params * optimizer_state_bytes_per_param(optimizer_class)
    logits = logit_bytes(shape, student.compute_dtype, micro.logit_tokens, micro.logit_copies)
    checkpoint_key = f"{STUDENT_KEY}.gradient_checkpointing"
    rows = [
        weight_row(shape, student, f"{STUDENT_KEY}.quantization"),
        Row(f"LoRA r={student.r}, {params / 1e6:.1f}M params (fp32)", params * FP32, lora_key, "resident"),
        Row(f"optimizer states ({optimizer})", states, "model.init_args.optimizer", "resident"),
        Row("LoRA gradients (fp32)", params * FP32, lora_key, "train"),
        Row(f"activations, {micro.label}{', checkpointed' if checkpointing else ''}", activations, micro.key, "train"),
        Row(
            f"  with{'out' if checkpointing else ''} gradient checkpointing", alternative, checkpoint_key, "not counted"
        ),
        Row(f"logits, {micro.logit_tokens} tokens x {shape.vocab_size}", logits, micro.logit_key, "train"),
        Row("CUDA context (allowance)", CUDA_CONTEXT_BYTES, "", "resident"),
    ]
    hint = f"set {checkpoint_key}: true (activations {alternative / GIB:.1f} GiB)"
    hints = {} if checkpointing else {micro.key: hint}
    return rows, hints


def generation_rows(
    shape: ModelShape, generation: Generation, student: Student, checkpoint_dtype: str, device_bytes: int | None
) -> tuple[list[Row], str | None]:
    """Rows of the generation batch, and vLLM's refusal when its share cannot hold its weights and one sequence."""
    if generation.engine == "vllm_server":  # a separate `vllm serve` on its own GPUs: nothing on the trainer's
        return [Row(f"{generation.label}: on the vLLM server", 0, generation.key, "not counted")], None
    if generation.engine == "hf":
        prompts = max(1, generation.batch_size // generation.samples)
        if generation.prompts is not None:
            prompts = min(prompts, generation.prompts)
        sequences, tokens = prompts * generation.samples, generation.tokens_per_sequence
        # A quantised student's hidden states, and so its cache, are float32 (prepare_model_for_kbit_training).
        per_value = FP32 if student.quantization != "none" else DTYPE_BYTES[student.compute_dtype]
        size = kv_cache_bytes(shape, sequences * tokens, per_value)
        label = f"KV cache, {generation.label}: {sequences} x {tokens} tokens"
        return [Row(label, size, generation.key, "generate")], None
    from stat_pl.engines.vllm import VLLMSettings

    settings = generation.vllm if isinstance(generation.vllm, VLLMSettings) else VLLMSettings(**(generation.vllm or {}))
    key, share = f"{generation.vllm_key}.gpu_memory_utilization", settings.gpu_memory_utilization
    sleeps = generation.colocated if settings.enable_sleep_mode is None else settings.enable_sleep_mode
    dtype = checkpoint_dtype if settings.dtype == "auto" else settings.dtype
    longest = settings.max_model_len or generation.tokens_per_sequence
    inside = shape.parameter_count() * DTYPE_BYTES[dtype] + kv_cache_bytes(shape, longest, DTYPE_BYTES[dtype])
    size = None if device_bytes is None else int(share * device_bytes)
    rows = [
        Row(f"vLLM share, {generation.label} ({share:g} x device)", size, key, "generate" if sleeps else "resident"),
        Row(f"  inside it: weights ({dtype}) + one {longest}-token sequence", inside, key, "not counted"),
    ]
    if size is None or inside <= size:
        return rows, None
    return rows, (
        f"{key}={share:g} gives vLLM {size / GIB:.1f} GiB, less than its {dtype} weights and the cache of one "
        f"{longest}-token sequence ({inside / GIB:.1f} GiB); raise {key}, or use a smaller model"
    )
