"""Evaluation: pass@k, benchmarks and the MATH split, per-group tables, resumable runs, bad input."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import random
import re
from fractions import Fraction
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from stat_pl.building.contamination import ContaminationGuard
from stat_pl.callbacks.benchmark_eval import BenchmarkEvaluator
from stat_pl.engines.base import Completion, SamplingParams
from stat_pl.evaluation.adapters import AdapterMismatchError, ModelEntry
from stat_pl.evaluation.benchmarks import (
    BENCHMARKS,
    BenchmarkSpec,
    contamination_sources,
    load_benchmark,
    split_math_test,
)
from stat_pl.evaluation.evaluate import EvalSettings, evaluate, run_evaluation
from stat_pl.evaluation.metrics import AvgAtK, GroupedAccuracy, MetricName, PassAtK, pass_at_k
from stat_pl.evaluation.scoring import QuestionResult, breakdowns
from stat_pl.evaluation.store import ResultStore
from stat_pl.grading import grade
from stat_pl.models import LoRAConfig, load_causal_lm
from stat_pl.records import ProblemRecord, RecordError, load_records, problem_key

# ---- pass@k ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 64])
def test_pass_at_k_edges(n: int) -> None:
    for k in range(1, n + 1):
        assert pass_at_k(n, 0, k) == 0.0
        assert pass_at_k(n, n, k) == 1.0
    for c in range(1, n + 1):
        assert pass_at_k(n, c, n) == 1.0  # k = n: any correct sample among all of them
    assert pass_at_k(n, n // 2, 1) == pytest.approx((n // 2) / n)


def test_pass_at_k_equals_brute_force_enumeration() -> None:
    for n in range(1, 7):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                expected = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_where_binomials_overflow_floats() -> None:
    n, c, k = 2000, 7, 64
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    with pytest.raises(ValueError, match="at least 64 samples"):
        pass_at_k(10, 3, 64)


def test_metrics_average_over_questions() -> None:
    metric = PassAtK(k=2)
    metric.update(torch.tensor([0, 1, 4]), torch.tensor([4, 4, 4]))
    assert float(metric.compute()) == pytest.approx((0 + 0.5 + 1) / 3)
    avg = AvgAtK()
    avg.update([1, 3], [4, 4])
    assert float(avg.compute()) == pytest.approx(0.5)
    assert str(MetricName.parse("AVG@64")) == "avg@64"
    with pytest.raises(ValueError, match="unknown metric 'top@3'"):
        MetricName.parse("top@3")


def test_grouped_accuracy_counts_a_question_in_each_of_its_skills() -> None:
    metric = GroupedAccuracy(["a", "b", "c"])
    metric.update([["a"], ["a", "b"], ["b"]], [1.0, 0.5, 0.0])
    assert metric.as_table() == {"a": {"accuracy": 0.75, "questions": 2}, "b": {"accuracy": 0.25, "questions": 2}}
    with pytest.raises(KeyError, match="'z'"):
        metric.update([["z"]], [1.0])


def test_breakdowns_by_level_count_only_questions_with_a_level() -> None:
    levels = [1, 1, 5, None]
    records = [ProblemRecord(f"q{i}", "p", "1", subject="algebra", level=level) for i, level in enumerate(levels)]
    results = [
        QuestionResult(r.id, ["r"] * 2, ["1"] * 2, correct, [1, 1], ["stop"] * 2)
        for r, correct in zip(records, [[True, True], [False, True], [False, False], [True, True]], strict=True)
    ]
    tables = breakdowns(records, [r.score for r in results])
    assert tables["level"] == {
        "level 1": {"accuracy": 0.75, "questions": 2},
        "level 5": {"accuracy": 0.0, "questions": 1},
    }
    assert tables["subject"] == {"algebra": {"accuracy": 0.625, "questions": 4}}
    assert "skill" not in tables


# ---- benchmarks -----------------------------------------------------------------------------------


def test_math_split_is_seeded_disjoint_and_order_free(shared_data: Path) -> None:
    records = load_benchmark(BenchmarkSpec("user_math", path=str(shared_data / "math" / "test.jsonl")))
    validation, evaluation = split_math_test(records, seed=0)
    assert (len(validation), len(evaluation)) == (1000, 3000)  # the local copy has 4,000 of the 5,000
    assert not {r.id for r in validation} & {r.id for r in evaluation}
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    assert [r.id for r in split_math_test(shuffled, seed=0)[0]] == [r.id for r in validation]
    assert [r.id for r in split_math_test(records, seed=1)[0]] != [r.id for r in validation]
    hub_like = [
        dataclasses.replace(r, id=str(n), problem=f"  {r.problem}\n") for n, r in enumerate(shuffled)
    ]  # row-number ids, padding: a Hub copy of the same questions
    assert [problem_key(r.problem) for r in split_math_test(hub_like, seed=0)[0]] == [
        problem_key(r.problem) for r in validation
    ]
    twice = split_math_test([*records, dataclasses.replace(validation[0], id="copy")], seed=0)
    assert "copy" in {r.id for r in twice[0]} and len(twice[1]) == 3000  # a repeated question stays on one side
    math_bench = load_benchmark(BenchmarkSpec("math", path=str(shared_data / "math" / "test.jsonl"), limit=5))
    assert [r.id for r in math_bench] == [r.id for r in evaluation[:5]]
    with pytest.raises(ValueError, match="validation_size=4000"):
        split_math_test(records, validation_size=4000)


def test_math_d_keeps_the_difficult_questions_of_the_evaluation_split(shared_data: Path, tmp_path: Path) -> None:
    test_file = str(shared_data / "math" / "test.jsonl")
    evaluation = split_math_test(load_benchmark(BenchmarkSpec("m", path=test_file)))[1]
    chosen = [evaluation[3].id, evaluation[10].id]
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"histogram": {}, "questions": {i: ["x"] for i in chosen}}))
    math_d = load_benchmark(BenchmarkSpec("math_d", path=test_file, difficult=str(profile)))
    assert sorted(r.id for r in math_d) == sorted(chosen)
    validation_ids = tmp_path / "validation_ids.txt"
    validation_ids.write_text(split_math_test(load_benchmark(BenchmarkSpec("m", path=test_file)))[0][0].id + "\n")
    with pytest.raises(ValueError, match="none of the 1 ids .* is in the MATH evaluation split"):
        load_benchmark(BenchmarkSpec("math_d", path=test_file, difficult=str(validation_ids)))


def test_registry_names_hub_sources_and_rejects_unknown_names() -> None:
    assert BENCHMARKS["gsm8k"].hub.answer_delimiter == "####"
    assert BENCHMARKS["math500"].hub.path == "HuggingFaceH4/MATH-500"
    assert {b.name for b in BENCHMARKS.values() if not b.verified} == {
        "math2",
        "math_perturb_simple",
        "math_perturb_hard",
    }
    with pytest.raises(ValueError, match="unknown benchmark 'gsm9k'; known: .*'gsm8k'"):
        BenchmarkSpec("gsm9k")
    with pytest.raises(ValueError, match="needs `difficult:`"):
        BenchmarkSpec("math_d")
    with pytest.raises(ValueError, match="samples=8 is fewer than the largest K \\(64\\)"):
        BenchmarkSpec("aime24", metrics=["pass@64"], samples=8)


def test_amc23_reads_the_papers_source_and_its_columns(tmp_path: Path) -> None:
    """The registry's AMC23 is AI-MO/aimo-validation-amc (83 rows); a file shaped like its rows loads as it."""
    hub = BENCHMARKS["amc23"].hub
    assert (hub.path, hub.split, hub.subset, BENCHMARKS["amc23"].hub_questions) == (
        "AI-MO/aimo-validation-amc",
        "train",
        None,
        83,
    )
    rows = tmp_path / "aimo_validation_amc.jsonl"  # the Hub's columns: id (int), problem, answer (float), url
    rows.write_text(
        json.dumps({"id": 7, "problem": "What is $3^3$?", "answer": 27.0, "url": "https://example.org/7"}) + "\n"
    )
    (record,) = load_records(dataclasses.replace(hub, path=str(rows)))
    assert (record.id, record.problem, record.answer, record.source) == ("7", "What is $3^3$?", "27.0", "amc23")
    assert grade("so the answer is \\boxed{27}", record.answer)


