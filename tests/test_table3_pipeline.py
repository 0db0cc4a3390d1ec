"""``python -m stat_pl pipeline``: Table 3's stages, their order and files, the learning-rate choice, and the
whole pipeline in miniature: every method and "+GRPO" row in the final table, killed mid-way and resumed
without asking the teacher anything twice."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from loopback_teacher import Body, LoopbackTeacherServer, prompt_text
from test_paper_pipeline import KEY_ENV, TABLE3_METHODS, parsed

from stat_pl.cli import main
from stat_pl.dvc_project import dvc_executable
from stat_pl.errors import UserError
from stat_pl.evaluation.benchmarks import BenchmarkSpec, load_benchmark, split_math_test
from stat_pl.evaluation.lr_selection import select_learning_rate, sweep_label
from stat_pl.pipeline import PAPER_LR_GRID, Table3Configs, table3_stages
from stat_pl.records import RecordSource, load_records

ROOT = Path(__file__).resolve().parents[1]
TABLE3 = ROOT / "configs" / "paper" / "table3.yaml"
GRPO_ROWS = ("base", *TABLE3_METHODS)


def shipped(**changes) -> tuple[Table3Configs, tuple[float, ...]]:
    spec = {**yaml.safe_load(TABLE3.read_text()), **changes}
    grid = tuple(spec.pop("lr_grid"))
    for key in ("output_dir", "extra_args"):
        spec.pop(key)
    return Table3Configs(**spec), grid


def stages_of(*, extra_args: dict | None = None, **changes):
    configs, grid = shipped(**changes)
    cwd = os.getcwd()
    os.chdir(ROOT)  # the config paths are relative to the project root
    try:
        return {s.name: s for s in table3_stages(configs, grid, Path("runs/paper"), extra_args or {})}
    finally:
        os.chdir(cwd)


# ---- the stages ---------------------------------------------------------------------------------------


def test_table3_runs_every_method_at_every_rate_then_grpo_and_evaluation_in_order():
    stages = stages_of()
    names = list(stages)
    sweeps = [n for n in names if n.startswith("sft-")]
    assert len(sweeps) == len(TABLE3_METHODS) * len(PAPER_LR_GRID) == 35
    assert [n for n in names if n.startswith("grpo-")] == [f"grpo-{row}" for row in GRPO_ROWS]
    assert names[:5] == ["label", "profile", "profile_eval", "build", "build_baselines"]
    assert names.index("lr_selection") > max(map(names.index, sweeps))
    assert names.index("select_lr") < min(names.index(f"grpo-{row}") for row in GRPO_ROWS) and names[-1] == "evaluate"
    built = {out for name in ("build", "build_baselines") for out in stages[name].outs}
    assert built == {f"runs/paper/build/{m}" for m in TABLE3_METHODS}
    sweep = stages["sft-stat_syn-lr8e-05"]
    assert sweep.argv[-2:] == [
        "--trainer.default_root_dir=runs/paper/sweep/stat_syn/lr8e-05",
        "--model.init_args.optimizer.init_args.lr=8e-05",
    ]
    assert sweep.deps == [
        "configs/paper/sft_qlora_llama32_3b.yaml",
        "configs/paper/fit_stat_syn.yaml",
        "runs/paper/build/stat_syn",
    ]


def test_the_chosen_adapters_are_where_grpo_and_table3_read_them():
    """select-lr writes runs/paper/fit/<method>; the shipped GRPO overlays and eval_table3.yaml read from there."""
    stages = stages_of()
    assert stages["select_lr"].outs == [f"runs/paper/fit/{m}" for m in TABLE3_METHODS]
    evaluate = parsed("evaluate", "eval_table3.yaml")
    written = {out for s in stages.values() for out in s.outs}
    for label, adapter in evaluate["adapters"].items():
        assert str(Path(adapter).parent) in written, label
    for row in GRPO_ROWS:
        grpo = stages[f"grpo-{row}"]
        if row != "base":
            assert f"runs/paper/fit/{row}" in grpo.deps
        assert f"runs/paper/grpo/{row}" in stages["evaluate"].deps
    sweep = json.loads(next(a.split("=", 1)[1] for a in stages["select_lr"].argv if a.startswith("--sweeps=")))
    adapters = json.loads(next(a.split("=", 1)[1] for a in stages["lr_selection"].argv if a.startswith("--adapters=")))
    assert adapters[sweep_label("math_hard", 2e-4)] == "runs/paper/sweep/math_hard/lr0.0002/adapter"
    assert set(sweep["stat_sel"]) == {str(lr) for lr in PAPER_LR_GRID}


def test_one_learning_rate_trains_each_method_once_into_its_fit_folder():
    stages = stages_of(lr_grid=[2e-4])
    assert "lr_selection" not in stages and "select_lr" not in stages
    assert stages["sft-math_train-lr0p0002"].outs == ["runs/paper/fit/math_train"]


def test_extra_arguments_come_after_the_configs_and_before_what_the_pipeline_forces():
    stages = stages_of(extra_args={"sweep": ["--config", "small.yaml", "--trainer.devices=4"]})
    argv = stages["sft-stat_sel-lr0p0005"].argv
    assert argv[argv.index("small.yaml") + 1] == "--trainer.devices=4"
    assert argv[-1] == "--model.init_args.optimizer.init_args.lr=0.0005"  # an overlay's lr cannot undo the sweep
    assert "small.yaml" in stages["sft-stat_sel-lr0p0005"].deps  # a changed overlay reruns the stage


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"extra_args": {"sft": []}}, "unknown stage group"),
        ({"grpo_overlays": {"math_500": None}}, "neither 'base' nor a method"),
        ({"lr_grid": [2e-4, 2e-4]}, "distinct positive"),
        ({"evaluate": ["configs/paper/no_such.yaml"]}, "no_such.yaml does not exist"),
        (
            {"sft_overlays": {"stat_sel": None, "math_500": None}, "grpo_overlays": {"base": None}},
            "no build stage writes the set of ['math_500']",
        ),
    ],
)
def test_a_bad_pipeline_config_is_named(changes, message):
    extra_args = changes.pop("extra_args", None)
    with pytest.raises(UserError, match=re.escape(message)):
        stages_of(extra_args=extra_args, **changes)


def test_math_validation_is_the_profiles_split(shared_data):
    source = RecordSource(path=str(shared_data / "math" / "test.jsonl"), name="math")
    validation, _ = split_math_test(load_records(source))
    chosen_on = load_benchmark(BenchmarkSpec(name="math_validation", path=source.path))
    assert [r.id for r in chosen_on] == [r.id for r in validation] and len(chosen_on) == 1000


# ---- select-lr ----------------------------------------------------------------------------------------


def sweep_run(folder: Path, marker: str) -> str:
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps({"marker": marker}))
    return str(folder)


def results_file(tmp_path: Path, scores: dict[str, float]) -> str:
    path = tmp_path / "results.json"
    summary = {label: {"math_validation": {"pass@1": value}} for label, value in scores.items()}
    path.write_text(json.dumps({"summary": {"base": {"math_validation": {"pass@1": 0.1}}, **summary}}))
    return str(path)


def test_select_lr_copies_the_best_run_and_breaks_ties_by_grid_order(tmp_path):
    runs = {str(lr): sweep_run(tmp_path / "sweep" / f"lr{lr:g}", f"{lr:g}") for lr in (5e-4, 2e-4, 1e-4)}
    scores = {sweep_label("a", 5e-4): 0.30, sweep_label("a", 2e-4): 0.42, sweep_label("a", 1e-4): 0.42}
    chosen = select_learning_rate(results_file(tmp_path, scores), {"a": runs}, str(tmp_path / "fit"))
    assert chosen["a"]["lr"] == 2e-4
    adapter = json.loads((tmp_path / "fit" / "a" / "adapter" / "adapter_config.json").read_text())
    assert adapter == {"marker": "0.0002"}
    selection = json.loads((tmp_path / "fit" / "a" / "selection.json").read_text())
    assert selection["scores"] == {"0.0005": 0.30, "0.0002": 0.42, "0.0001": 0.42}


def test_select_lr_names_a_run_the_evaluation_lacks(tmp_path):
    runs = {"5e-4": sweep_run(tmp_path / "a", "x"), "2e-4": sweep_run(tmp_path / "b", "y")}
    results = results_file(tmp_path, {sweep_label("m", 5e-4): 0.3})
    with pytest.raises(UserError, match=re.escape("no math_validation pass@1 for 'm@lr0.0002'")):
        select_learning_rate(results, {"m": runs}, str(tmp_path / "fit"))


# ---- the whole pipeline in miniature ------------------------------------------------------------------


def mini_teacher(gold: dict[str, str]):
    """Labels and Stage 2: the first listed skill; solving: agreeing answers, the gold one for a pool question
    (MATH-Augment keeps only rewrites that reach it); new questions: numbered."""

    def answer(body: Body) -> list[str]:
        text, n = prompt_text(body), int(body.get("n") or 1)
        if text.startswith("Solve the following"):
            value = gold.get(text.split("\n\n", 1)[1].strip(), "1")
            return [f"Way {k}: \\boxed{{{value}}}" for k in range(n)]
        if "<question>" in text:
            return [f"<question>A new question, number {abs(hash(text)) % 10_000}.</question>"] * n
        first_skill = re.search(r"^- (\S+)$", text.split("Skills of", 1)[1], re.MULTILINE).group(1)
        if "<judge>" in text:
            return [f"<judge>incorrect</judge><reason>r</reason><skill>{first_skill}</skill>"] * n
        return [f"<skill>{first_skill}</skill>"] * n

    return answer


def overlay(folder: Path, name: str, settings: dict) -> list[str]:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return ["--config", str(path)]


def mini_extra_args(folder: Path, tiny: str, teacher_url: str, pool: Path) -> dict[str, list[str]]:
    """Small models, counts and the loopback teacher per stage group; local data instead of the Hub."""
    catalog = "--catalog=../shared/data/skills/catalog.json"
    math_test = "../shared/data/math/test.jsonl"
    teacher = {"init_args": {"base_url": teacher_url, "api_key_env": KEY_ENV, "max_retries": 0}}
    profile = {
        "questions": {"init_args": {"path": math_test, "fields": {}}},
        "student": tiny,
        "num_questions": 6,
        "max_new_tokens": 12,
        "temperature": 0.0,
        "batch_size": 6,
        "detector": {"init_args": {"scorer": {"model": tiny, "compute_dtype": "float32", "progress": False}}},
    }
    benchmarks = "{math: ../shared/data/math/test.jsonl, gsm8k: ../shared/data/eval/gsm8k.jsonl}"
    build = ["--contamination_benchmarks=[math, gsm8k]", f"--benchmark_paths={benchmarks}", catalog]
    small_sets = {"target_size": 8}
    embedder = {"model": "offline:all-minilm-l6-v2"}
    trainer = {
        "accelerator": "cpu",
        "precision": "32-true",
        "max_steps": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
    }
    student = {"model": tiny, "quantization": "none", "gradient_checkpointing": False}
    evaluation = {"model": tiny, "engine": "hf", "max_new_tokens": 8, "batch_size": 8, "progress": False, "threads": 1}
    return {
        "label": [
            *overlay(folder, "label", {"teacher": teacher}),
            f"--records.path={pool}",
            "--records.fields={}",
            catalog,
        ],
        "profile": [*overlay(folder, "profile", {**profile, "teacher": teacher}), catalog],
        "profile_eval": [*overlay(folder, "profile_eval", profile), catalog],
        "build": [
            *overlay(
                folder,
                "build",
                {
                    "teacher": teacher,
                    "plot": False,
                    "builders": [
                        {"class_path": "stat_pl.building.StatSel", "init_args": small_sets},
                        {
                            "class_path": "stat_pl.building.StatSyn",
                            "init_args": {**small_sets, "question_teacher": teacher},
                        },
                    ],
                },
            ),
            *build,
        ],
        "build_baselines": [
            *overlay(
                folder,
                "build_baselines",
                {
                    "teacher": teacher,
                    "plot": False,
                    "questions": {"init_args": {"path": math_test, "fields": {}}},
                    "builders": [
                        {"class_path": "stat_pl.building.MathTrain"},
                        {"class_path": "stat_pl.building.MathHard", "init_args": {**small_sets, "levels": [3, 4, 5]}},
                        {"class_path": "stat_pl.building.MathAugment", "init_args": small_sets},
                        {
                            "class_path": "stat_pl.building.EmbedSel",
                            "init_args": {**small_sets, "embedding_model": embedder},
                        },
                        {
                            "class_path": "stat_pl.building.EmbedSyn",
                            "init_args": {**small_sets, "embedding_model": embedder},
                        },
                    ],
                },
            ),
            *build,
        ],
        "sweep": overlay(
            folder,
            "sweep",
            {
                "trainer": {**trainer, "logger": {"class_path": "CSVLogger", "init_args": {"save_dir": str(folder)}}},
                "model": {"init_args": {"student": student, "optimizer": {"class_path": "torch.optim.AdamW"}}},
                "data": {"init_args": {"num_workers": 0}},
            },
        ),
        "lr_selection": [
            *overlay(folder, "lr_selection", evaluation),
            f"--benchmarks=[{{name: math_validation, path: {math_test}, limit: 2}}]",
        ],
        "grpo": [
            *overlay(
                folder,
                "grpo",
                {
                    "trainer": trainer,
                    "model": {
                        "init_args": {
                            "student": student,
                            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}},
                            "max_new_tokens": 8,
                            "mini_batch_groups": 2,
                            "micro_batch_groups": 1,
                        }
                    },
                    "data": {"init_args": {"batch_size": 2, "max_prompt_length": 4096, "num_workers": 0}},
                },
            ),
            "--data.init_args.catalog=../shared/data/skills/catalog.json",
        ],
        "evaluate": [
            *overlay(folder, "evaluate", evaluation),
            f"--benchmarks=[{{name: math, path: {math_test}, limit: 2}}]",
        ],
    }


def start_pipeline(work: Path, argv: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, KEY_ENV: "sk-test", "STAT_PL_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "stat_pl", *argv],
        cwd=work,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the pipeline, DVC and the running stage form one group, killed together
    )


def wait_for(process: subprocess.Popen, log: Path, pattern: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not re.search(pattern, log.read_text(), re.MULTILINE):
        assert process.poll() is None, f"the pipeline ended before {pattern!r}:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no {pattern!r} within {timeout_s} s:\n{log.read_text()[-4000:]}"
        time.sleep(0.5)


@pytest.mark.slow
def test_table3_in_miniature_is_killed_mid_way_and_resumes_without_asking_the_teacher_twice(
    tmp_path, tiny_model_dir, shared_data
):
    try:
        dvc_executable()
    except UserError as missing:  # CI installs it: .ci/install_dvc.sh
        pytest.skip(str(missing))
    work = tmp_path / "repo"
    work.mkdir()
    (tmp_path / "shared").symlink_to(shared_data.parent)  # ../shared/data from the working directory
    (work / "configs").symlink_to(ROOT / "configs")  # the shipped configs, at the paths table3.yaml names
    rows = (shared_data / "math" / "train.jsonl").open().readlines()
    pool = work / "math_train_sample.jsonl"  # 60 training questions, every subject: label-skills labels these
    pool.write_text("".join(rows[:: len(rows) // 60][:60]))
    gold = {row["problem"].strip(): row["answer"] for row in map(json.loads, pool.read_text().splitlines())}
    with LoopbackTeacherServer(mini_teacher(gold)) as teacher:
        extra = mini_extra_args(tmp_path, str(tiny_model_dir), teacher.base_url, pool)
        argv = [
            "pipeline",
            "--config",
            "configs/paper/table3.yaml",
            "--lr_grid=[2.0e-4, 1.0e-4]",
            f"--extra_args={json.dumps(extra)}",
        ]
        first = start_pipeline(work, argv, tmp_path / "first.log")
        wait_for(first, tmp_path / "first.log", r"^pipeline: \[\d+/\d+\] sft-math_hard-lr0p0002: running", 900)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        asked_before_the_kill = teacher.count
        second = start_pipeline(work, argv, tmp_path / "second.log")
        assert second.wait(timeout=1800) == 0, (tmp_path / "second.log").read_text()[-6000:]
        log = (tmp_path / "second.log").read_text()
        requests = teacher.requests_per_key()

    assert asked_before_the_kill == teacher.count  # every teacher stage had finished: the rerun asked nothing
    assert set(requests.values()) == {1}, "a teacher request was sent twice"
    for name in ("label", "profile", "build", "build_baselines", "sft-math_train-lr0p0002"):
        assert re.search(rf"\] {name}: skipped: unchanged", log), name
    assert re.search(r"\] sft-math_hard-lr0p0002: running", log)  # the killed stage runs again
    runs = work / "runs" / "paper"
    table = (runs / "table3.md").read_text()
    for row in ("base", *TABLE3_METHODS, *(f"{m}+grpo" for m in GRPO_ROWS)):  # our MATH score beside the paper's
        assert re.search(rf"^\| {re.escape(row)} \| [^|]+ \| \d+\.\d \(\d+\.\d\) \|", table, re.MULTILINE), row
    assert (runs / "table3.png").stat().st_size > 0
    chosen = {m: json.loads((runs / "fit" / m / "selection.json").read_text())["lr"] for m in TABLE3_METHODS}
    assert set(chosen.values()) <= {2e-4, 1e-4}
    # a third run finds everything current and runs nothing
    third = subprocess.run(
        [sys.executable, "-m", "stat_pl", *argv],
        cwd=work,
        env={**os.environ, KEY_ENV: "sk-test", "HF_DATASETS_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert third.returncode == 0 and ": running" not in third.stdout, third.stdout[-3000:]


def test_select_lr_from_the_command_line_reads_the_sweeps_as_the_pipeline_writes_them(tmp_path, monkeypatch):
    """The pipeline passes ``--sweeps`` as JSON, whose keys are text: the rates must still compare as numbers."""
    runs = {lr: sweep_run(tmp_path / f"lr{lr:g}", f"{lr:g}") for lr in (2e-4, 1e-4)}
    results = results_file(tmp_path, {sweep_label("stat_sel", 2e-4): 0.1, sweep_label("stat_sel", 1e-4): 0.2})
    sweeps = json.dumps({"stat_sel": runs})  # what table3_stages writes: json.dumps of float keys
    monkeypatch.setattr(sys, "argv", ["stat_pl"])
    main(["select-lr", f"--results={results}", f"--sweeps={sweeps}", f"--output_dir={tmp_path / 'fit'}"])
    assert json.loads((tmp_path / "fit" / "stat_sel" / "selection.json").read_text())["lr"] == 1e-4
    assert (tmp_path / "fit" / "config.yaml").is_file()  # the stage's config, as every offline stage saves it
