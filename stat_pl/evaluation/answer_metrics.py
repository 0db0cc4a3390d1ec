"""Teacher-forced answer metrics: does the model put the gold final answer first, and how likely does it find it.

Greedy accuracy is 0 or 1 per question and moves only when a whole generation flips. Two finer readings
of the same model need no generation: one deterministic forward (eval mode, no gradients) over the
question's prompt and its gold worked solution, teacher-forced:

* **answer exact match**: every token of the gold final answer is the model's argmax next token given
  the gold prefix before it;
* **answer NLL**: the mean negative log-likelihood (nats per token) of those tokens.

The final answer is the content of the gold solution's last ``\\boxed{...}`` (:func:`stat_pl.grading.last_boxed_span`,
the box :func:`~stat_pl.grading.extract_answer` reads); its tokens are the solution tokens that overlap
those characters (a token such as ``{42`` that straddles the brace counts). The text is formatted and
tokenised exactly as SFT trains on it (:func:`stat_pl.data.formatting.encode_example`: chat-template
prompt, then the solution and EOS) and batched by the training collate. A question without a solution,
or whose first solution has no boxed answer, is not scored (``None``) and counted as ``unscored``.

Where a solution states its answer before it boxes it (the skill world: ``Step 1 [multi_digit_multiplication]:
46 × 9 = 414`` then ``Answer: \\boxed{414}``), the boxed tokens are a copy of text in the prefix: the untrained
SmolLM2-135M-Instruct "gets" 16 of 24 such answers (level-1 test problems of four hard skills, 2026-12-06).
``answer_span`` then names the span where the answer is computed instead (``bench/skillworld_v2.py`` scores the
last step's value).

The ``evaluate`` stage (``answer_metrics: true``) and the ``SkillReprofiler`` (``answer_metrics=True``)
report these per benchmark and per subject, level and skill.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from statistics import fmean

import torch
from transformers import PreTrainedTokenizerBase

from stat_pl.data.formatting import IGNORE_INDEX, collate, encode_example
from stat_pl.errors import UserError
from stat_pl.evaluation.scoring import breakdowns
from stat_pl.grading import last_boxed_span
from stat_pl.records import ProblemRecord


@dataclass(frozen=True)
class AnswerScore:
    """One question's teacher-forced answer: all answer tokens the argmax (``exact``), their mean NLL, their count."""

    exact: bool
    nll: float
    tokens: int


