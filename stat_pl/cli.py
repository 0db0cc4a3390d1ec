"""``python -m stat_pl <subcommand>``: LightningCLI for training, jsonargparse for the offline stages.

``fit | validate | test`` are LightningCLI: the YAML names a LightningModule and a LightningDataModule
by ``class_path`` / ``init_args``. The offline stages of the pipeline (``profile``, ``build``,
``evaluate``, ...) are plain typed functions registered in :data:`OFFLINE_STAGES`; jsonargparse builds
their arguments from the same kind of YAML and saves the parsed config to ``<output_dir>/config.yaml``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.pytorch.cli import LightningCLI

from stat_pl.hardware import configure_threads, keep_freed_memory
from stat_pl.skills import CatalogKeyError
from stat_pl.trainer import StatTrainer

LIGHTNING_SUBCOMMANDS = {
    "fit": "train a model (SFT or GRPO) from a config",
    "validate": "run the validation loop of a config",
    "test": "run the test loop of a config",
}

#: name -> (import path "module:function", one-line help). Later stages register here.
OFFLINE_STAGES: dict[str, tuple[str, str]] = {
    "evaluate": ("stat_pl.evaluation.evaluate:evaluate", "base model + adapters on benchmarks: Table 3 and plots"),
    "profile": (
        "stat_pl.profiling.profile_stage:profile",
        "Stages 1-2: difficult validation questions and the student's Missing-Skill-Profile",
    ),
    "label-skills": (
        "stat_pl.profiling.label_stage:build_skill_map",
        "Stage 0: label a dataset's questions with catalog skills (a Skill-Map)",
    ),
    "build": ("stat_pl.building.run:build", "Stage 3: targeted training data (STAT-Sel, STAT-Syn, baselines)"),
}


class StatCLI(LightningCLI):
    """LightningCLI with the tokenizer linked to the model and stat-pl's trainer defaults."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.model", "data.init_args.tokenizer")
        parser.link_arguments("seed_everything", "data.init_args.seed", lambda s: 0 if isinstance(s, bool) else s)


def run_lightning(argv: list[str], run: bool = True) -> StatCLI:
    """LightningCLI on ``argv``; ``run=False`` parses and instantiates without a subcommand (config tests)."""
    return StatCLI(
        L.LightningModule,
        L.LightningDataModule,
        trainer_class=StatTrainer,
        subclass_mode_model=True,
        subclass_mode_data=True,
        # The SkillWeightedSampler shards itself across ranks; Lightning must not swap in a DistributedSampler.
        trainer_defaults={"use_distributed_sampler": False},
        save_config_kwargs={"overwrite": True},
        args=None if argv == sys.argv[1:] else argv,  # from the shell LightningCLI reads sys.argv itself
        run=run,
    )


def _load(target: str) -> Callable:
    import importlib

    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def stage_parser(name: str) -> ArgumentParser:
    """The parser of an offline stage: ``--config`` plus its function's typed arguments."""
    function = _load(OFFLINE_STAGES[name][0])
    parser = ArgumentParser(prog=f"python -m stat_pl {name}", description=OFFLINE_STAGES[name][1])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these arguments")
    parser.add_function_arguments(function, as_group=False, as_positional=False, sub_configs=True)
    return parser


def save_stage_config(parser: ArgumentParser, config: Namespace) -> Path:
    """``<output_dir>/config.yaml``: the parsed config with every default, as LightningCLI saves ``fit``'s.

    ``--config`` on this file reruns the stage. It holds no secret: teachers take ``api_key_env``, the
    *name* of the variable that holds the key.
    """
    path = Path(config.output_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    parser.save(config, path, skip_unset=False, overwrite=True, multifile=False)
    return path


def run_stage(name: str, argv: list[str]) -> None:
    parser = stage_parser(name)
    config = parser.parse_args(argv)
    save_stage_config(parser, config)
    try:
        arguments = parser.instantiate(config)
        arguments.pop("config", None)
        _load(OFFLINE_STAGES[name][0])(**arguments)
    except (ValueError, FileNotFoundError, CatalogKeyError) as e:  # bad input: the message names file, row, field
        sys.exit(f"stat_pl {name}: error: {e}")


def usage() -> str:
    lines = ["usage: python -m stat_pl <subcommand> --config configs/X.yaml [--key=value ...]", "", "subcommands:"]
    for name, help_text in {**LIGHTNING_SUBCOMMANDS, **{k: v[1] for k, v in OFFLINE_STAGES.items()}}.items():
        lines.append(f"  {name:<14}{help_text}")
    lines += ["", "python -m stat_pl <subcommand> --help lists a subcommand's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    command, rest = argv[0], argv[1:]
    configure_threads()
    keep_freed_memory()
    if command in LIGHTNING_SUBCOMMANDS:
        run_lightning([command, *rest])
    elif command in OFFLINE_STAGES:
        run_stage(command, rest)
    else:
        sys.exit(f"stat_pl: unknown subcommand {command!r}\n\n{usage()}")