def test_the_local_amc23_copy_loads_and_says_it_is_not_the_papers_set(
    shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="stat_pl.evaluation.benchmarks"):
        records = load_benchmark(BenchmarkSpec("amc23", path=str(shared_data / "eval" / "amc23.jsonl")))
    assert len(records) == 40
    assert "40 questions" in caplog.text and "not the 83 of the registry's AI-MO/aimo-validation-amc" in caplog.text


def test_a_row_without_an_answer_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?"}\n')
    with pytest.raises(RecordError, match=re.escape(f"{path}:2: field 'answer'")):
        load_benchmark(BenchmarkSpec("mine", path=str(path)))


# ---- a run with scripted outputs ------------------------------------------------------------------

QUESTIONS = [  # id, subject, skills, gold, what the fake student answers
    ("q1", "algebra", ["linear_equations"], "4", "4"),
    ("q2", "algebra", ["linear_equations", "factoring"], "6", "7"),
    ("q3", "geometry", ["area"], "\\frac{1}{2}", "0.5"),
    ("q4", "geometry", ["area", "factoring"], "9", "9"),
    ("q5", "number_theory", ["modular_arithmetic"], "3", "1"),
]
# hand-counted from the table above
SUBJECTS = {"algebra": (0.5, 2), "geometry": (1.0, 2), "number_theory": (0.0, 1)}
SKILLS = {"linear_equations": (0.5, 2), "factoring": (0.5, 2), "area": (1.0, 2), "modular_arithmetic": (0.0, 1)}


