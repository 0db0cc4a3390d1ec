"""Every shipped YAML under ``configs/`` parses with its subcommand and its classes build, in-process.

A renamed or retyped argument must break a test here, not a user's first command. Files are found by
glob, so a new config is covered without editing this test. How a file is parsed is decided by this
rule (README, *Configs*):

1. a comment line ``# stat_pl: <subcommand>`` anywhere in the file names its subcommand;
2. otherwise, a command in its comments, ``python -m stat_pl <subcommand> --config A --config B ...``,
   whose ``--config`` files include this one, is parsed as written (an overlay is parsed on its base);
3. otherwise a top-level ``trainer:`` key makes it a LightningCLI config, parsed as ``fit`` reads it;
4. otherwise it is the one offline stage of :data:`stat_pl.cli.OFFLINE_STAGES` whose function accepts
   every top-level key and gets all its required ones. Two or no such stages is a failure that asks
   for the comment of rule 1.

Building the classes downloads nothing (models load in ``configure_model`` / on first use, teachers
connect on the first call). Configs for a GPU get ``--trainer.accelerator=cpu`` when no GPU is here;
configs that read ``../shared/data`` skip when it is absent.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, SHARED_DATA

from stat_pl.cli import OFFLINE_STAGES, _load, run_lightning, stage_parser
from stat_pl.engines.choice import vllm_installed

CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
SUBCOMMAND_COMMENT = re.compile(r"^#\s*stat_pl:\s*([\w-]+)\s*$", re.MULTILINE)
DOCUMENTED_COMMAND = re.compile(r"^#.*?python -m stat_pl ([\w-]+)(.*)$", re.MULTILINE)


def _stage_parameters(stage: str) -> tuple[set[str], set[str]]:
    """(every parameter, the required ones) of an offline stage's function."""
    parameters = inspect.signature(_load(OFFLINE_STAGES[stage][0])).parameters.values()
    return {p.name for p in parameters}, {p.name for p in parameters if p.default is inspect.Parameter.empty}


def documented_configs(path: Path) -> tuple[str, list[str]] | None:
    """(subcommand, --config files) of the first command in ``path``'s comments that names ``path``."""
    name = path.relative_to(ROOT).as_posix()
    for command in DOCUMENTED_COMMAND.finditer(path.read_text()):
        configs = re.findall(r"--config[ =](\S+)", command.group(2))
        if name in configs:
            return command.group(1), configs
    return None


def subcommand_of(path: Path) -> str:
    """The subcommand that reads ``path``, by the rule in this module's docstring."""
    text = path.read_text()
    if named := SUBCOMMAND_COMMENT.search(text):
        return named.group(1)
    if documented := documented_configs(path):
        return documented[0]
    keys = set(yaml.safe_load(text) or {})
    if "trainer" in keys:
        return "fit"
    fitting = []
    for stage in OFFLINE_STAGES:
        accepted, required = _stage_parameters(stage)
        if keys <= accepted and required <= keys:
            fitting.append(stage)
    if len(fitting) != 1:
        pytest.fail(
            f"{path}: cannot tell which subcommand reads this config (stages whose arguments fit its keys: "
            f"{fitting}); add a line `# stat_pl: <subcommand>` to it"
        )
    return fitting[0]


def test_configs_are_found():
    assert "configs/demo.yaml" in CONFIGS and any(c.startswith("configs/paper/") for c in CONFIGS)


@pytest.mark.parametrize("config", CONFIGS)
def test_config_parses_and_builds(config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = ROOT / config
    if "../shared/" in yaml.safe_dump(yaml.safe_load(path.read_text())) and not SHARED_DATA.is_dir():  # not comments
        pytest.skip(f"{config} reads ../shared/data, which is absent ({SHARED_DATA})")
    monkeypatch.chdir(ROOT)  # configs name files relative to the repository root, as the README's commands run
    subcommand = subcommand_of(path)
    documented = documented_configs(path)
    chain = documented[1] if documented and documented[0] == subcommand else [config]
    args = [a for c in chain for a in ("--config", c)]
    if subcommand in OFFLINE_STAGES:
        parser = stage_parser(subcommand)
        built = parser.instantiate(parser.parse_args(args))
        assert all(key in built for key in yaml.safe_load(path.read_text()))
        return
    assert subcommand in ("fit", "validate", "test"), f"{config}: unknown subcommand {subcommand!r}"
    accelerators = [
        ((yaml.safe_load((ROOT / c).read_text()) or {}).get("trainer") or {}).get("accelerator") for c in chain
    ]
    if {"gpu", "cuda"} & set(accelerators) and not torch.cuda.is_available():
        args.append("--trainer.accelerator=cpu")
    monkeypatch.setattr(sys, "argv", ["stat_pl"])  # LightningCLI warns when pytest's own arguments are there
    if re.search(r"^\s*engine: vllm\s*$", path.read_text(), flags=re.MULTILINE) and not vllm_installed():
        with pytest.raises((RuntimeError, ValueError), match="engine: vllm needs vLLM: pip install"):  # before loading
            run_lightning(args, run=False)
        return
    cli = run_lightning(args, run=False)
    assert cli.model is not None and cli.datamodule is not None and cli.trainer is not None


def test_seed_everything_is_the_samplers_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["stat_pl"])
    assert run_lightning(["--config", "configs/demo.yaml", "--seed_everything=7"], run=False).datamodule.seed == 7
    data = run_lightning(
        ["--config", "configs/demo.yaml", "--seed_everything=7", "--data.init_args.data_seed=3"], run=False
    ).datamodule
    assert (data.seed, data.data_seed) == (7, 3)  # a data seed of its own, apart from the run's


def test_configs_can_name_classes_by_their_package(tmp_path: Path) -> None:
    from stat_pl.profiling import ConsistencyDetector, SkillMapProxy

    config = tmp_path / "profile.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "questions": {"path": "questions.jsonl"},
                "detector": {"class_path": "stat_pl.profiling.ConsistencyDetector", "init_args": {"k": 3}},
                "profiler": {"class_path": "stat_pl.profiling.SkillMapProxy"},
            }
        )
    )
    parser = stage_parser("profile")
    built = parser.instantiate(parser.parse_args(["--config", str(config)]))
    assert isinstance(built.detector, ConsistencyDetector) and built.detector.samples_per_question == 3
    assert isinstance(built.profiler, SkillMapProxy)
