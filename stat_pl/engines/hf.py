"""HFEngine: batched sampling with transformers on any device, on a loaded model or the live training model."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from stat_pl.distributed import require_same_count
from stat_pl.engines.base import (
    Completion,
    Prompt,
    SamplingParams,
    completion_from_ids,
    prompt_token_ids,
    render_prompt,
)
from stat_pl.engines.decode import decode, sampler
from stat_pl.models import load_causal_lm
from stat_pl.padding import left_pad
from stat_pl.tokenizer import load_tokenizer


class HFEngine:
    """Generation with Hugging Face transformers: left padding, KV cache, prompts batched by length.

    Decoding is stat-pl's loop (:func:`~stat_pl.engines.decode.decode`: a preallocated KV cache, one
    uniform draw per token), not ``model.generate``; it samples what ``generate`` samples for the same
    :class:`SamplingParams`, faster. The model's ``generation_config`` adds only its EOS tokens.

    Pass a model name/path (loaded once, frozen) or a live ``torch.nn.Module`` (e.g. the PEFT model
    being trained): each call switches it to eval mode under ``no_grad`` and puts back its train mode
    and the global RNG state afterwards, so generating between epochs does not change training.

    Args:
        model: a name/path for :func:`~stat_pl.models.load_causal_lm`, or a module.
        tokenizer: a name/path or tokenizer; defaults to the model's name.
        batch_size: sequences decoded together (prompts x samples).
        system_prompt: an optional system turn before chat prompts.
        progress: show a progress bar over batches.
        share_prefill: with ``sampling.n > 1``, prefill each prompt once and repeat its KV cache for the
            ``n`` samples (same samples, less compute); ``False`` prefills every copy.
        device: where a model given by name is loaded (default: the current CUDA device, else the CPU); a module
            generates where it is.
        lockstep: every rank decodes the same number of batches and steps (:func:`~stat_pl.engines.decode.decode`):
            for a model sharded with FSDP, whose every forward is a collective.
    """

    def __init__(
        self,
        model: str | torch.nn.Module,
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        batch_size: int = 32,
        system_prompt: str | None = None,
        progress: bool = True,
        share_prefill: bool = True,
        device: str | torch.device | None = None,
        lockstep: bool = False,
    ) -> None:
        if isinstance(model, str):
            tokenizer = tokenizer or model
            model = load_causal_lm(model, quantization="none", device=device).eval().requires_grad_(False)
        if tokenizer is None:
            raise ValueError("HFEngine: pass a tokenizer when the model is a module")
        self.model = model
        self.tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        self.batch_size = batch_size
        self.system_prompt = system_prompt
        self.progress = progress
        self.share_prefill = share_prefill
        self.lockstep = lockstep

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
        if self.lockstep:
            require_same_count(len(batches), next(self.model.parameters()).device, "HFEngine batches (lockstep)")
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
                completions = self._generate_batch([ids[i] for i in batch], sampling, lambda: steps.update(1))
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
        device = next(self.model.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(seed)
            self.model.eval()
            try:
                yield
            finally:
                self.model.train(was_training)

    def _generate_batch(
        self, prompt_ids: list[list[int]], sampling: SamplingParams, on_step: Callable[[], None] | None = None
    ) -> list[list[Completion]]:
        tok = self.tokenizer
        device = next(self.model.parameters()).device
        input_ids, attention_mask = left_pad(prompt_ids, tok.pad_token_id)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        samples = sampling.n
        if not self.share_prefill:  # prefill every copy of a prompt (the reference the tests compare against)
            input_ids, attention_mask = (
                input_ids.repeat_interleave(samples, 0),
                attention_mask.repeat_interleave(samples, 0),
            )
            samples = 1
        new_tokens = decode(
            self.model,
            input_ids,
            attention_mask,
            sampling.max_new_tokens,
            pick=sampler(sampling.temperature, sampling.top_p),
            stop_token_ids=self._stop_token_ids(),
            pad_token_id=tok.pad_token_id,
            samples=samples,
            stopped=_StopStrings(tok, sampling.stop) if sampling.stop else None,
            on_step=on_step,
            lockstep=self.lockstep,
        ).tolist()
        completions = [completion_from_ids(tok, ids, sampling) for ids in new_tokens]
        return [completions[i : i + sampling.n] for i in range(0, len(completions), sampling.n)]

    def _stop_token_ids(self) -> list[int]:
        """The tokenizer's EOS and every EOS the model's generation config names (Llama 3 has several)."""
        config = getattr(self.model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None)
        listed = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        return [self.tokenizer.eos_token_id, *listed]


class _StopStrings:
    """``stopped`` for :func:`~stat_pl.engines.decode.decode`: rows whose text now contains a stop string.

    Only the last tokens are decoded each step, enough to hold the longest stop string (a token is at
    least one character, and a few more cover tokens that are part of one character), so a long
    completion costs the same per step as a short one.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.window = max(len(s) for s in self.stop) + 4

    def __call__(self, new_ids: torch.Tensor) -> torch.Tensor:
        tails = self.tokenizer.batch_decode(new_ids[:, -self.window :].tolist(), skip_special_tokens=True)
        return torch.tensor([any(s in tail for s in self.stop) for tail in tails], device=new_ids.device)
