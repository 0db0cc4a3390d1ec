"""Teacher-forced answer metrics: the answer's tokens, the per-token math, one forward of a tiny model, evaluate."""

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from stat_pl.data.formatting import IGNORE_INDEX, encode_example
from stat_pl.engines.base import Completion
from stat_pl.evaluation.adapters import ModelEntry
from stat_pl.evaluation.answer_metrics import (
    AnswerScore,
    answer_breakdowns,
    answer_example,
    answer_summary,
    answer_token_scores,
    score_answers,
)
from stat_pl.evaluation.benchmarks import BenchmarkSpec
from stat_pl.evaluation.evaluate import VLLMFactory, run_evaluation
from stat_pl.evaluation.scoring import EvalSettings
from stat_pl.grading import extract_answer, last_boxed_span
from stat_pl.records import ProblemRecord
from stat_pl.tokenizer import load_tokenizer

SOLVED = ProblemRecord(
    "add", "what is 12 + 30", "42", ("Step 1 [addition]: 12 + 30 = 42\nAnswer: \\boxed{42}",), skills=("addition",)
)
LONGER = ProblemRecord(
    "frac",
    "what is the sum of 1 and 1 and 1",
    "3",
    ("Step 1 [addition]: 1 + 1 = 2\nStep 2 [addition]: 2 + 1 = 3\nAnswer: $\\boxed{ \\frac{6}{2} }$.",),
    skills=("addition", "fractions"),
)
UNBOXED = ProblemRecord("plain", "what is 2 + 2", "4", ("It is 4.",), skills=("addition",))


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), load_tokenizer(str(tiny_model_dir))


def test_the_boxed_span_is_what_extract_answer_reads():
    for text in [SOLVED.solutions[0], LONGER.solutions[0], "\\boxed 7 done", "\\boxed{} then \\boxed{ x^2 }"]:
        start, end = last_boxed_span(text)
        assert text[start:end] == extract_answer(text)
    assert last_boxed_span("no box") is None and last_boxed_span("\\boxed{open") is None


def test_per_token_math_on_logits_with_a_known_argmax():
    probs = torch.tensor(
        [
            [[0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.6, 0.1], [0.1, 0.7, 0.1, 0.1]],  # argmax 2 then 1: both right
            [[0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.6, 0.1], [0.5, 0.25, 0.125, 0.125]],  # argmax 0 but target 1
        ]
    )
    targets = torch.tensor([[IGNORE_INDEX, 2, 1], [IGNORE_INDEX, 2, 1]])
    exact, nll, tokens = answer_token_scores(probs.log(), targets)
    assert exact.tolist() == [True, False] and tokens.tolist() == [2, 2]
    assert nll.tolist() == pytest.approx([-(math.log(0.6) + math.log(0.7)) / 2, -(math.log(0.6) + math.log(0.25)) / 2])


def test_the_answer_tokens_are_the_boxed_answer_inside_the_training_example(tiny):
    _, tokenizer = tiny
    for record, answer in [(SOLVED, "42"), (LONGER, "\\frac{6}{2}")]:
        example = answer_example(tokenizer, record)
        trained = encode_example(tokenizer, record.problem, record.solutions[0], 4096)
        assert example["input_ids"] == trained["input_ids"]  # formatted exactly as SFT trains on it
        labelled = [t for t in example["labels"] if t != IGNORE_INDEX]
        assert answer in tokenizer.decode(labelled) and len(tokenizer.decode(labelled)) <= len(answer) + 2
    assert answer_example(tokenizer, UNBOXED) is None
    assert answer_example(tokenizer, ProblemRecord("none", "2+2", "4")) is None


def test_one_batched_forward_matches_a_full_forward_per_question(tiny):
    model, tokenizer = tiny
    scores = score_answers(model, tokenizer, [LONGER, UNBOXED, SOLVED], batch_size=2)
    assert scores[1] is None
    for record, score in [(LONGER, scores[0]), (SOLVED, scores[2])]:
        example = answer_example(tokenizer, record)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([example["input_ids"]])).logits[0]  # [T, V], every position
        positions = [i for i, t in enumerate(example["labels"]) if t != IGNORE_INDEX]
        targets = torch.tensor([example["input_ids"][i] for i in positions])
        log_probs = torch.log_softmax(logits[[i - 1 for i in positions]], -1)  # position i - 1 predicts token i
        assert score.tokens == len(positions)
        assert score.nll == pytest.approx(-log_probs.gather(1, targets[:, None]).mean().item(), rel=1e-4)
        assert score.exact == bool((log_probs.argmax(-1) == targets).all())
    assert model.training is False


