"""The models an evaluation compares: a base model and LoRA adapters trained on it (base vs SFT vs STAT-Sel).

An adapter only means something on the base model it was trained on, so before loading one this
checks both what its ``adapter_config.json`` names as the base and that every LoRA matrix fits the
base's layer shapes; either mismatch is an error that names the adapter, the layer and the models.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from stat_pl.errors import MissingFileError, UserError
from stat_pl.models import load_causal_lm
from stat_pl.offline_models import resolve_model_path

_ADAPTER_WEIGHTS = "adapter_model.safetensors"


class AdapterMismatchError(UserError):
    """An adapter that was trained on another base model than the one it is evaluated on."""


@dataclass(frozen=True)
class ModelEntry:
    """One row of the results table: ``label`` names it, ``base`` is the base model, ``adapter`` a PEFT folder."""

    label: str
    base: str
    adapter: str | None = None

    def fingerprint(self) -> str:
        """What the stored results of this model are keyed by: the base name and the adapter's weights
        (hashed, so retraining into the same folder is generated again, and renaming a label is not)."""
        digest = hashlib.sha256(self.base.encode())
        if self.adapter is not None:
            weights = Path(self.adapter) / _ADAPTER_WEIGHTS
            if not weights.is_file():
                raise MissingFileError(
                    f"adapter {self.label!r}: {weights} does not exist; pass a folder written "
                    "by PEFT save_pretrained (e.g. the `adapter` folder that fit writes)"
                )
            with weights.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()[:16]


def _model_stem(name_or_path: str) -> str:
    """``HuggingFaceTB/SmolLM2-135M-Instruct`` and ``~/.cache/.../SmolLM2-135M-Instruct`` -> the same stem."""
    path = Path(resolve_model_path(name_or_path).rstrip("/"))
    return (path.parent.name if path.suffix == ".gguf" else path.name).lower()


def check_adapter(adapter_dir: str | Path, base_name: str, base_model: torch.nn.Module) -> None:
    """Raise :class:`AdapterMismatchError` if the adapter at ``adapter_dir`` was not made for ``base_model``.

    Two checks: the base named in ``adapter_config.json`` (compared by its last path component, so a
    Hub name matches a local copy of the same model), and every ``lora_A`` / ``lora_B`` matrix against
    the input and output size of the base layer it adapts.
    """
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise MissingFileError(f"{config_path} does not exist; an adapter folder is written by PEFT save_pretrained")
    trained_on = json.loads(config_path.read_text()).get("base_model_name_or_path") or ""
    if trained_on and _model_stem(trained_on) != _model_stem(base_name):
        raise AdapterMismatchError(
            f"adapter {adapter_dir} was trained on {trained_on!r} ({config_path}: "
            f"base_model_name_or_path) but is evaluated on {base_name!r}; set `model:` "
            "to the adapter's base model"
        )
    _check_shapes(adapter_dir / _ADAPTER_WEIGHTS, base_name, base_model)


def _check_shapes(weights: Path, base_name: str, base_model: torch.nn.Module) -> None:
    from safetensors import safe_open

    if not weights.is_file():
        raise MissingFileError(f"{weights} does not exist; an adapter folder is written by PEFT save_pretrained")
    modules = dict(base_model.named_modules())
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            if not key.endswith((".lora_A.weight", ".lora_B.weight")):
                continue
            layer_name, matrix = key.removeprefix("base_model.model.").rsplit(".", 2)[:2]
            layer = modules.get(layer_name)
            if layer is None or not hasattr(layer, "weight"):
                raise AdapterMismatchError(
                    f"{weights}: {key} adapts layer {layer_name!r}, which {base_name!r} "
                    "does not have; the adapter was made for another model"
                )
            out_features, in_features = layer.weight.shape
            shape = tuple(f.get_slice(key).get_shape())
            fits = shape[1] == in_features if matrix == "lora_A" else shape[0] == out_features
            if not fits:
                raise AdapterMismatchError(
                    f"{weights}: {key} has shape {list(shape)} but layer {layer_name!r} of {base_name!r} is "
                    f"{in_features} -> {out_features}; the adapter was made for another base model"
                )


def model_skeleton(name_or_path: str) -> torch.nn.Module:
    """The model's architecture on the meta device: layer shapes without loading a single weight, so
    every adapter is checked in a second, before any model generates."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(resolve_model_path(name_or_path))
    source, extra = (str(path.parent), {"gguf_file": path.name}) if path.suffix == ".gguf" else (str(path), {})
    config = AutoConfig.from_pretrained(source, **extra)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def load_for_evaluation(entry: ModelEntry, device: str | torch.device | None = None) -> torch.nn.Module:
    """The base model on ``device``, with the adapter merged in when there is one, frozen and in eval mode.

    Merging makes generation as fast as the base model's; the base is loaded unquantised (float32 on
    CPU, bfloat16 on CUDA) whatever precision the adapter was trained in (QLoRA trains on NF4). Check
    the adapter first with :func:`check_adapter`. ``device`` defaults to the current CUDA device, else the CPU.
    """
    model = load_causal_lm(entry.base, quantization="none", device=device)
    if entry.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, entry.adapter).merge_and_unload()
    return model.eval().requires_grad_(False)