class ScriptedEngine:
    """Answers each question with its scripted answer; counts the completions it was asked for."""

    def __init__(self, answers: dict[str, str], fail_after_calls: int | None = None) -> None:
        self.answers = answers
        self.completions = 0
        self.calls = 0
        self.fail_after_calls = fail_after_calls

    def generate(self, prompts, sampling: SamplingParams) -> list[list[Completion]]:
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt
        self.calls += 1
        self.completions += len(prompts) * sampling.n
        return [
            [Completion(f"So the answer is \\boxed{{{self.answers[p[-1]['content']]}}}.", 8, "stop")] * sampling.n
            for p in prompts
        ]


@pytest.fixture
def scripted_benchmark(tmp_path: Path) -> BenchmarkSpec:
    path = tmp_path / "scripted.jsonl"
    rows = [
        {"id": i, "problem": f"question {i}", "answer": gold, "subject": s, "skills": sk}
        for i, s, sk, gold, _ in QUESTIONS
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return BenchmarkSpec("scripted", path=str(path), metrics=["pass@1", "pass@2", "avg@2"])


def _run(spec: BenchmarkSpec, out: Path, engine: ScriptedEngine) -> dict:
    entries = [ModelEntry("base", "fake-model")]
    return run_evaluation(entries, [spec], out, EvalSettings(batch_size=4, progress=False), lambda _: engine)


def test_scripted_run_tables_match_hand_counts_and_a_rerun_generates_nothing(
    scripted_benchmark: BenchmarkSpec, tmp_path: Path
) -> None:
    answers = {f"question {i}": said for i, *_, said in QUESTIONS}
    first = ScriptedEngine(answers)
    results = _run(scripted_benchmark, tmp_path / "out", first)
    assert first.completions == 5 + 5 * 2  # pass@1 one sample, pass@2 and avg@2 share two
    assert results["summary"]["base"]["scripted"] == {"pass@1": 0.6, "pass@2": 0.6, "avg@2": 0.6}
    groups = results["breakdowns"]["base"]["scripted"]
    assert {k: (v["accuracy"], v["questions"]) for k, v in groups["subject"].items()} == SUBJECTS
    assert {k: (v["accuracy"], v["questions"]) for k, v in groups["skill"].items()} == SKILLS
    assert "level" not in groups

    table = (tmp_path / "out" / "table.md").read_text()
    header, _, row = table.splitlines()[:3]
    cells = dict(zip(header.strip("| ").split(" | "), row.strip("| ").split(" | "), strict=True))
    for metric, value in results["summary"]["base"]["scripted"].items():
        assert float(cells[f"scripted {metric}"]) == pytest.approx(100 * value, abs=0.05)
    assert float(cells["Avg"]) == pytest.approx(60.0, abs=0.05)  # Table 3's Avg: the row's mean over its columns
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk["summary"] == results["summary"]
    q2 = next(q for q in on_disk["questions"] if q["id"] == "q2" and q["setting"]["n"] == 1)
    assert (q2["answers"], q2["correct"], q2["gold"]) == (["7"], [False], "6")
    assert (tmp_path / "out" / "plots" / "scripted_skill.png").stat().st_size > 0

    second = ScriptedEngine(answers)
    again = _run(scripted_benchmark, tmp_path / "out", second)
    assert second.completions == 0 and again["generation"]["completions_generated"] == 0
    assert again["summary"] == results["summary"]


def test_an_interrupted_run_resumes_with_what_is_missing(scripted_benchmark: BenchmarkSpec, tmp_path: Path) -> None:
    answers = {f"question {i}": said for i, *_, said in QUESTIONS}
    with pytest.raises(KeyboardInterrupt):
        _run(scripted_benchmark, tmp_path / "out", ScriptedEngine(answers, fail_after_calls=1))
    assert len(ResultStore(tmp_path / "out" / "generations.jsonl")) == 4  # one chunk of 4 questions (n=1)
    resumed = ScriptedEngine(answers)
    results = _run(scripted_benchmark, tmp_path / "out", resumed)
    assert resumed.completions == 1 + 5 * 2
    assert results["summary"]["base"]["scripted"]["pass@1"] == 0.6


def test_a_line_cut_short_by_an_interruption_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "generations.jsonl"
    good = {
        "key": "k1",
        "question_id": "q",
        "responses": ["r"],
        "answers": ["1"],
        "correct": [True],
        "num_tokens": [1],
        "finish_reasons": ["stop"],
    }
    path.write_text(json.dumps(good) + "\n" + '{"key": "k2", "resp')
    store = ResultStore(path)
    assert len(store) == 1 and store.get("k1").correct == [True]
    assert path.read_text() == json.dumps(good) + "\n"
    path.write_text('{"broken\n' + json.dumps(good) + "\n")
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}:1: malformed result line"):
        ResultStore(path)


