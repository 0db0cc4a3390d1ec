"""HFEngine: batched ``model.generate`` on any device, on a loaded model or the live training model."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase
from transformers.generation.streamers import BaseStreamer

from stat_pl.engines.base import (
    Completion,
    Prompt,
    SamplingParams,
    completion_from_ids,
    prompt_token_ids,
    render_prompt,
)
from stat_pl.models import CACHE_KWARG, load_causal_lm, load_tokenizer


class HFEngine:
    """Generation with Hugging Face transformers: left padding, KV cache, prompts batched by length.

    Pass a model name/path (loaded once, frozen) or a live ``torch.nn.Module`` (e.g. the PEFT model
    being trained): each call switches it to eval mode under ``no_grad`` and puts back its train mode
    and the global RNG state afterwards, so generating between epochs does not change training.

    Args:
        model: a name/path for :func:`~stat_pl.models.load_causal_lm`, or a module.
        tokenizer: a name/path or tokenizer; defaults to the model's name.
        batch_size: sequences per ``generate`` call (prompts x samples).
        system_prompt: an optional system turn before chat prompts.
        progress: show a progress bar over batches.
        share_prefill: with ``sampling.n > 1``, prefill each prompt once and repeat its KV cache for the
            ``n`` samples (same samples, less compute); ``False`` lets ``generate`` prefill every copy.
    """

    def __init__(
        self,
        model: str | torch.nn.Module,
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        batch_size: int = 32,
        system_prompt: str | None = None,
        progress: bool = True,
        share_prefill: bool = True,
    ) -> None:
        if isinstance(model, str):
            tokenizer = tokenizer or model
            model = load_causal_lm(model, quantization="none").eval().requires_grad_(False)
        if tokenizer is None:
            raise ValueError("HFEngine: pass a tokenizer when the model is a module")
        self.model = model
        self.tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        self.batch_size = batch_size
        self.system_prompt = system_prompt
        self.progress = progress
        self.share_prefill = share_prefill

    def render(self, prompt: Prompt) -> str:
        """Chat messages through the chat template (with the generation prompt); raw text unchanged."""
        return render_prompt(self.tokenizer, prompt, self.system_prompt)

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams) -> list[list[Completion]]:
        ids = [self.prompt_ids(p) for p in prompts]
        # Batch longest-first so each batch pads little; results go back to prompt order.
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        prompts_per_batch = max(1, self.batch_size // sampling.n)
        results: list[list[Completion]] = [[] for _ in ids]
        batches = [order[i : i + prompts_per_batch] for i in range(0, len(order), prompts_per_batch)]
        # Off a terminal (a log file, CI) tqdm cannot redraw: a refresh every 30 s, and the last state kept
        # on its own line, instead of hundreds of carriage-return updates glued to the next log line.
        off_terminal = not sys.stderr.isatty()
        steps = tqdm(
            total=len(batches) * sampling.max_new_tokens,
            desc=f"generate ({len(ids)} prompts)",
            unit="step",
            disable=not self.progress,
            leave=off_terminal,
            mininterval=30 if off_terminal else 0.1,
        )
        with self._inference_mode(sampling.seed), steps:
            for done, batch in enumerate(batches, start=1):
                completions = self._generate_batch([ids[i] for i in batch], sampling, _StepProgress(steps))
                for i, completion in zip(batch, completions, strict=True):
                    results[i] = completion
                steps.update(done * sampling.max_new_tokens - steps.n)  # a batch that stopped early
        return results

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt: text and chat messages are tokenised, ids pass through."""
        return prompt_token_ids(self.tokenizer, prompt, self.system_prompt)

    @contextlib.contextmanager
    def _inference_mode(self, seed: int) -> Iterator[None]:
        was_training = self.model.training
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            self.model.eval()
            try:
                yield
            finally:
                self.model.train(was_training)

    def _generate_batch(
        self, prompt_ids: list[list[int]], sampling: SamplingParams, streamer: BaseStreamer | None = None
    ) -> list[list[Completion]]:
        tok = self.tokenizer
        device = next(self.model.parameters()).device
        input_ids, attention_mask = left_pad(prompt_ids, tok.pad_token_id)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        n, shared = sampling.n, {}
        if self.share_prefill and n > 1 and min(len(p) for p in prompt_ids) > 1:
            shared = {CACHE_KWARG: self._prefill_once(input_ids, attention_mask, n)}
            input_ids, attention_mask, n = input_ids.repeat_interleave(n, 0), attention_mask.repeat_interleave(n, 0), 1
        sample = sampling.temperature > 0
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=sampling.max_new_tokens,
            do_sample=sample,
            temperature=sampling.temperature if sample else None,
            top_p=sampling.top_p if sample else None,
            top_k=None,
            num_return_sequences=n,
            stop_strings=list(sampling.stop) or None,
            tokenizer=tok if sampling.stop else None,
            pad_token_id=tok.pad_token_id,
            use_cache=True,
            streamer=streamer,
            **shared,
        )
        new_tokens = output[:, input_ids.shape[1] :].tolist()
        completions = [completion_from_ids(self.tokenizer, ids, sampling) for ids in new_tokens]
        return [completions[i : i + sampling.n] for i in range(0, len(completions), sampling.n)]

    def _prefill_once(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int):
        """The KV cache of every prompt but its last token, computed once and repeated for its ``n`` samples.

        ``generate(num_return_sequences=n)`` would prefill each prompt ``n`` times. The last token is left
        for ``generate`` to feed (it needs logits to sample from); positions follow the left padding.
        """
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        output = self.model(
            input_ids=input_ids[:, :-1],
            attention_mask=attention_mask[:, :-1],
            position_ids=position_ids[:, :-1],
            use_cache=True,
        )
        cache = getattr(output, CACHE_KWARG)
        cache.batch_repeat_interleave(n)
        return cache


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids[B, T], attention_mask[B, T])``, each sequence right-aligned (decoder-only generation pads left)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
    return ids, mask


class _StepProgress(BaseStreamer):
    """Advances a progress bar by one per decoding step (``generate`` calls ``put`` once per step)."""

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar
        self.prompt_seen = False

    def put(self, value) -> None:
        if self.prompt_seen:
            self.bar.update(1)
        self.prompt_seen = True  # the first call carries the prompt

    def end(self) -> None:
        pass
