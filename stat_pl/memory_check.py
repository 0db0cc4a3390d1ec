"""The start-up memory check of ``fit``, ``profile`` and ``evaluate``, and ``python -m stat_pl estimate``.

On a CUDA run, before any model loads, :func:`check_at_start` prints the table of :mod:`stat_pl.memory_estimate`
and refuses a config whose estimate exceeds the device's memory, with one line naming the config key to change:
failing at start-up, not 20 minutes in. A CPU run is not checked. ``python -m stat_pl estimate --config X`` prints
the same table without running anything; ``--device_memory_gib`` gives a verdict on a machine without that GPU and
``--model_config`` (a ``config.json`` or a folder) stands in for a model whose config cannot be read here.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import yaml
from lightning.pytorch.utilities import rank_zero_info

from stat_pl.errors import UserError
from stat_pl.memory_config import STAGES, estimate_config
from stat_pl.memory_estimate import GIB, MemoryEstimate, refusal

log = logging.getLogger(__name__)
#: The offline stages checked at start-up (``fit`` is checked by :class:`~stat_pl.cli.StatCLI`).
STAGES_CHECKED = tuple(STAGES)


def config_stage(config: dict, source: str) -> str:
    """``fit``, ``profile`` or ``evaluate``: which command a YAML file configures."""
    if isinstance(config.get("model"), dict) and "class_path" in config["model"]:
        return "fit"
    if "benchmarks" in config:
        return "evaluate"
    if "questions" in config or "student" in config:
        return "profile"
    raise UserError(f"{source}: not a fit, profile or evaluate config (no model.class_path, benchmarks or questions)")


def _cuda_device(stage: str, config: dict):
    """The CUDA device this run uses, or None for a CPU run (then nothing is checked)."""
    import torch

    if not torch.cuda.is_available():
        return None
    if stage == "fit":
        accelerator = str((config.get("trainer") or {}).get("accelerator", "auto"))
        return torch.cuda.current_device() if accelerator in ("auto", "gpu", "cuda") else None
    device = config.get("device")
    if device is None:
        return torch.cuda.current_device()
    return torch.device(device) if str(device).startswith("cuda") else None


def check_at_start(stage: str, config: dict, device_bytes: int | None = None) -> MemoryEstimate | None:
    """The start-up check of ``fit``, ``profile`` and ``evaluate``: log the estimate, refuse what cannot fit.

    ``device_bytes`` defaults to the memory of the CUDA device the run uses; on a CPU run nothing is checked. A
    config the estimator cannot read (its model's config unreadable, a LoRA target it does not know) is a warning,
    not a refusal: the run itself will say what is wrong, if anything.
    """
    if device_bytes is None:
        device = _cuda_device(stage, config)
        if device is None:
            return None
        import torch

        device_bytes = torch.cuda.get_device_properties(device).total_memory
    try:
        estimate = estimate_config(stage, config, None, device_bytes)
    except ValueError as e:
        log.warning("stat_pl: no GPU memory estimate for this config: %s", e)
        return None
    rank_zero_info(f"stat_pl: GPU memory estimate\n{estimate.format_table()}")
    refuse_if_too_big(estimate, device_bytes)
    return estimate


def refuse_if_too_big(estimate: MemoryEstimate, device_bytes: int) -> None:
    """A :class:`UserError` naming the config key to change when ``estimate`` cannot fit ``device_bytes``."""
    message = refusal(estimate, device_bytes)
    if message:
        raise UserError(message)


def merged_yaml(paths: list[str]) -> dict:
    """Several ``--config`` files, later ones over earlier ones key by key, as jsonargparse merges them."""

    def merge(base: dict, extra: dict) -> dict:
        out = dict(base)
        for key, value in extra.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    config: dict = {}
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"--config {path}: no such file")
        config = merge(config, yaml.safe_load(Path(path).read_text()) or {})
    return config


def main(argv: list[str]) -> None:
    """``python -m stat_pl estimate --config X [--device_memory_gib N] [--model_config PATH]``."""
    parser = argparse.ArgumentParser(
        prog="python -m stat_pl estimate",
        description="The GPU memory a fit, profile or evaluate config needs, as a table, without running it.",
    )
    parser.add_argument("--config", action="append", required=True, help="a YAML config (repeat to layer them)")
    parser.add_argument("--device_memory_gib", type=float, help="the GPU's memory; default this machine's CUDA device")
    parser.add_argument("--model_config", help="a config.json or model folder read instead of the config's model")
    args = parser.parse_args(argv)
    config = merged_yaml(args.config)
    stage = config_stage(config, args.config[-1])
    if args.device_memory_gib is not None:
        device_bytes: int | None = int(args.device_memory_gib * GIB)
    else:
        import torch

        device_bytes = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None
    estimate = estimate_config(stage, config, args.model_config, device_bytes)
    print(estimate.format_table())
    if device_bytes is None:
        print("no verdict: no CUDA device here; pass --device_memory_gib")
        return
    refuse_if_too_big(estimate, device_bytes)
    print(f"fits: about {estimate.total_gib:.1f} of {device_bytes / GIB:.1f} GiB")
