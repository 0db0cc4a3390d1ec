"""The paper pipeline in configs/paper/: profile -> build -> fit -> evaluate, each stage reading the last one's files.

The first tests read the shipped configs as the CLI parses them and check that the paths line up and
the paper's settings are there, the "+GRPO" rows of Table 3 included. The last one runs the whole chain in
miniature through the same configs, with a small overlay per stage (tiny model, loopback teacher, a few
questions, CPU; ~30 s).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import shlex
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml
from loopback_teacher import Body, LoopbackTeacherServer, prompt_text

from stat_pl.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "paper"
KEY_ENV = "STAT_PL_TEST_PAPER_KEY"


def parsed(stage: str, *configs: str, overrides: tuple[str, ...] = ()) -> dict:
    """The config ``python -m stat_pl <stage> --config A --config B [overrides]`` would run with (--print_config)."""
    out = io.StringIO()
    argv = [stage, *(a for c in configs for a in ("--config", str(PAPER / c))), *overrides, "--print_config"]
    with (
        mock.patch.object(sys, "argv", ["stat_pl", *argv]),
        contextlib.redirect_stdout(out),
        pytest.raises(SystemExit) as done,
    ):
        main(argv)
    assert done.value.code in (0, None), out.getvalue()
    return yaml.safe_load(out.getvalue())


def train_path(fit: dict) -> str:
    (source,) = fit["data"]["init_args"]["train"]
    return source["init_args"]["path"]


def test_the_paper_stages_read_each_others_files_with_the_papers_settings():
    profile = parsed("profile", "profile_llama32_3b.yaml")
    build = parsed("build", "build_llama32_3b.yaml")
    fit_sel = parsed("fit", "sft_qlora_llama32_3b.yaml")
    fit_syn = parsed("fit", "sft_qlora_llama32_3b.yaml", "fit_stat_syn.yaml")
    profile_eval = parsed("profile", "profile_llama32_3b.yaml", "profile_eval_split.yaml")
    evaluate = parsed("evaluate", "eval_table3.yaml")

    detector = profile["detector"]
    assert detector["class_path"].endswith("ProcessRewardDetector")
    assert (detector["init_args"]["tau1"], detector["init_args"]["tau2"]) == (0.85, 0.7)
    assert (profile["split"], profile["validation_size"]) == ("validation", 1000)
    assert build["profile"] == f"{profile['output_dir']}/profile.json"
    builders = {b["class_path"].rsplit(".", 1)[1]: b["init_args"] for b in build["builders"]}
    assert builders["StatSel"]["target_size"] == builders["StatSyn"]["target_size"] == 9500
    assert builders["StatSel"]["questions_per_skill"] == 5 and builders["StatSel"]["answers_per_question"] == 3
    assert train_path(fit_sel) == f"{build['output_dir']}/stat_sel/data.jsonl"
    assert train_path(fit_syn) == f"{build['output_dir']}/stat_syn/data.jsonl"
    for fit in (fit_sel, fit_syn):
        assert fit["data"]["init_args"]["sampling"] == "permutation" and fit["trainer"]["max_epochs"] == 3
    adapters = evaluate["adapters"]
    assert adapters["stat_sel"] == f"{fit_sel['trainer']['default_root_dir']}/adapter"
    assert adapters["stat_syn"] == f"{fit_syn['trainer']['default_root_dir']}/adapter"
    math_d = next(b for b in evaluate["benchmarks"] if b["name"] == "math_d")
    assert math_d["difficult"] == f"{profile_eval['output_dir']}/profile.json" and profile_eval["split"] == "evaluation"


def test_the_continual_stages_start_from_the_stat_models_and_score_the_whole_new_set():
    profile = parsed("profile", "profile_llama32_3b.yaml", "continual_profile.yaml")
    build = parsed("build", "build_llama32_3b.yaml", "continual_build.yaml")
    fits = {
        name: parsed("fit", "sft_qlora_llama32_3b.yaml", f"continual_fit_{name}.yaml") for name in ("consel", "consyn")
    }
    stat = {
        name: parsed("fit", *configs)
        for name, configs in {
            "sel": ("sft_qlora_llama32_3b.yaml",),
            "syn": ("sft_qlora_llama32_3b.yaml", "fit_stat_syn.yaml"),
        }.items()
    }
    evaluate = parsed("evaluate", "eval_table3.yaml", "continual_eval.yaml")
    held_out = parsed("evaluate", "eval_table3.yaml", "continual_eval.yaml", "continual_eval_held_out.yaml")

    assert profile["adapter"] == f"{stat['sel']['trainer']['default_root_dir']}/adapter"
    assert build["profile"] == f"{profile['output_dir']}/profile.json"
    assert build["pool"]["init_args"]["path"] == labelled_math_train()  # training data still come from MATH train
    for name, source in (("consel", "sel"), ("consyn", "syn")):
        assert train_path(fits[name]) == f"{build['output_dir']}/stat_{name}/data.jsonl"
        assert (
            fits[name]["model"]["init_args"]["student"]["init_adapter"]
            == f"{stat[source]['trainer']['default_root_dir']}/adapter"
        )
        assert evaluate["adapters"][f"stat_{name}"] == f"{fits[name]['trainer']['default_root_dir']}/adapter"
    whole, rest = (next(b for b in c["benchmarks"] if b["name"] == "math_perturb_hard") for c in (evaluate, held_out))
    assert whole["path"] == rest["path"] == profile["questions"]["init_args"]["path"]
    assert whole["validation_size"] is None  # Figure 3: the whole set, the profiled questions included
    assert (rest["validation_size"], rest["split_seed"]) == (profile["validation_size"], profile["split_seed"])
    assert held_out["adapters"] == evaluate["adapters"] and held_out["output_dir"] != evaluate["output_dir"]


# ---- every run file a stage reads, an earlier stage writes ---------------------------------------------


#: Table 3's methods (the paper's 7 besides the base model), each a built set, an SFT run and a "+GRPO" run.
TABLE3_METHODS = ("math_train", "math_augment", "math_hard", "embed_sel", "embed_syn", "stat_sel", "stat_syn")
BASELINES = ("math_train", "math_hard", "math_augment", "embed_sel", "embed_syn")
GRPO = "grpo_qlora_llama32_3b.yaml"  # GRPO after STAT-Sel; every other "+GRPO" row is one overlay on it


def dashed(method: str) -> str:
    return method.replace("_", "-")


#: The paper's stages in the order the README runs them: (name, subcommand, configs, command-line overrides).
STAGES = [
    ("label-skills", "label-skills", ("label_skills_math.yaml",), ()),
    ("profile", "profile", ("profile_llama32_3b.yaml",), ()),
    ("profile-eval-split", "profile", ("profile_llama32_3b.yaml", "profile_eval_split.yaml"), ()),
    ("build", "build", ("build_llama32_3b.yaml",), ()),
    ("build-baselines", "build", ("build_llama32_3b.yaml", "build_baselines_llama32_3b.yaml"), ()),
    ("fit-stat-sel", "fit", ("sft_qlora_llama32_3b.yaml",), ()),
    ("fit-stat-syn", "fit", ("sft_qlora_llama32_3b.yaml", "fit_stat_syn.yaml"), ()),
    *((f"fit-{dashed(name)}", "fit", ("sft_qlora_llama32_3b.yaml", f"fit_{name}.yaml"), ()) for name in BASELINES),
    ("grpo-from-base", "fit", (GRPO, "grpo_from_base.yaml"), ()),
    ("grpo-after-stat-sel", "fit", (GRPO,), ()),
    *(
        (f"grpo-after-{dashed(method)}", "fit", (GRPO, f"grpo_after_{method}.yaml"), ())
        for method in TABLE3_METHODS
        if method != "stat_sel"
    ),
    ("grpo-stat-weighted-prompts", "fit", (GRPO, "grpo_stat_weighted_prompts.yaml"), ()),
    ("evaluate", "evaluate", ("eval_table3.yaml",), ()),
    ("continual-profile", "profile", ("profile_llama32_3b.yaml", "continual_profile.yaml"), ()),
    ("continual-build", "build", ("build_llama32_3b.yaml", "continual_build.yaml"), ()),
    ("continual-fit-consel", "fit", ("sft_qlora_llama32_3b.yaml", "continual_fit_consel.yaml"), ()),
    ("continual-fit-consyn", "fit", ("sft_qlora_llama32_3b.yaml", "continual_fit_consyn.yaml"), ()),
    ("continual-evaluate", "evaluate", ("eval_table3.yaml", "continual_eval.yaml"), ()),
]
#: Keys whose runs/ paths a stage writes to (the teacher's cache it both reads and writes).
OUTPUT_KEYS = {"output_dir", "default_root_dir", "cache_dir"}


@functools.cache
def stage_config(index: int) -> dict:
    _, command, configs, overrides = STAGES[index]
    return parsed(command, *configs, overrides=overrides)


def written(command: str, config: dict) -> set[str]:
    """The run files of a stage that later stages read: the labelled pool, profile.json, each built set, the adapter."""
    if command == "label-skills":
        return {f"{config['output_dir']}/records.jsonl"}
    if command == "profile":
        return {f"{config['output_dir']}/profile.json"}
    if command == "build":
        return {f"{config['output_dir']}/{b['init_args']['name']}/data.jsonl" for b in config["builders"]}
    if command == "fit":
        return {f"{config['trainer']['default_root_dir']}/adapter"}
    return set()  # evaluate: tables and plots for people


def read(config: object) -> set[str]:
    """Every run file (a path under runs/) in a parsed config, wherever its key sits, outputs left out."""
    if isinstance(config, dict):
        return {path for key, value in config.items() if key not in OUTPUT_KEYS for path in read(value)}
    if isinstance(config, list):
        return {path for value in config for path in read(value)}
    return {config} if isinstance(config, str) and config.startswith("runs/") else set()


@pytest.mark.parametrize(
    "index",
    [pytest.param(i, id=name) for i, (name, *_) in enumerate(STAGES)],
)
def test_every_run_file_a_paper_stage_reads_is_written_by_an_earlier_stage(index: int) -> None:
    name, command, _, _ = STAGES[index]
    earlier = set().union(*(written(STAGES[i][1], stage_config(i)) for i in range(index)))
    reads = read(stage_config(index))
    from_public_data = command in ("label-skills", "profile")  # the base model, MATH, the Hub
    assert reads or from_public_data, f"{name} reads no run file: is its config parsed?"
    assert reads <= earlier, f"{name} reads {sorted(reads - earlier)}, which no stage before it writes"


# ---- the "+GRPO" half of Table 3 ------------------------------------------------------------------------


def stage(name: str) -> dict:
    return stage_config(next(i for i, (stage_name, *_) in enumerate(STAGES) if stage_name == name))


def test_every_grpo_overlay_is_a_table3_row_and_every_row_has_one():
    overlays = {path.stem.removeprefix("grpo_after_") for path in PAPER.glob("grpo_after_*.yaml")}
    assert overlays | {"stat_sel"} == set(TABLE3_METHODS)  # stat_sel's is grpo_qlora_llama32_3b.yaml itself


@pytest.mark.parametrize("method", TABLE3_METHODS)
def test_grpo_after_a_method_starts_from_that_methods_sft_adapter(method: str) -> None:
    grpo, sft = stage(f"grpo-after-{dashed(method)}"), stage(f"fit-{dashed(method)}")
    assert grpo["model"]["init_args"]["student"]["init_adapter"] == f"{sft['trainer']['default_root_dir']}/adapter"
    assert grpo["trainer"]["default_root_dir"] == f"runs/paper/grpo/{method}"


def test_table3_evaluates_every_method_and_every_grpo_row_from_the_runs_that_write_them():
    adapters = stage("evaluate")["adapters"]
    rows = {**{m: f"fit-{dashed(m)}" for m in TABLE3_METHODS}, "base+grpo": "grpo-from-base"}
    rows |= {f"{m}+grpo": f"grpo-after-{dashed(m)}" for m in TABLE3_METHODS}
    assert set(adapters) == set(rows)  # with the base model's own row: Table 3's 16
    for label, name in rows.items():
        assert adapters[label] == f"{stage(name)['trainer']['default_root_dir']}/adapter", label


def test_grpo_from_base_trains_a_new_adapter_of_sfts_shape():
    grpo, sft = stage("grpo-from-base"), stage("fit-stat-sel")
    student = grpo["model"]["init_args"]["student"]
    assert student["init_adapter"] is None and student["lora"] == sft["model"]["init_args"]["student"]["lora"]
    assert student["model"] == sft["model"]["init_args"]["student"]["model"]
    assert grpo["trainer"]["default_root_dir"] == "runs/paper/grpo/base"


@pytest.mark.parametrize(
    "name", ["grpo-from-base", *(f"grpo-after-{dashed(m)}" for m in TABLE3_METHODS), "grpo-stat-weighted-prompts"]
)
def test_every_grpo_run_has_the_papers_settings(name: str) -> None:
    grpo = stage(name)
    model = grpo["model"]["init_args"]
    assert grpo["trainer"]["max_epochs"] == 6 and grpo["data"]["init_args"]["batch_size"] == 256
    assert (model["num_generations"], model["max_new_tokens"], model["mini_batch_groups"]) == (4, 2048, 64)
    assert (model["beta"], model["optimizer"]["init_args"]["lr"], model["lr_schedule"]) == (0.0, 5e-7, "constant")
    assert grpo["data"]["init_args"]["train"] == stage("grpo-after-stat-sel")["data"]["init_args"]["train"]


def test_grpo_prompts_are_uniform_over_math_train_unless_the_stat_overlay_weights_them():
    uniform = stage("grpo-after-stat-sel")
    weighted = stage("grpo-stat-weighted-prompts")
    prompts = uniform["data"]["init_args"]
    assert prompts["train"][0]["init_args"]["path"] == stage("build")["pool"]["init_args"]["path"]  # MATH train
    assert (prompts["sampling"], prompts["initial_profile"], prompts["group_by_length"]) == ("permutation", None, False)
    stat = weighted["data"]["init_args"]
    assert (stat["sampling"], stat["initial_profile"]) == ("weighted", f"{stage('profile')['output_dir']}/profile.json")
    roots = [stage(name)["trainer"]["default_root_dir"] for name, *_ in STAGES if name.startswith("grpo-")]
    assert len(set(roots)) == len(roots)  # the beyond-the-paper run writes beside the uniform ones


# ---- data sources: the Hub, and ../shared/data only as a documented local override (docs/data_sources.md) ----

LOCAL = "../shared/"
LOCAL_PATH = re.compile(r"\.\./shared/[^\s,}\]'\"]+")
#: The paper configs that read MATH or the catalog, each with a comment line of flags that read the local copy.
LOCAL_OVERRIDES = (
    "build_llama32_3b.yaml",
    "eval_lr_selection.yaml",
    "grpo_qlora_llama32_3b.yaml",
    "label_skills_math.yaml",
    "profile_llama32_3b.yaml",
)


def labelled_math_train() -> str:
    """MATH train with the paper's Skill-Map: the records label-skills writes (the build's pool, GRPO's prompts)."""
    return f"{stage('label-skills')['output_dir']}/records.jsonl"


