"""``python -m stat_pl export --adapter runs/sft/adapter --output_dir runs/sft/merged``: a servable model.

A fit run saves only its LoRA adapter (``<run>/adapter``). This stage merges it into its base model and saves a
plain Hugging Face folder (safetensors weights, config, tokenizer, generation config) that ``vllm serve``,
``transformers`` and every other Hugging Face loader read without PEFT or stat-pl. ``export.json`` beside the
weights records which adapter and base made it, and the command line saves its config to
``<output_dir>/config.yaml`` (:func:`stat_pl.cli.save_stage_config`).
"""

from __future__ import annotations

import json
import shutil
from importlib.metadata import version
from pathlib import Path
from typing import Literal

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from stat_pl.errors import MissingFileError, UserError
from stat_pl.models import torch_dtype
from stat_pl.tokenizer import pretrained_source

ExportDtype = Literal["bfloat16", "float16", "float32"]
#: What this stage writes beside the model: the adapter and base that made it.
EXPORT_RECORD = "export.json"
#: The stage's parsed config, which ``python -m stat_pl export`` writes into the folder before the export runs.
STAGE_CONFIG = "config.yaml"


def export(
    adapter: str,
    output_dir: str,
    base: str | None = None,
    dtype: ExportDtype = "bfloat16",
    overwrite: bool = False,
) -> Path:
    """Merge a (Q)LoRA adapter into its base model and save a plain Hugging Face model to ``output_dir``.

    The base is loaded unquantised in ``dtype`` on the CPU (merging is one small matrix product per adapted layer),
    the adapter applied with PEFT and merged (``merge_and_unload``), and the result saved with ``save_pretrained``.
    After QLoRA training (the paper's recipe: NF4 base, bf16 compute) the merged weights are ``W_bf16 + BA``: the
    adapter lands on the bf16 base, not on the NF4-rounded ``W`` it was trained against, which is what serving a
    QLoRA model in bf16 means; the outputs differ from the NF4 student's by that rounding.

    Args:
        adapter: a folder PEFT's ``save_pretrained`` wrote (``<run>/adapter`` of ``python -m stat_pl fit``).
        output_dir: the folder to write; new or empty (the stage's own ``config.yaml`` aside).
        base: the base model: Hub name, local folder, GGUF file or ``offline:smollm2-135m-instruct``. Default: the
            ``base_model_name_or_path`` of the adapter's ``adapter_config.json``; set it when the adapter was
            trained on another machine or on a GGUF file (PEFT records the GGUF's folder, not the file).
        dtype: the dtype of the saved weights; ``bfloat16`` is what the paper trains in and vLLM serves.
        overwrite: replace an earlier export in ``output_dir`` (a folder with ``export.json``); other files are
            never deleted.
    """
    adapter_dir = Path(adapter).expanduser()
    recorded = _recorded_base(adapter_dir)
    base_name = base or recorded
    if not base_name:
        raise UserError(f"adapter: {adapter_dir / 'adapter_config.json'} names no base_model_name_or_path; set --base")
    output = Path(output_dir).expanduser()
    previous = _earlier_files(output, overwrite)
    where = "base" if base else f"{adapter_dir / 'adapter_config.json'}: base"
    source, extra = _base_source(base_name, where)
    record = {"adapter": str(adapter_dir.resolve()), "base": base_name, "dtype": dtype, "stat_pl": version("stat-pl")}

    model = _load_base(base_name, where, source, extra, torch_dtype(dtype))
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(source, **extra)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload(safe_merge=True)
    for path in previous:  # only now: a load that fails leaves the earlier export as it was
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    merged.save_pretrained(output)
    tokenizer.save_pretrained(output)
    (output / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    print(f"stat_pl export: {base_name} + {adapter_dir} -> {output} ({dtype})")
    return output


def _recorded_base(adapter_dir: Path) -> str | None:
    """The base model named in the adapter's ``adapter_config.json`` (which must exist)."""
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise MissingFileError(
            f"adapter: {config_path} does not exist; pass the folder PEFT's save_pretrained wrote "
            "(the `adapter` folder of a `python -m stat_pl fit` run)"
        )
    return json.loads(config_path.read_text()).get("base_model_name_or_path")


def _earlier_files(output: Path, overwrite: bool) -> list[Path]:
    """What an export into ``output`` replaces: nothing in a new or empty folder, an earlier export with
    ``overwrite``; anything else is refused before a model is loaded."""
    if output.exists() and not output.is_dir():
        raise UserError(f"output_dir: {output} is a file; give a new or empty folder")
    entries = sorted(p for p in output.iterdir() if p.name != STAGE_CONFIG) if output.is_dir() else []
    if not entries:
        return []
    names = ", ".join(p.name for p in entries[:3]) + (", ..." if len(entries) > 3 else "")
    if not overwrite:
        raise UserError(
            f"output_dir: {output} is not empty ({names}); choose a new folder, or set overwrite: true "
            "(--overwrite true) to replace an earlier export"
        )
    if not (output / EXPORT_RECORD).is_file():
        raise UserError(
            f"output_dir: {output} holds files ({names}) but no {EXPORT_RECORD}, so it is not an earlier export; "
            "overwrite replaces only those: choose a new or empty folder"
        )
    return entries


def _base_source(name: str, where: str) -> tuple[str, dict]:
    """``from_pretrained``'s arguments for the base, with an error that names a base which is not there."""
    try:
        source, extra = pretrained_source(name)
    except FileNotFoundError as e:
        raise MissingFileError(f"{where} {name!r}: {e}; set --base to the model the adapter was trained on") from e
    folder = Path(source)
    if folder.is_dir() and not extra and not (folder / "config.json").is_file():
        gguf = sorted(folder.glob("*.gguf"))
        hint = f"; for the GGUF model in it pass --base {gguf[0]}" if gguf else ""
        raise MissingFileError(f"{where} {name!r}: {folder} has no config.json, so it is no model folder{hint}")
    return source, extra


def _load_base(name: str, where: str, source: str, extra: dict, dtype: torch.dtype) -> PreTrainedModel:
    """The base model unquantised in ``dtype`` on the CPU; a GGUF file is dequantised and saved as plain tensors."""
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra)
    except OSError as e:
        if Path(source).exists():
            raise
        raise MissingFileError(
            f"{where} {name!r}: no such local folder, and the Hugging Face Hub does not serve it here ({e}); "
            "set --base to a local copy of the model the adapter was trained on"
        ) from e
    if "gguf_file" in extra:  # transformers marks a dequantised GGUF model as quantised; save_pretrained refuses it
        model.hf_quantizer = None
        del model.config.quantization_config
    return model