def answer_example(
    tokenizer: PreTrainedTokenizerBase,
    record: ProblemRecord,
    system_prompt: str | None = None,
    answer_span: Callable[[str], tuple[int, int] | None] = last_boxed_span,
) -> dict[str, list[int]] | None:
    """The SFT example of ``record``'s first solution with only its final-answer tokens as labels; None
    when there is no solution or ``answer_span`` (default: the last boxed answer's content) finds no answer
    in it."""
    if not record.solutions:
        return None
    solution = record.solutions[0]
    span = answer_span(solution)
    if span is None:
        return None
    if not tokenizer.is_fast:
        raise UserError("answer_metrics finds the answer's tokens by character offsets, which need a fast tokenizer")
    example = encode_example(tokenizer, record.problem, solution, sys.maxsize, system_prompt)  # never cut
    prompt_length = example["labels"].count(IGNORE_INDEX)  # the prompt's labels are masked, the solution's not
    offsets = tokenizer(solution, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    answer = {prompt_length + k for k, (start, end) in enumerate(offsets) if start < span[1] and end > span[0]}
    labels = [token if i in answer else IGNORE_INDEX for i, token in enumerate(example["input_ids"])]
    return {"input_ids": example["input_ids"], "labels": labels}


def answer_token_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: (all answer tokens argmax [B] bool, mean answer-token NLL [B], answer tokens [B]).

    ``logits[b, t]`` is the model's prediction of ``targets[b, t]`` (already shifted); positions whose
    target is ``IGNORE_INDEX`` are not answer tokens. Every row needs at least one answer token.
    """
    logits = logits.float()  # [B, T, V]
    answer = targets != IGNORE_INDEX  # [B, T]
    safe = targets.clamp(min=0)  # [B, T] ignored positions point at token 0, then masked out
    nll = -torch.log_softmax(logits, dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # [B, T]
    hit = (logits.argmax(-1) == targets) | ~answer  # [B, T]
    tokens = answer.sum(1)  # [B]
    return hit.all(1), (nll * answer).sum(1) / tokens, tokens


def score_answers(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[ProblemRecord],
    system_prompt: str | None = None,
    batch_size: int = 8,
    answer_span: Callable[[str], tuple[int, int] | None] = last_boxed_span,
) -> list[AnswerScore | None]:
    """Each record's :class:`AnswerScore` (None where it has no boxed gold solution), in record order.

    ``answer_span`` says where a gold solution's answer lies (:func:`answer_example`).

    One forward per batch of similar-length examples, right-padded by the training collate; the model
    returns logits only from the first position that predicts an answer token on (``logits_to_keep``),
    since the answer sits at the end of a solution.
    """
    examples = [answer_example(tokenizer, r, system_prompt, answer_span) for r in records]
    scored = sorted((i for i, e in enumerate(examples) if e), key=lambda i: len(examples[i]["input_ids"]))
    scores: list[AnswerScore | None] = [None] * len(records)
    device = next(model.parameters()).device
    with _evaluating(model):
        for start in range(0, len(scored), batch_size):
            rows = scored[start : start + batch_size]
            batch = collate([{**examples[i], "index": i} for i in rows], pad_token_id=tokenizer.pad_token_id)
            labels = batch["labels"]  # [B, W]
            first = int((labels != IGNORE_INDEX).int().argmax(1).min()) - 1  # earliest position predicting an answer
            logits = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                logits_to_keep=labels.shape[1] - first,
            ).logits  # [B, W - first, V]
            exact, nll, tokens = answer_token_scores(logits[:, :-1].cpu(), labels[:, first + 1 :])
            for k, i in enumerate(rows):
                scores[i] = AnswerScore(bool(exact[k]), float(nll[k]), int(tokens[k]))
    return scores


@contextlib.contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout: one deterministic forward) without gradients; a training model's mode comes back."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def answer_summary(scores: Sequence[AnswerScore | None]) -> dict[str, float]:
    """``answer_exact`` (share of scored questions) and ``answer_nll`` (mean over them), with how many were
    scored (``questions``) and not (``unscored``); no means when none was scored."""
    scored = [s for s in scores if s is not None]
    summary: dict[str, float] = {"questions": len(scored), "unscored": len(scores) - len(scored)}
    if scored:
        summary.update(answer_exact=fmean(s.exact for s in scored), answer_nll=fmean(s.nll for s in scored))
    return summary


def answer_breakdowns(
    records: Sequence[ProblemRecord], scores: Sequence[AnswerScore | None]
) -> dict[str, dict[str, dict[str, float]]]:
    """Per subject, level and skill (the groupings :func:`~stat_pl.evaluation.scoring.breakdowns` makes):
    ``{"skill": {s: {"answer_exact": .., "answer_nll": .., "questions": n}}}`` over the scored questions."""
    kept = [(r, s) for r, s in zip(records, scores, strict=True) if s is not None]
    if not kept:
        return {}
    scored_records = [r for r, _ in kept]
    exact = breakdowns(scored_records, [float(s.exact) for _, s in kept])
    nll = breakdowns(scored_records, [s.nll for _, s in kept])
    return {
        grouping: {
            group: {
                "answer_exact": row["accuracy"],
                "answer_nll": nll[grouping][group]["accuracy"],
                "questions": row["questions"],
            }
            for group, row in groups.items()
        }
        for grouping, groups in exact.items()
    }
