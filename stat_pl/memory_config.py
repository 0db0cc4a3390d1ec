"""A run's config read into a :class:`~stat_pl.memory_estimate.MemoryEstimate`, without loading any weights.

A ``fit`` config is read as LightningCLI builds it: ``model`` / ``data`` ``init_args`` over the defaults of the
classes their ``class_path`` names (the start-up check passes the parsed config, defaults already in); a
``profile`` or ``evaluate`` config over its function's defaults. The model's sizes come from its transformers
config (:func:`read_model_config`): a Hub name, a local folder, a GGUF file, ``offline:smollm2-135m-instruct``, or
a ``config.json`` given instead (``--model_config``) where the model's own cannot be read (gated, offline).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
from pathlib import Path
from typing import Any

from stat_pl.errors import UserError
from stat_pl.memory_estimate import (
    CUDA_CONTEXT_BYTES,
    DTYPE_BYTES,
    GRPO_LOGIT_COPIES,
    SFT_LOGIT_COPIES,
    MemoryEstimate,
    ModelShape,
    Row,
)
from stat_pl.memory_rows import (
    STUDENT_KEY,
    Generation,
    MicroBatch,
    Student,
    generation_rows,
    training_rows,
    weight_row,
)

#: profile and evaluate cap no prompt length; MATH's questions in a chat template stay well under this many tokens.
ASSUMED_PROMPT_TOKENS = 512


def read_model_config(model: str, model_config: str | None, key: str):
    """The transformers config of ``model`` (Hub name, folder, GGUF file, ``offline:...``), or of ``model_config``."""
    from transformers import AutoConfig

    from stat_pl.tokenizer import pretrained_source

    try:
        if model_config is not None:
            return AutoConfig.from_pretrained(str(Path(model_config).expanduser()))
        source, extra = pretrained_source(model)
        return AutoConfig.from_pretrained(source, **extra)
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(
            f"{key}: cannot read the config of {model_config or model!r} ({str(e).splitlines()[0]}); pass "
            "--model_config with its config.json or folder"
        ) from e


def checkpoint_dtype(config) -> str:
    """The dtype the checkpoint's weights are stored in (vLLM's ``dtype: auto``); bfloat16 when the config is silent."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(dtype).removeprefix("torch.") if dtype is not None else "bfloat16"
    return name if name in DTYPE_BYTES else "bfloat16"


def defaults_of(target: str) -> dict[str, Any]:
    """Argument defaults of a class (with its bases', for arguments passed on through ``**kwargs``) or a function."""
    module, _, name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(
            f"class_path {target!r}: cannot import it ({e}); give the full path, e.g. torch.optim.AdamW"
        ) from e
    functions = (
        [k.__dict__["__init__"] for k in reversed(obj.__mro__) if "__init__" in k.__dict__]
        if inspect.isclass(obj)
        else [obj]
    )
    defaults: dict[str, Any] = {}
    for function in functions:
        for parameter in inspect.signature(function).parameters.values():
            if parameter.default is not inspect.Parameter.empty:
                defaults[parameter.name] = parameter.default
    return defaults


def init_args(node: dict) -> dict[str, Any]:
    """``init_args`` of a ``class_path`` node over that class's defaults."""
    return {**defaults_of(node["class_path"]), **(node.get("init_args") or {})}


def _fields(cls, given: Any) -> dict[str, Any]:
    """A dataclass's defaults overlaid with ``given`` (a dict, a dataclass or None)."""
    if dataclasses.is_dataclass(given):
        given = dataclasses.asdict(given)
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    defaults |= {
        f.name: f.default_factory() for f in dataclasses.fields(cls) if f.default_factory is not dataclasses.MISSING
    }
    return {**defaults, **(given or {})}