# ---- the real stage on the tiny model -------------------------------------------------------------


def _tiny_adapter(base: Path, out: Path) -> Path:
    model = load_causal_lm(str(base), lora=LoRAConfig(r=2, alpha=4))
    model.save_pretrained(str(out))
    return out


def test_evaluate_on_the_tiny_model_with_an_adapter(
    tiny_model_dir: Path, scripted_benchmark: BenchmarkSpec, tmp_path: Path
) -> None:
    adapter = _tiny_adapter(tiny_model_dir, tmp_path / "adapter")
    results = evaluate(
        str(tiny_model_dir),
        [scripted_benchmark],
        adapters={"sft": str(adapter)},
        output_dir=str(tmp_path / "out"),
        max_new_tokens=3,
        batch_size=8,
        progress=False,
    )
    assert list(results["summary"]) == ["base", "sft"]
    assert results["generation"]["completions_generated"] == 2 * (5 + 10)
    assert results["settings"]["max_new_tokens"] == 3 and results["benchmarks"][0]["name"] == scripted_benchmark.name
    rows = [q for q in results["questions"] if q["model"] == "sft"]
    assert len(rows) == 10 and all(len(q["responses"]) == q["setting"]["n"] for q in rows)


def test_an_adapter_of_another_base_model_is_an_error(
    tiny_model_dir: Path, tmp_path: Path, scripted_benchmark: BenchmarkSpec
) -> None:
    from conftest import build_tiny_llama

    other = build_tiny_llama(tmp_path / "wider-llama", hidden=64)
    adapter = _tiny_adapter(other, tmp_path / "adapter")
    run = dict(
        benchmarks=[scripted_benchmark],
        adapters={"sft": str(adapter)},
        output_dir=str(tmp_path / "o"),
        max_new_tokens=2,
        progress=False,
    )
    with pytest.raises(AdapterMismatchError, match="was trained on .*wider-llama.* but is evaluated on"):
        evaluate(str(tiny_model_dir), **run)
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": str(tiny_model_dir)}))
    with pytest.raises(AdapterMismatchError, match="lora_A.weight has shape \\[2, 128\\] but layer .* is 64 -> 32"):
        evaluate(str(tiny_model_dir), **run)


