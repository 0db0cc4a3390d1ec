"""``python -m stat_pl <subcommand>``: LightningCLI for training, jsonargparse for the offline stages.

``fit | validate | test`` are LightningCLI: the YAML names a LightningModule and a LightningDataModule
by ``class_path`` / ``init_args``. The offline stages of the pipeline (``profile``, ``build``,
``evaluate``, ...) are plain typed functions registered in :data:`OFFLINE_STAGES`; jsonargparse builds
their arguments from the same kind of YAML and saves the parsed config to ``<output_dir>/config.yaml``.

Errors: a :class:`~stat_pl.errors.UserError` (a missing, empty or malformed data file, a bad config value,
a missing model or adapter folder) prints one line, ``stat_pl <subcommand>: error: <message>``, and exits
with status 2, as jsonargparse does for a config it cannot parse. Any other exception is a bug and shows its
traceback. ``STAT_PL_TRACEBACK=1`` shows the traceback of a user error too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from stat_pl.errors import UserError
from stat_pl.memory_check import STAGES_CHECKED, check_at_start
from stat_pl.precision import compute_dtype_for, resolve_precision
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
    "export": ("stat_pl.export:export", "merge a (Q)LoRA adapter into its base: a plain Hugging Face model to serve"),
    "select-lr": (
        "stat_pl.evaluation.lr_selection:select_learning_rate",
        "each method's best learning rate of a sweep, by MATH validation accuracy",
    ),
    "pipeline": ("stat_pl.pipeline:pipeline", "the paper's whole Table 3, every stage in order, resumable (DVC)"),
}
#: Subcommands that read their own arguments: name -> (import path "module:function" taking argv, one-line help).
TOOLS: dict[str, tuple[str, str]] = {
    "estimate": ("stat_pl.memory_check:main", "the GPU memory a fit/profile/evaluate config needs, without running it"),
}


class StatCLI(LightningCLI):
    """LightningCLI with the tokenizer linked to the student, stat-pl's trainer defaults, and precision decided once.

    ``trainer.precision: auto`` and the student's ``compute_dtype: auto`` are resolved here, before anything is
    built (:func:`~stat_pl.precision.resolve_precision`), logged with the reason, and written back into the config,
    so the run's ``config.yaml`` holds the values it ran with and a rerun from it probes nothing.
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.student.model", "data.init_args.tokenizer")
        parser.link_arguments("seed_everything", "data.init_args.seed", lambda s: 0 if isinstance(s, bool) else s)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        decide_precision(config)
        check_at_start("fit", config.as_dict())  # on a CUDA run: refuse what cannot fit before anything loads


def decide_precision(config: Namespace) -> None:
    """Resolve ``trainer.precision: auto`` and ``model.init_args.student.compute_dtype: auto`` in place."""
    trainer = config.trainer
    if trainer.precision == "auto":
        choice = resolve_precision(str(trainer.accelerator))
        rank_zero_info(f"stat_pl: precision auto -> {choice.lightning} ({choice.reason})")
        trainer.precision = choice.lightning
    student = config.model.init_args.get("student") if isinstance(config.model, Namespace) else None
    if student is not None and student.compute_dtype == "auto":
        student.compute_dtype = compute_dtype_for(trainer.precision)


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
    if name in STAGES_CHECKED:
        check_at_start(name, config.as_dict())
    save_stage_config(parser, config)
    arguments = parser.instantiate(config)
    arguments.pop("config", None)
    _load(OFFLINE_STAGES[name][0])(**arguments)


#: Environment variable read by every entry point for the number of torch CPU threads.
THREADS_ENV = "STAT_PL_THREADS"


def configure_threads() -> int | None:
    """Set torch's CPU threads from ``$STAT_PL_THREADS`` (unset: torch's default, one per core).

    On a CPU shared with other busy processes one thread per process is often several times faster
    than two (threads spin against each other); on an idle machine all cores are faster
    (bench/README.md has both measurements).
    """
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"${THREADS_ENV}={value!r}: expected a positive number of torch threads")
    import torch

    torch.set_num_threads(int(value))
    return int(value)


def usage() -> str:
    lines = ["usage: python -m stat_pl <subcommand> --config configs/X.yaml [--key=value ...]", "", "subcommands:"]
    stages = {k: v[1] for k, v in {**OFFLINE_STAGES, **TOOLS}.items()}
    for name, help_text in {**LIGHTNING_SUBCOMMANDS, **stages}.items():
        lines.append(f"  {name:<14}{help_text}")
    lines += ["", "python -m stat_pl <subcommand> --help lists a subcommand's options."]
    return "\n".join(lines)


#: Set to ``1`` to see the traceback of a user error too.
TRACEBACK_ENV = "STAT_PL_TRACEBACK"
#: The exit status of a user error: argparse's (and so jsonargparse's) for a command line it rejects.
USAGE_ERROR = 2


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    command, rest = argv[0], argv[1:]
    if command not in LIGHTNING_SUBCOMMANDS and command not in OFFLINE_STAGES and command not in TOOLS:
        print(f"stat_pl: error: unknown subcommand {command!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)
    try:
        configure_threads()
        if command in LIGHTNING_SUBCOMMANDS:
            run_lightning([command, *rest])
        elif command in OFFLINE_STAGES:
            run_stage(command, rest)
        else:
            _load(TOOLS[command][0])(rest)
    except UserError as e:
        if os.environ.get(TRACEBACK_ENV, "") == "1":
            raise
        print(f"stat_pl {command}: error: {e}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None