def student_settings(given: Any, compute_dtype: str) -> Student:
    """The student's fields that memory depends on; with ``init_adapter`` its saved rank, targets and dropout (the
    paper's LoRA where the folder is not there yet, as for a GRPO config estimated before its SFT run)."""
    from stat_pl.models import LoRAConfig, StudentConfig

    student = _fields(StudentConfig, given)
    lora, source = _fields(LoRAConfig, student["lora"]), "lora"
    if student["init_adapter"]:
        saved = Path(student["init_adapter"]).expanduser() / "adapter_config.json"
        lora, source = _fields(LoRAConfig, None), "init_adapter"
        if saved.is_file():
            config = json.loads(saved.read_text())
            lora = {
                "r": config["r"],
                "dropout": config.get("lora_dropout", 0.0),
                "target_modules": [config["target_modules"]]
                if isinstance(config["target_modules"], str)  # PEFT also takes one name or a regex
                else config["target_modules"],
            }
    return Student(
        model=student["model"],
        quantization=student["quantization"],
        compute_dtype=student["compute_dtype"] if student["compute_dtype"] != "auto" else compute_dtype,
        r=lora["r"],
        target_modules=list(lora["target_modules"]),
        dropout=lora["dropout"],
        gradient_checkpointing=bool(student["gradient_checkpointing"]),
        lora_source=source,
    )


def resolved_engine(engine: str) -> str:
    """``auto`` as it resolves on a CUDA machine with this environment: vLLM where it is installed, else HF."""
    from stat_pl.engines.choice import vllm_installed

    return engine if engine != "auto" else ("vllm" if vllm_installed() else "hf")


def _optimizer_class(optimizer: Any) -> str:
    if isinstance(optimizer, dict):
        return str(optimizer.get("class_path", "torch.optim.AdamW"))
    return getattr(optimizer, "__name__", str(optimizer))  # a default such as paper_adamw: torch's AdamW


def _reprofiler_generation(trainer: dict, prompt_tokens: int) -> Generation | None:
    """The SkillReprofiler callback's generation, if the trainer has one (its prompts bounded by the data's)."""
    for i, callback in enumerate(trainer.get("callbacks") or []):
        if isinstance(callback, dict) and str(callback.get("class_path", "")).endswith("SkillReprofiler"):
            args, key = init_args(callback), f"trainer.callbacks[{i}].init_args"
            return Generation(
                label="SkillReprofiler",
                batch_size=args["batch_size"],
                samples=_samples_per_question(args.get("detector")),
                prompts=None,
                tokens_per_sequence=prompt_tokens + args["max_new_tokens"],
                key=f"{key}.batch_size",
                engine=resolved_engine(args["engine"]),
                vllm=args["vllm"],
                vllm_key=f"{key}.vllm",
                colocated=True,
            )
    return None


def _samples_per_question(detector: Any) -> int:
    return init_args(detector).get("samples_per_question", 1) if isinstance(detector, dict) else 1


def _rollout_generation(model: dict, data: dict) -> Generation:
    return Generation(
        label="rollouts",
        batch_size=model["generation_batch_size"],
        samples=model["num_generations"],
        prompts=data["batch_size"],
        tokens_per_sequence=data["max_prompt_length"] + model["max_new_tokens"],
        key="model.init_args.generation_batch_size",
        engine=resolved_engine(model["engine"]),
        vllm=model["vllm"],
        vllm_key="model.init_args.vllm",
        colocated=True,
    )


def fit_estimate(config: dict, model_config: str | None, device_bytes: int | None) -> MemoryEstimate:
    """The estimate of a ``fit`` config (SFTModule or GRPOModule) on one device."""
    from stat_pl.precision import compute_dtype_for

    model, data, trainer = init_args(config["model"]), init_args(config["data"]), config.get("trainer") or {}
    precision = trainer.get("precision", "auto")
    student = student_settings(model["student"], compute_dtype_for(precision) if precision != "auto" else "bfloat16")
    hf_config = read_model_config(student.model, model_config, f"{STUDENT_KEY}.model")
    shape = ModelShape.from_config(hf_config)
    grpo = "num_generations" in model
    checkpointing = student.gradient_checkpointing
    if grpo:
        micro, other = (_grpo_micro_batch(model, data, c) for c in (checkpointing, not checkpointing))
        generations = [_reprofiler_generation(trainer, data["max_prompt_length"]), _rollout_generation(model, data)]
    else:
        micro = other = _sft_micro_batch(data)
        generations = [_reprofiler_generation(trainer, data["max_length"])]
    rows, hints = training_rows(shape, student, _optimizer_class(model.get("optimizer")), micro, other)
    dtype = checkpoint_dtype(hf_config)
    generated = [generation_rows(shape, g, student, dtype, device_bytes) for g in generations if g is not None]
    if generated:  # generations take turns: the largest one counts
        rows += max(
            (r for r, _ in generated), key=lambda r: sum(row.bytes or 0 for row in r if row.phase != "not counted")
        )
    problems = tuple(problem for _, problem in generated if problem)
    return MemoryEstimate(f"fit ({'GRPO' if grpo else 'SFT'}, {student.model})", tuple(rows), hints, problems)