def strings(config: object) -> list[str]:
    if isinstance(config, dict):
        return [s for value in config.values() for s in strings(value)]
    if isinstance(config, list):
        return [s for value in config for s in strings(value)]
    return [config] if isinstance(config, str) else []


def local_override(config: str) -> tuple[str, ...]:
    """The flags of ``config``'s comment line that reads ``../shared/data`` instead of the Hub (none if it has none)."""
    lines = [line for line in (PAPER / config).read_text().splitlines() if line.startswith("#") and LOCAL in line]
    flagged = [line for line in lines if re.search(r"\s--[\w.]+=", line)]
    assert len(flagged) <= 1, f"{config}: more than one comment line of local-override flags"
    return tuple(shlex.split(flagged[0][flagged[0].index("--") :])) if flagged else ()


def documented_command(config: str) -> tuple[str, tuple[str, ...]]:
    """(subcommand, config files) of the first ``python -m stat_pl`` command in ``config``'s comments naming it."""
    for stage_name, rest in re.findall(r"^#.*?python -m stat_pl ([\w-]+)(.*)$", (PAPER / config).read_text(), re.M):
        configs = tuple(Path(c).name for c in re.findall(r"--config[ =](\S+)", rest))
        if config in configs:
            return stage_name, configs
    raise AssertionError(f"{config}: no `python -m stat_pl <stage> --config configs/paper/{config}` in its comments")


