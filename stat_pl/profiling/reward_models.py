"""Difficulty detectors that read a reward model: a process reward model (PRM) and an outcome one (ORM).

DESIGN.md, Stage 1. The paper's PRM, ``RLHFlow/Llama3.1-8B-PRM-Mistral-Data``, is a chat model trained
to read a solution one step per user turn (the first turn is the question, a space and the first step)
and to answer every turn with ``+`` (the step is right) or ``-`` (it is wrong). A step's score is
P(``+``): the softmax over the logits of the ``+`` and ``-`` tokens at the position where the
assistant's reply to that step begins. The ORM (``RLHFlow/Llama3.1-8B-ORM-Mistral-Data``) is read the
same way with the whole response as one turn.

One forward pass scores every step of a response. RLHFlow's reference code runs one pass per step, on
the conversation cut after that step, with every earlier reply written as ``+``. Attention is causal,
so the logits at the start of the k-th reply of the whole conversation are exactly those of the cut
conversation: we tokenise the whole conversation once, find each reply's start by tokenising the cut
conversation with the generation prompt, and check token by token that the cut is a prefix of the
whole (a chat template for which it is not is reported, never scored wrongly). Conversations are
batched right-padded, so no real token's position moves; only the logits at those starts are computed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from statistics import fmean

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from stat_pl.errors import UserError
from stat_pl.models import Quantization, load_causal_lm
from stat_pl.profiling.base import Attempt
from stat_pl.tokenizer import load_tokenizer

PAPER_PRM = "RLHFlow/Llama3.1-8B-PRM-Mistral-Data"
PAPER_ORM = "RLHFlow/Llama3.1-8B-ORM-Mistral-Data"
_BLANK_LINE = re.compile(r"\n\s*\n")


def split_steps(response: str) -> list[str]:
    """The steps of a response: its paragraphs (split at blank lines), stripped, empty ones dropped."""
    return [step.strip() for step in _BLANK_LINE.split(response) if step.strip()]


def prm_is_difficult(step_scores: Sequence[float], tau1: float = 0.85, tau2: float = 0.7) -> bool:
    """The paper's PRM rule (Sec. 3.1): difficult if r_t <= tau1, or mean(r) <= tau1, or r_i <= tau2 for an i < t.

    The last step must be confidently right, the steps right on average, and no earlier step clearly
    wrong. ``step_scores`` are r_1..r_t, P(``+``) per step, in order.
    """
    if not step_scores:
        raise ValueError("prm_is_difficult: no step scores; a response without steps has nothing to judge")
    *earlier, last = step_scores
    return last <= tau1 or fmean(step_scores) <= tau1 or any(r <= tau2 for r in earlier)


class RewardModelScorer:
    """A ``+``/``-`` chat reward model: P(good token) at the start of the reply to each user turn.

    Args:
        model: Hub name or local path of the reward model (any causal LM with a chat template).
        quantization: ``"nf4"`` / ``"int8"`` load it with bitsandbytes (an 8B PRM in about 6 GB).
        compute_dtype: the weights' dtype on CUDA (float32 on CPU).
        device: where it runs; default CUDA when available, else CPU. Loaded on first use.
        batch_size: conversations per forward pass.
        good_token, bad_token: the reply tokens; each must be a single token of the model's tokenizer.
        progress: show a progress bar over batches.
    """

    def __init__(
        self,
        model: str,
        quantization: Quantization = "none",
        compute_dtype: str = "bfloat16",
        device: str | None = None,
        batch_size: int = 8,
        good_token: str = "+",
        bad_token: str = "-",
        progress: bool = True,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"reward model {model}: batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.quantization = quantization
        self.compute_dtype = compute_dtype
        self.device = device
        self.batch_size = batch_size
        self.good_token = good_token
        self.bad_token = bad_token
        self.progress = progress
        self._module: torch.nn.Module | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self._token_ids: list[int] = []

    def load(self) -> torch.nn.Module:
        """The model, loaded (frozen, eval mode) on the first call; the tokenizer's reply tokens checked."""
        if self._module is None:
            self.tokenizer = load_tokenizer(self.model)
            self._token_ids = [
                self._single_token_id(self.good_token, "good_token"),
                self._single_token_id(self.bad_token, "bad_token"),
            ]
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            model = load_causal_lm(
                self.model, quantization=self.quantization, compute_dtype=self.compute_dtype, device=device
            )
            if self.quantization == "none":
                model = model.to(device)
            self._module = model.eval().requires_grad_(False)
        return self._module

    def score_turns(self, conversations: Sequence[Sequence[str]]) -> list[list[float]]:
        """P(good) at every user turn of every conversation (each a list of user-turn texts), in order."""
        model = self.load()
        encoded = [self._encode(turns) for turns in conversations]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
        scores: list[list[float]] = [[] for _ in encoded]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        with torch.no_grad():
            for batch in tqdm(batches, desc=f"reward model {self.model}", disable=not self.progress, leave=False):
                for i, row in zip(batch, self._forward(model, [encoded[i] for i in batch]), strict=True):
                    scores[i] = row
        return scores

    def _single_token_id(self, text: str, key: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(
                f"reward model {self.model}: {key}={text!r} is {len(ids)} tokens {ids} for its "
                f"tokenizer; set {key} to a string that is one token"
            )
        return ids[0]

    def _ids(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _encode(self, turns: Sequence[str]) -> tuple[list[int], list[int]]:
        """Token ids of the whole conversation and, per turn, the position whose logits predict the reply."""
        if not turns:
            raise ValueError(f"reward model {self.model}: a conversation needs at least one user turn")
        messages: list[dict[str, str]] = []
        prefixes = []
        for turn in turns:
            messages.append({"role": "user", "content": turn})
            prefixes.append(self._ids(messages, add_generation_prompt=True))
            messages.append({"role": "assistant", "content": self.good_token})
        ids = self._ids(messages, add_generation_prompt=False)
        for k, prefix in enumerate(prefixes):
            if ids[: len(prefix) + 1] != [*prefix, self._token_ids[0]]:
                raise ValueError(
                    f"reward model {self.model}: its chat template does not render the conversation cut after "
                    f"turn {k + 1} as the start of the whole conversation followed by {self.good_token!r}, so "
                    "the reply positions cannot be found; use a model whose template renders turns in order"
                )
        return ids, [len(prefix) - 1 for prefix in prefixes]

    def _forward(self, model: torch.nn.Module, batch: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        """One right-padded forward pass; logits only at the reply positions (a boolean ``logits_to_keep``)."""
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        keep = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, (ids, positions) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
            keep[row, positions] = True
        device = next(model.parameters()).device
        logits = model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            logits_to_keep=keep.to(device),
            use_cache=False,
        ).logits
        good = logits[..., self._token_ids].float().softmax(dim=-1)[..., 0].cpu().tolist()
        rows, start = [], 0  # the kept logits are flattened row by row, positions ascending
        for _, positions in batch:
            rows.append(good[start : start + len(positions)])
            start += len(positions)
        return rows


def _mostly_fine(fine: Sequence[bool]) -> bool:
    """With several samples, a question is easy only when more than half of its responses are judged fine."""
    return 2 * sum(fine) > len(fine)


def _check_samples(detector: str, samples_per_question: int) -> None:
    if samples_per_question < 1:
        raise UserError(f"{detector}.samples_per_question must be >= 1, got {samples_per_question}")


class ProcessRewardDetector:
    """Difficult when the PRM doubts the student's steps (paper Sec. 3.1; :func:`prm_is_difficult`).

    Steps are the paragraphs of a response (:func:`split_steps`); a response without any text has no
    steps and counts as bad. With ``samples_per_question > 1`` a question is difficult unless more than
    half of its responses pass the rule.

    Args:
        scorer: the PRM and how it runs (:class:`RewardModelScorer`); default the paper's
            ``RLHFlow/Llama3.1-8B-PRM-Mistral-Data`` with the scorer's defaults.
        tau1, tau2: the rule's thresholds (paper: 0.85 and 0.7).
        samples_per_question: responses judged per question.
    """

    def __init__(
        self,
        scorer: RewardModelScorer | None = None,
        tau1: float = 0.85,
        tau2: float = 0.7,
        samples_per_question: int = 1,
    ) -> None:
        _check_samples("ProcessRewardDetector", samples_per_question)
        self.scorer = scorer or RewardModelScorer(PAPER_PRM)
        self.tau1 = tau1
        self.tau2 = tau2
        self.samples_per_question = samples_per_question

    def step_scores(self, attempts: Sequence[Attempt]) -> list[list[list[float]]]:
        """r_1..r_t for every response of every attempt (an empty list for a response without steps)."""
        conversations, owners = [], []
        for a, attempt in enumerate(attempts):
            for r, response in enumerate(attempt.responses):
                steps = split_steps(response)
                if steps:
                    conversations.append([f"{attempt.record.problem} {steps[0]}", *steps[1:]])
                    owners.append((a, r))
        scores: list[list[list[float]]] = [[[] for _ in attempt.responses] for attempt in attempts]
        for (a, r), turn_scores in zip(owners, self.scorer.score_turns(conversations), strict=True):
            scores[a][r] = turn_scores
        return scores

    def detect(self, attempts: Sequence[Attempt]) -> list[bool]:
        return [
            not _mostly_fine([bool(s) and not prm_is_difficult(s, self.tau1, self.tau2) for s in per_response])
            for per_response in self.step_scores(attempts)
        ]


class PRMLastStepDetector(ProcessRewardDetector):
    """The paper's outcome-reward ablation: the PRM's last-step score r_t read as the outcome score.

    Difficult when r_t <= ``threshold`` (paper: 0.9). The paper reuses its PRM this way rather than a
    separately trained ORM; :class:`OutcomeRewardDetector` (a separate ORM, one turn) stays as an
    option. A response without steps counts as bad, and with ``samples_per_question > 1`` a question is
    difficult unless more than half of its responses are fine, as for the PRM rule.

    Args:
        scorer: the PRM and how it runs (:class:`RewardModelScorer`); default the paper's
            ``RLHFlow/Llama3.1-8B-PRM-Mistral-Data`` with the scorer's defaults.
        threshold: a response whose last step scores at most this is bad.
        samples_per_question: responses judged per question.
    """

    def __init__(
        self, scorer: RewardModelScorer | None = None, threshold: float = 0.9, samples_per_question: int = 1
    ) -> None:
        super().__init__(scorer, samples_per_question=samples_per_question)
        self.threshold = threshold

    def detect(self, attempts: Sequence[Attempt]) -> list[bool]:
        return [
            not _mostly_fine([bool(s) and s[-1] > self.threshold for s in per_response])
            for per_response in self.step_scores(attempts)
        ]


class OutcomeRewardDetector:
    """Difficult when the ORM's score of the whole response is at most ``threshold`` (paper: 0.9).

    The ORM reads question and response as one user turn and is scored like one PRM step (P(``+``)).
    ``<=`` matches the PRM rule's inequalities. With ``samples_per_question > 1`` a question is
    difficult unless more than half of its responses score above the threshold.

    Args:
        scorer: the ORM and how it runs (:class:`RewardModelScorer`); default
            ``RLHFlow/Llama3.1-8B-ORM-Mistral-Data`` with the scorer's defaults.
        threshold: a response scoring at most this is bad.
        samples_per_question: responses judged per question.
    """

    def __init__(
        self, scorer: RewardModelScorer | None = None, threshold: float = 0.9, samples_per_question: int = 1
    ) -> None:
        _check_samples("OutcomeRewardDetector", samples_per_question)
        self.scorer = scorer or RewardModelScorer(PAPER_ORM)
        self.threshold = threshold
        self.samples_per_question = samples_per_question

    def scores(self, attempts: Sequence[Attempt]) -> list[list[float]]:
        """The ORM score of every response of every attempt."""
        conversations = [[f"{a.record.problem} {response.strip()}"] for a in attempts for response in a.responses]
        flat = iter(turns[0] for turns in self.scorer.score_turns(conversations))
        return [[next(flat) for _ in a.responses] for a in attempts]

    def detect(self, attempts: Sequence[Attempt]) -> list[bool]:
        return [not _mostly_fine([s > self.threshold for s in per_response]) for per_response in self.scores(attempts)]
