"""HFEngine: batched ``model.generate`` on any device, on a loaded model or the live training model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase
from transformers.generation.streamers import BaseStreamer

from stat_pl.engines.base import Completion, Prompt, SamplingParams, completion_from_ids, render_prompt
from stat_pl.models import load_causal_lm, load_tokenizer


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
    """

    def __init__(self, model: str | torch.nn.Module, tokenizer: str | PreTrainedTokenizerBase | None = None,
                 batch_size: int = 32, system_prompt: str | None = None, progress: bool = True) -> None:
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

    def render(self, prompt: Prompt) -> str:
        """Chat messages through the chat template (with the generation prompt); raw text unchanged."""
        return render_prompt(self.tokenizer, prompt, self.system_prompt)

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams) -> list[list[Completion]]:
        texts = [self.render(p) for p in prompts]
        lengths = [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        # Batch longest-first so each batch pads little; results go back to prompt order.
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        prompts_per_batch = max(1, self.batch_size // sampling.n)
        results: list[list[Completion]] = [[] for _ in texts]
        batches = [order[i : i + prompts_per_batch] for i in range(0, len(order), prompts_per_batch)]
        steps = tqdm(total=len(batches) * sampling.max_new_tokens, desc=f"generate ({len(texts)} prompts)",
                     unit="step", disable=not self.progress, leave=False)
        with self._inference_mode(sampling.seed), steps:
            for done, batch in enumerate(batches, start=1):
                completions = self._generate_batch([texts[i] for i in batch], sampling, _StepProgress(steps))
                for i, completion in zip(batch, completions, strict=True):
                    results[i] = completion
                steps.update(done * sampling.max_new_tokens - steps.n)  # a batch that stopped early
        return results

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

    def _generate_batch(self, texts: list[str], sampling: SamplingParams,
                        streamer: BaseStreamer | None = None) -> list[list[Completion]]:
        tok = self.tokenizer
        tok.padding_side = "left"
        inputs = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        device = next(self.model.parameters()).device
        sample = sampling.temperature > 0
        output = self.model.generate(
            input_ids=inputs["input_ids"].to(device),
            attention_mask=inputs["attention_mask"].to(device),
            max_new_tokens=sampling.max_new_tokens,
            do_sample=sample,
            temperature=sampling.temperature if sample else None,
            top_p=sampling.top_p if sample else None,
            top_k=None,
            num_return_sequences=sampling.n,
            stop_strings=list(sampling.stop) or None,
            tokenizer=tok if sampling.stop else None,
            pad_token_id=tok.pad_token_id,
            use_cache=True,
            streamer=streamer,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
        completions = [completion_from_ids(tok, ids, sampling) for ids in new_tokens]
        return [completions[i : i + sampling.n] for i in range(0, len(completions), sampling.n)]


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