@pytest.mark.parametrize("config", sorted(p.name for p in PAPER.glob("*.yaml")))
def test_no_paper_config_reads_shared_data(config: str) -> None:
    """A user who clones stat-pl has no ../shared: every value names the Hub, a run file or a file the user makes."""
    assert not [s for s in strings(yaml.safe_load((PAPER / config).read_text())) if LOCAL in s]


def test_the_configs_that_read_math_or_the_catalog_document_a_local_override():
    assert tuple(sorted(p.name for p in PAPER.glob("*.yaml") if local_override(p.name))) == LOCAL_OVERRIDES


@pytest.mark.parametrize("config", LOCAL_OVERRIDES)
def test_a_local_override_parses_and_reads_only_shared_data_where_it_says(config: str) -> None:
    stage_name, configs = documented_command(config)
    flags = local_override(config)
    hub = parsed(stage_name, *configs)
    local = parsed(stage_name, *configs, overrides=flags)
    assert not [s for s in strings(hub) if LOCAL in s]  # defaults of the stage's classes included
    named = {path for flag in flags for path in LOCAL_PATH.findall(flag)}
    assert named and named == {s for s in strings(local) if LOCAL in s}


def test_the_pool_and_grpos_prompts_are_math_train_as_label_skills_labels_it():
    label = stage("label-skills")
    records = label["records"]["init_args"]
    assert (records["path"], records["split"]) == ("DigitalLearningGmbH/MATH-lighteval", "train")
    assert label["max_skills"] == 5 and label["relabel"] is True
    assert stage("build")["pool"]["init_args"]["path"] == labelled_math_train()
    assert stage("grpo-after-stat-sel")["data"]["init_args"]["train"][0]["init_args"]["path"] == labelled_math_train()
    catalogs = {stage(name)["catalog"] for name in ("label-skills", "profile", "build")}
    assert catalogs == {"data/skills/catalog.json"}  # one file the user provides (docs/data_sources.md)