def _sft_micro_batch(data: dict) -> MicroBatch:
    """SFT's micro-batch: ``batch_size`` examples of up to ``max_length`` tokens, logits at every position."""
    tokens, key = data["batch_size"] * data["max_length"], "data.init_args.batch_size"
    return MicroBatch(
        f"{data['batch_size']} x {data['max_length']} tokens", tokens, tokens, 0, key, key, SFT_LOGIT_COPIES
    )


def _grpo_micro_batch(model: dict, data: dict, checkpointing: bool) -> MicroBatch:
    """GRPO's largest backward: ``micro_batch_groups`` groups of G completions, each prompt once when shared."""
    groups = model["micro_batch_groups"] or model["mini_batch_groups"] or data["batch_size"]
    size, prompt, new = model["num_generations"], data["max_prompt_length"], model["max_new_tokens"]
    rows, shared = groups * size, model["shared_prompt_forward"] and not checkpointing
    tokens = groups * prompt + rows * new if shared else rows * (prompt + new)
    chunk = model["logit_chunk_tokens"]
    logit_tokens = rows * min(new, chunk) if chunk else rows * new
    logit_key = "model.init_args.logit_chunk_tokens" if chunk else "model.init_args.micro_batch_groups"
    label = f"{groups} groups x {size} x ({prompt} + {new}) tokens"
    key = "model.init_args.micro_batch_groups"
    repeated = rows * prompt if shared else 0
    return MicroBatch(label, tokens, logit_tokens, repeated, key, logit_key, GRPO_LOGIT_COPIES)


#: The offline stages checked at start-up: name -> (their function, the argument naming the model).
STAGES = {
    "profile": ("stat_pl.profiling.profile_stage.profile", "student"),
    "evaluate": ("stat_pl.evaluation.evaluate.evaluate", "model"),
}


def stage_estimate(stage: str, config: dict, model_config: str | None, device_bytes: int | None) -> MemoryEstimate:
    """The estimate of a ``profile`` or ``evaluate`` config: one unquantised model generating (HF), or vLLM."""
    function, model_key = STAGES[stage]
    args = {**defaults_of(function), **config}
    hf_config = read_model_config(args[model_key], model_config, model_key)
    shape = ModelShape.from_config(hf_config)
    student = Student(args[model_key], "none", "bfloat16", 0, [], 0.0, False, "lora")  # bf16 on CUDA, adapter merged
    generation = Generation(
        label=stage,
        batch_size=args["batch_size"],
        samples=_samples_per_question(args.get("detector")),
        prompts=None,
        tokens_per_sequence=ASSUMED_PROMPT_TOKENS + args["max_new_tokens"],
        key="batch_size",
        engine=resolved_engine(args["engine"]),
        vllm=args.get("vllm") or {"gpu_memory_utilization": 0.9},  # engine_factory's default: nothing else shares it
        vllm_key="vllm",
        colocated=False,
    )
    rows, problem = generation_rows(shape, generation, student, checkpoint_dtype(hf_config), device_bytes)
    if generation.engine == "hf":
        rows = [weight_row(shape, student, model_key), *rows]
    rows.append(Row("CUDA context (allowance)", CUDA_CONTEXT_BYTES, "", "resident"))
    return MemoryEstimate(f"{stage} ({args[model_key]})", tuple(rows), problems=(problem,) if problem else ())


def estimate_config(stage: str, config: dict, model_config: str | None, device_bytes: int | None) -> MemoryEstimate:
    if stage == "fit":
        return fit_estimate(config, model_config, device_bytes)
    return stage_estimate(stage, config, model_config, device_bytes)
