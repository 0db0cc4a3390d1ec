"""``python -m stat_pl pipeline --config configs/paper/table3.yaml``: the paper's whole Table 3 in one command.

label-skills -> profile (and the difficulty run MATH-D reads) -> build (STAT-Sel, STAT-Syn, the five baselines)
-> SFT of every method at every learning rate of the paper's grid -> the choice of each method's rate on MATH
validation -> GRPO from the base model and after every method -> evaluate every row -> ``table3.md`` /
``table3.png`` with the paper's numbers beside ours. Each stage is one of the existing subcommands, run with
the configs named here; :mod:`stat_pl.dvc_project` hands the stages to DVC, which skips what is current and
resumes after a kill. This module only says which stages there are, what each reads and where it writes.

Where a stage writes is forced on its command line (``--output_dir`` / ``--trainer.default_root_dir`` under
``output_dir``), so DVC knows its outputs; where it reads is its config's business, and the paper configs
read each other's files under ``runs/paper`` (``tests/test_paper_pipeline.py`` checks that they chain).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stat_pl.dvc_project import Stage, reproduce
from stat_pl.errors import UserError
from stat_pl.evaluation.lr_selection import sweep_label

#: The paper's grid of peak learning rates for SFT (Appendix B), in the order ties are broken.
PAPER_LR_GRID = (5e-4, 2e-4, 1e-4, 8e-5, 2e-5)
#: The stage groups ``extra_args`` can add command-line arguments to (e.g. ``--config`` a small overlay).
GROUPS = (
    "label",
    "profile",
    "profile_eval",
    "build",
    "build_baselines",
    "sweep",
    "lr_selection",
    "select",
    "grpo",
    "evaluate",
)


@dataclass(frozen=True)
class Table3Configs:
    """The config files of each stage, in the order ``--config`` takes them (later ones override)."""

    label: list[str]
    profile: list[str]
    profile_eval: list[str]
    build: list[str]
    build_baselines: list[str]
    sft: list[str]
    sft_overlays: dict[str, str | None]
    lr_selection: list[str]
    grpo: list[str]
    grpo_overlays: dict[str, str | None]
    evaluate: list[str]


def pipeline(
    label: list[str],
    profile: list[str],
    profile_eval: list[str],
    build: list[str],
    build_baselines: list[str],
    sft: list[str],
    sft_overlays: dict[str, str | None],
    lr_selection: list[str],
    grpo: list[str],
    grpo_overlays: dict[str, str | None],
    evaluate: list[str],
    lr_grid: tuple[float, ...] = PAPER_LR_GRID,
    output_dir: str = "runs/paper",
    extra_args: dict[str, list[str]] | None = None,
    dry_run: bool = False,
) -> None:
    """Run (or bring up to date) every stage of Table 3; write ``table3.md`` and ``table3.png`` in ``output_dir``.

    Args:
        label: the configs of ``label-skills`` (the Skill-Map of MATH train).
        profile: the configs of ``profile`` (the Missing-Skill-Profile on MATH validation).
        profile_eval: the configs of the difficulty run over MATH's evaluation split (MATH-D's questions).
        build: the configs of ``build`` for STAT-Sel and STAT-Syn.
        build_baselines: the configs of ``build`` for the baselines.
        sft: the SFT configs every method's ``fit`` starts from.
        sft_overlays: Table 3's methods, in row order: method -> the overlay that points SFT at the method's
            built set (``null``: ``sft`` alone is that method's run). A method's name is its built set's name.
        lr_selection: the configs of the ``evaluate`` run that scores every sweep adapter on MATH validation.
        grpo: the GRPO configs every "+GRPO" run starts from.
        grpo_overlays: the "+GRPO" rows: ``base`` (GRPO from the base model) or a method -> its overlay
            (``null``: ``grpo`` alone is that row's run).
        evaluate: the configs of the ``evaluate`` run over every row (``configs/paper/eval_table3.yaml``).
        lr_grid: SFT's peak learning rates; every method is trained at each and keeps the best on MATH
            validation (the paper's grid by default). One rate trains each method once and skips the choice.
        output_dir: the pipeline's folder: every stage writes under it, and ``dvc.yaml``, ``dvc.lock`` and
            the Table 3 report are written here. The paper configs read each other's files under
            ``runs/paper``, so with them this stays ``runs/paper``.
        extra_args: stage group -> arguments added to each of its commands (one of :data:`GROUPS`), e.g.
            ``{sweep: [--config, small.yaml]}`` or ``--trainer.devices=4``.
        dry_run: write ``dvc.yaml`` and print which stages would run, without running any.
    """
    configs = Table3Configs(
        label, profile, profile_eval, build, build_baselines, sft, sft_overlays, lr_selection, grpo, grpo_overlays,
        evaluate,
    )  # fmt: skip
    root = Path(output_dir)
    stages = table3_stages(configs, lr_grid, root, extra_args or {})
    reproduce(stages, root, Path.cwd(), dry_run=dry_run)
    if not dry_run:
        _report(root)


def table3_stages(
    configs: Table3Configs, lr_grid: Sequence[float], root: Path, extra_args: dict[str, list[str]]
) -> list[Stage]:
    """Every stage of Table 3 in running order, each with what it reads and the folders it writes."""
    _check_arguments(configs, lr_grid, extra_args)
    out = root.as_posix()

    def command(group: str, subcommand: str, files: list[str], *forced: str) -> list[str]:
        """Configs, then the group's extra arguments, then what the pipeline forces (where it writes, the lr)."""
        return [subcommand, *(a for f in files for a in ("--config", f)), *extra_args.get(group, []), *forced]

    def files(argv: list[str]) -> list[str]:
        return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]

    def stage(name: str, group: str, subcommand: str, config_files: list[str], *args: str, **kw) -> Stage:
        argv = command(group, subcommand, config_files, *args)
        return Stage(name, argv, deps=files(argv) + kw.pop("deps", []), **kw)

    stages = [
        stage("label", "label", "label-skills", configs.label, f"--output_dir={out}/label", outs=[f"{out}/label"]),
        stage("profile", "profile", "profile", configs.profile, f"--output_dir={out}/profile", outs=[f"{out}/profile"]),
        stage(
            "profile_eval",
            "profile_eval",
            "profile",
            configs.profile_eval,
            f"--output_dir={out}/profile_eval",
            outs=[f"{out}/profile_eval"],
        ),
    ]
    built: dict[str, str] = {}
    for group in ("build", "build_baselines"):
        argv = command(group, "build", getattr(configs, group))
        sets = [f"{out}/build/{name}" for name in _built_set_names(argv)]
        built.update({Path(s).name: s for s in sets})
        stages.append(
            stage(
                group,
                group,
                "build",
                getattr(configs, group),
                f"--output_dir={out}/build",
                outs=sets,
                deps=[f"{out}/label", f"{out}/profile"],
            )
        )
    missing = [method for method in configs.sft_overlays if method not in built]
    if missing:
        raise UserError(f"pipeline: sft_overlays: no build stage writes the set of {missing} (built: {sorted(built)})")

    fitted = {method: f"{out}/fit/{method}" for method in configs.sft_overlays}
    sweeps: dict[str, dict[float, str]] = {}
    for method, overlay in configs.sft_overlays.items():
        sft_files = [*configs.sft, *([overlay] if overlay else [])]
        runs = (
            {lr: f"{out}/sweep/{method}/lr{lr:g}" for lr in lr_grid}
            if len(lr_grid) > 1
            else {lr_grid[0]: fitted[method]}
        )
        sweeps[method] = runs
        for lr, run in runs.items():
            stages.append(
                stage(
                    f"sft-{method}-lr{lr:g}".replace(".", "p"),
                    "sweep",
                    "fit",
                    sft_files,
                    f"--trainer.default_root_dir={run}",
                    f"--model.init_args.optimizer.init_args.lr={lr!r}",
                    outs=[run],
                    deps=[built[method]],
                )
            )
    if len(lr_grid) > 1:
        sweep_runs = [run for runs in sweeps.values() for run in runs.values()]
        adapters = {sweep_label(m, lr): f"{run}/adapter" for m, runs in sweeps.items() for lr, run in runs.items()}
        stages.append(
            stage(
                "lr_selection",
                "lr_selection",
                "evaluate",
                configs.lr_selection,
                f"--adapters={json.dumps(adapters)}",
                f"--output_dir={out}/lr_selection",
                outs=[f"{out}/lr_selection"],
                deps=sweep_runs,
                persist=True,
            )
        )
        stages.append(
            stage(
                "select_lr",
                "select",
                "select-lr",
                [],
                f"--results={out}/lr_selection/results.json",
                f"--sweeps={json.dumps(sweeps)}",
                f"--output_dir={out}/fit",
                outs=list(fitted.values()),
                deps=[f"{out}/lr_selection", *sweep_runs],
            )
        )

    for row, overlay in configs.grpo_overlays.items():
        stages.append(
            stage(
                f"grpo-{row}",
                "grpo",
                "fit",
                [*configs.grpo, *([overlay] if overlay else [])],
                f"--trainer.default_root_dir={out}/grpo/{row}",
                outs=[f"{out}/grpo/{row}"],
                deps=[f"{out}/label", *([] if row == "base" else [fitted[row]])],
            )
        )
    stages.append(
        stage(
            "evaluate",
            "evaluate",
            "evaluate",
            configs.evaluate,
            f"--output_dir={out}/eval",
            outs=[f"{out}/eval"],
            deps=[f"{out}/profile_eval", *fitted.values(), *(f"{out}/grpo/{row}" for row in configs.grpo_overlays)],
            persist=True,
        )
    )
    return stages


def _check_arguments(configs: Table3Configs, lr_grid: Sequence[float], extra_args: dict[str, list[str]]) -> None:
    if not lr_grid or any(lr <= 0 for lr in lr_grid) or len(set(lr_grid)) != len(lr_grid):
        raise UserError(f"pipeline: lr_grid must list distinct positive learning rates, got {lr_grid}")
    if unknown := sorted(set(extra_args) - set(GROUPS)):
        raise UserError(f"pipeline: extra_args: unknown stage group(s) {unknown}; known: {list(GROUPS)}")
    if not configs.sft_overlays:
        raise UserError("pipeline: sft_overlays lists no method")
    if unknown := sorted(set(configs.grpo_overlays) - {"base", *configs.sft_overlays}):
        raise UserError(f"pipeline: grpo_overlays: {unknown} is neither 'base' nor a method of sft_overlays")
    for name, value in vars(configs).items():
        for path in value.values() if isinstance(value, dict) else value:
            if path is not None and not Path(path).is_file():
                raise UserError(f"pipeline: {name}: config file {path} does not exist")


def _built_set_names(argv: list[str]) -> list[str]:
    """The sets a ``build`` command writes: its builders' names, read from its parsed configs."""
    from stat_pl.cli import stage_parser  # the CLI imports this module's stage lazily; no cycle at import

    config = stage_parser("build").parse_args(argv[1:])
    return [builder.init_args.name for builder in config.builders]


def _report(root: Path) -> None:
    """Table 3 with the paper's numbers beside ours, from the evaluation the last stage wrote."""
    from stat_pl.evaluation.paper_table3 import write_table3

    markdown, figure = write_table3(root / "eval" / "results.json", root)
    print(markdown.read_text())
    print(f"pipeline: Table 3 in {markdown} and {figure}")