# ---- the chain in miniature ---------------------------------------------------------------------------


def teacher_script(body: Body) -> list[str]:
    """Stage 2: the first listed skill; solving: ``n`` different solutions that agree; STAT-Syn: a new question."""
    text, n = prompt_text(body), int(body.get("n") or 1)
    if text.startswith("Solve the following"):
        return [f"Way {k}: \\boxed{{1}}" for k in range(n)]
    if "<judge>" in text:
        skill = re.search(r"^- (\S+)$", text.split("Skills of", 1)[1], re.MULTILINE).group(1)
        return [f"<judge>incorrect</judge><reason>r</reason><skill>{skill}</skill>"] * n
    skill = re.search(r'use the skill "([^"]+)"', text).group(1)
    return [f"<question>A new {skill} question, number {abs(hash(text)) % 10_000}.</question>"] * n


def overlay(folder: Path, name: str, settings: dict) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def run(stage: str, *configs: str, overrides: tuple[str, ...] = ()) -> None:
    argv = [stage, *(a for c in configs for a in ("--config", c if os.path.isabs(c) else str(PAPER / c))), *overrides]
    with mock.patch.object(sys, "argv", ["stat_pl", *argv]):
        main(argv)


def test_the_chain_runs_in_miniature_through_the_shipped_configs(tmp_path, tiny_model_dir, shared_data, monkeypatch):
    """Same configs, same relative paths between stages; only model sizes, counts and URLs are overridden, and
    MATH, the benchmarks and the catalog are read from ../shared/data with the configs' documented flags."""
    work = tmp_path / "repo"
    work.mkdir()
    (tmp_path / "shared").symlink_to(shared_data.parent)  # ../shared/data from the working directory
    monkeypatch.chdir(work)
    monkeypatch.setenv(KEY_ENV, "sk-test")
    tiny = str(tiny_model_dir)
    with LoopbackTeacherServer(teacher_script) as server:
        teacher = {"init_args": {"base_url": server.base_url, "api_key_env": KEY_ENV, "max_retries": 0}}
        run(
            "profile",
            "profile_llama32_3b.yaml",
            overlay(
                tmp_path,
                "profile",
                {
                    "questions": {"init_args": {"path": "../shared/data/math/test.jsonl", "fields": {}}},
                    "student": tiny,
                    "num_questions": 6,
                    "max_new_tokens": 12,
                    "temperature": 0.0,
                    "batch_size": 6,
                    "detector": {
                        "init_args": {"scorer": {"model": tiny, "compute_dtype": "float32", "progress": False}}
                    },
                    "teacher": teacher,
                },
            ),
            overrides=local_override("profile_llama32_3b.yaml"),
        )
        run(
            "build",
            "build_llama32_3b.yaml",
            overlay(
                tmp_path,
                "build",
                {
                    "contamination_benchmarks": ["math", "gsm8k", "amc23", "aime24"],
                    "teacher": teacher,
                    "plot": False,
                    "builders": [
                        {"class_path": "stat_pl.building.StatSel", "init_args": {"target_size": 24}},
                        {
                            "class_path": "stat_pl.building.StatSyn",
                            "init_args": {"target_size": 6, "question_teacher": teacher},  # gpt-4o on loopback
                        },
                    ],
                },
            ),
            overrides=local_override("build_llama32_3b.yaml"),
        )
    fit_overlay = overlay(
        tmp_path,
        "fit",
        {
            "trainer": {
                "accelerator": "cpu",
                "precision": "32-true",
                "max_steps": 3,
                "logger": {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(tmp_path / "logs")},
                },
                "enable_progress_bar": False,
                "enable_model_summary": False,
                "enable_checkpointing": False,
            },
            "model": {
                "init_args": {
                    "student": {"model": tiny, "quantization": "none", "gradient_checkpointing": False},
                    "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 2e-4}},
                }
            },
            "data": {"init_args": {"max_length": 1024, "num_workers": 0}},
        },
    )
    run("fit", "sft_qlora_llama32_3b.yaml", fit_overlay)
    run("fit", "sft_qlora_llama32_3b.yaml", "fit_stat_syn.yaml", fit_overlay)
    prompts = work / "math_train_head.jsonl"  # 8 MATH training questions: the tiny tokenizer is slow on all 7,500
    prompts.write_text("".join((shared_data / "math" / "train.jsonl").open().readlines()[:8]))
    grpo_overlay = overlay(
        tmp_path,
        "grpo",
        {
            # no logger: the run's config.yaml goes to its default_root_dir, where the asserts below read it
            "trainer": {**yaml.safe_load(Path(fit_overlay).read_text())["trainer"], "max_steps": 1, "logger": False},
            "model": {
                "init_args": {
                    "student": {"model": tiny, "quantization": "none", "gradient_checkpointing": False},
                    "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}},
                    "max_new_tokens": 8,  # engine: auto is HF on a CPU
                    "mini_batch_groups": 2,
                    "micro_batch_groups": 1,
                }
            },
            "data": {
                "init_args": {
                    "train": [{"class_path": "stat_pl.records.RecordSource", "init_args": {"path": str(prompts)}}],
                    "batch_size": 2,
                    "max_prompt_length": 4096,
                    "num_workers": 0,
                }
            },
        },
    )
    run("fit", "grpo_qlora_llama32_3b.yaml", grpo_overlay)
    run("fit", "grpo_qlora_llama32_3b.yaml", "grpo_from_base.yaml", grpo_overlay)
    run(
        "evaluate",
        "eval_table3.yaml",
        overlay(
            tmp_path,
            "evaluate",
            {
                "model": tiny,
                "engine": "hf",
                "max_new_tokens": 8,
                "batch_size": 8,
                "progress": False,
                "threads": 1,
                "adapters": {
                    "stat_sel": "runs/paper/fit/stat_sel/adapter",
                    "stat_syn": "runs/paper/fit/stat_syn/adapter",
                },
                "benchmarks": [{"name": "math", "path": "../shared/data/math/test.jsonl", "limit": 3}],
            },
        ),
    )

    runs = work / "runs" / "paper"
    profile = json.loads((runs / "profile" / "profile.json").read_text())
    assert profile["questions"] and profile["histogram"]
    sel = json.loads((runs / "build" / "stat_sel" / "manifest.json").read_text())
    syn = json.loads((runs / "build" / "stat_syn" / "manifest.json").read_text())
    build_config = yaml.safe_load((runs / "build" / "config.yaml").read_text())  # saved by the command line
    assert sel["rows"] == 24 and syn["rows"] > 0 and build_config["profile"] == "runs/paper/profile/profile.json"
    assert (runs / "fit" / "stat_sel" / "adapter" / "adapter_config.json").is_file()
    assert (runs / "fit" / "stat_syn" / "adapter" / "adapter_config.json").is_file()
    grpo = {name: yaml.safe_load((runs / "grpo" / name / "config.yaml").read_text()) for name in ("stat_sel", "base")}
    assert grpo["stat_sel"]["model"]["init_args"]["student"]["init_adapter"] == "runs/paper/fit/stat_sel/adapter"
    assert grpo["base"]["model"]["init_args"]["student"]["init_adapter"] is None
    assert all((runs / "grpo" / name / "adapter" / "adapter_config.json").is_file() for name in grpo)
    results = json.loads((runs / "eval" / "results.json").read_text())
    evaluated = {model["label"]: model["adapter"] for model in results["models"]}
    assert evaluated == {
        "base": None,
        "stat_sel": "runs/paper/fit/stat_sel/adapter",
        "stat_syn": "runs/paper/fit/stat_syn/adapter",
    }
    assert {label: list(scores) for label, scores in results["summary"].items()} == dict.fromkeys(evaluated, ["math"])