def test_a_model_that_learnt_the_solution_puts_its_answer_first(tiny_model_dir):
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_model_dir), load_tokenizer(str(tiny_model_dir))
    assert score_answers(model, tokenizer, [SOLVED])[0].exact is False  # random weights
    ids = torch.tensor([answer_example(tokenizer, SOLVED)["input_ids"]])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    model.train()
    for _ in range(60):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    learnt = score_answers(model, tokenizer, [SOLVED])[0]
    assert learnt.exact is True and learnt.nll < 0.5
    assert model.training is True  # the forward left the training model's mode as it found it


def test_summaries_and_breakdowns_count_only_scored_questions():
    scores = [AnswerScore(True, 0.5, 1), None, AnswerScore(False, 1.5, 3)]
    assert answer_summary(scores) == {"questions": 2, "unscored": 1, "answer_exact": 0.5, "answer_nll": 1.0}
    assert answer_summary([None]) == {"questions": 0, "unscored": 1}
    skills = answer_breakdowns([SOLVED, UNBOXED, LONGER], scores)["skill"]
    assert skills == {
        "addition": {"answer_exact": 0.5, "answer_nll": 1.0, "questions": 2},
        "fractions": {"answer_exact": 0.0, "answer_nll": 1.5, "questions": 1},
    }


class AnswerEngine:
    def generate(self, prompts, sampling):
        return [[Completion("\\boxed{42}", 3, "stop")] * sampling.n for _ in prompts]


class ClosedFirst(VLLMFactory):
    """A vLLM factory stand-in that records when it was closed (no vLLM)."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def __call__(self, entry):
        return AnswerEngine()

    def close(self) -> None:
        self.events.append("close")


def test_evaluate_writes_answer_metrics_per_benchmark_and_skill_after_closing_the_engines(
    tiny, tiny_model_dir: Path, tmp_path: Path
):
    model, tokenizer = tiny
    path = tmp_path / "bench.jsonl"
    rows = [{"id": r.id, "problem": r.problem, "answer": r.answer, "skills": list(r.skills)} for r in (SOLVED, LONGER)]
    rows = [{**row, "solution": r.solutions[0]} for row, r in zip(rows, (SOLVED, LONGER), strict=True)]
    rows.append({"id": "plain", "problem": "what is 2 + 2", "answer": "4", "skills": ["addition"]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    events: list[str] = []

    def load(entry: ModelEntry):
        events.append(f"load {entry.label}")
        return model

    results = run_evaluation(
        [ModelEntry("base", str(tiny_model_dir))],
        [BenchmarkSpec("mini", path=str(path))],
        tmp_path / "out",
        EvalSettings(batch_size=2, progress=False),
        ClosedFirst(events),
        answer_model=load,
    )
    assert events == ["close", "load base"]  # vLLM's memory is free before the HF forward
    expected = score_answers(model, tokenizer, [SOLVED, LONGER, UNBOXED], batch_size=2)
    summary = results["answer_summary"]["base"]["mini"]
    assert summary == answer_summary(expected) and summary["questions"] == 2 and summary["unscored"] == 1
    assert results["answer_breakdowns"]["base"]["mini"]["skill"]["fractions"]["questions"] == 1
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    row = next(q for q in on_disk["questions"] if q["id"] == "add")
    assert (row["answer_exact"], row["answer_nll"]) == (expected[0].exact, pytest.approx(expected[0].nll))
    assert "answer_exact" not in next(q for q in on_disk["questions"] if q["id"] == "plain")
    table = (tmp_path / "out" / "table.md").read_text()
    assert f"| base | {100 * summary['answer_exact']:.1f} | {summary['answer_nll']:.3f} |" in table