def test_config_mistakes_are_errors_before_any_model_loads(
    tiny_model_dir: Path, scripted_benchmark: BenchmarkSpec, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="'base' is the base model's row"):
        evaluate("no-such-model", [scripted_benchmark], adapters={"base": "x"}, output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="benchmarks: each name may appear once"):
        evaluate("no-such-model", [scripted_benchmark, scripted_benchmark], output_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="adapter_config.json does not exist"):
        evaluate(str(tiny_model_dir), [scripted_benchmark], adapters={"sft": str(tmp_path)}, output_dir=str(tmp_path))


def test_vllm_without_vllm_is_a_clear_error(
    tiny_model_dir: Path, scripted_benchmark: BenchmarkSpec, tmp_path: Path
) -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    with pytest.raises(RuntimeError, match="engine: vllm needs vLLM"):
        evaluate(str(tiny_model_dir), [scripted_benchmark], engine="vllm", output_dir=str(tmp_path))


# ---- inside fit -----------------------------------------------------------------------------------


class TinyLM(L.LightningModule):
    """The tiny Llama as a LightningModule with SFTModule's shape: ``generation_model()`` and a ``model`` hparam."""

    def __init__(self, model: str) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = load_causal_lm(model).train()

    def generation_model(self) -> torch.nn.Module:
        return self.model

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch[0], labels=batch[0]).loss

    def test_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_benchmark_evaluator_logs_subset_in_fit_and_full_set_in_test(
    tiny_model_dir: Path, scripted_benchmark: BenchmarkSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Epoch ends answer the first ``subset_size`` questions (``bench_subset/``), ``test`` all of them (``bench/``)."""
    from stat_pl.engines.hf import HFEngine

    asked: set[str] = set()
    generate = HFEngine.generate

    def recording(engine: HFEngine, prompts, sampling: SamplingParams) -> list[list[Completion]]:
        asked.update(prompt[-1]["content"] for prompt in prompts)
        return generate(engine, prompts, sampling)

    monkeypatch.setattr(HFEngine, "generate", recording)  # the live model still generates
    evaluator = BenchmarkEvaluator([scripted_benchmark], subset_size=2, max_new_tokens=2, batch_size=4)
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[evaluator],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = TinyLM(str(tiny_model_dir))
    data = DataLoader(TensorDataset(torch.randint(0, 100, (2, 8))), batch_size=2)
    metrics = ("pass@1", "pass@2", "avg@2")

    trainer.fit(module, train_dataloaders=data)
    assert asked == {"question q1", "question q2"}  # the benchmark's first two
    assert evaluator.last_metrics.keys() == {f"bench_subset/scripted/{m}" for m in metrics}
    assert set(trainer.callback_metrics) >= evaluator.last_metrics.keys()
    assert module.model.training  # generation put train mode back

    asked.clear()
    trainer.test(module, dataloaders=data, verbose=False)
    assert asked == {f"question {question[0]}" for question in QUESTIONS}  # every question
    assert evaluator.last_metrics.keys() == {f"bench/scripted/{m}" for m in metrics}
    assert set(trainer.callback_metrics) >= evaluator.last_metrics.keys()
    assert all(0.0 <= float(trainer.callback_metrics[name]) <= 1.0 for name in evaluator.last_metrics)


def test_evaluate_and_the_callback_take_their_defaults_from_eval_settings() -> None:
    import dataclasses
    import inspect

    from stat_pl.callbacks.benchmark_eval import BenchmarkEvaluator
    from stat_pl.evaluation.scoring import EvalSettings

    defaults = dataclasses.asdict(EvalSettings())
    stage = inspect.signature(evaluate).parameters
    assert {name: stage[name].default for name in defaults} == defaults
    callback = inspect.signature(BenchmarkEvaluator).parameters
    shared = ("temperature", "sample_temperature", "top_p", "system_prompt", "seed")
    assert {name: callback[name].default for name in shared} == {name: defaults[name] for name in shared}


def test_contamination_covers_every_registry_benchmark_whole_and_matches_by_text(shared_data: Path) -> None:
    hub = contamination_sources(["all"])
    hub_names = {s.name for s in hub}
    # MATH-D and MATH-Val are MATH's questions, read once
    assert (
        hub_names | {"math_d", "math_validation"} == set(BENCHMARKS) and not {"math_d", "math_validation"} & hub_names
    )
    local = {
        "math": str(shared_data / "math" / "test.jsonl"),
        "gsm8k": str(shared_data / "eval" / "gsm8k.jsonl"),
        "amc23": str(shared_data / "eval" / "amc23.jsonl"),
        "aime24": str(shared_data / "eval" / "aime24.jsonl"),
    }
    sources = contamination_sources(list(local), local)
    guard = ContaminationGuard.from_records(r for s in sources for r in load_records(s))
    assert len(guard) == 4000 + sum(len(load_records(local[n])) for n in ("gsm8k", "amc23", "aime24"))  # MATH whole
    gsm = load_records(local["gsm8k"])[0]
    assert guard.check("  " + gsm.problem.replace("$", " $ ") + "\n").reference_id == gsm.id
    with pytest.raises(ValueError, match=r"unknown name\(s\) \['mmlu'\]"):
        contamination_sources(["mmlu"])


def test_a_new_set_is_scored_whole_unless_its_profiled_part_is_held_out(shared_data: Path) -> None:
    """The continual setting profiles on a new set's validation part; the paper's Figure 3 scores the whole
    set, and ``validation_size`` (the profile's, with its seed) leaves the profiled part out."""
    path = str(shared_data / "eval" / "gsm8k.jsonl")
    whole = load_benchmark(BenchmarkSpec("gsm8k", path=path))
    assert len(whole) == len(load_records(path)) == 1319
    rest = load_benchmark(BenchmarkSpec("gsm8k", path=path, validation_size=100, split_seed=2))
    profiled = split_math_test(whole, seed=2, validation_size=100)[0]
    assert len(rest) == len(whole) - 100
    assert not {problem_key(r.problem) for r in rest} & {problem_key(r.problem) for r in profiled}


def test_the_avg_column_is_the_rows_mean_and_empty_where_a_column_is_missing():
    from stat_pl.evaluation.report import markdown_table

    summary = {"base": {"a": {"pass@1": 0.2}, "b": {"pass@1": 0.5}}, "sft": {"a": {"pass@1": 0.4}}}
    table = markdown_table(summary, {"a": "A", "b": "B"}, {"a": 10, "b": 20})
    header, _, base, sft = table.splitlines()[:4]
    assert header == "| Model | A pass@1 | B pass@1 | Avg |"
    assert base == "| base | 20.0 | 50.0 | 35.0 |" and sft == "| sft | 40.0 |  |  |"
    single = markdown_table({"base": {"a": {"pass@1": 0.2}}}, {"a": "A"}, {"a": 10})
    assert "Avg" not in single  # one column: nothing to average
