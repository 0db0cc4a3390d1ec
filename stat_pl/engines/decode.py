"""HFEngine's decoding loop: prefill once, then one token per step into a preallocated KV cache.

Why not ``model.generate``: on the shipped GRPO config (4 prompts x 4 samples, 64 new tokens, CPU) a rollout
batch took 4.8 s through this loop and 7.7 s through ``generate`` with its static cache, on the same model
(bench/README.md, "CPU routes"): each prompt is prefilled once and its KV cache repeated for its samples
(``generate`` prefills every copy), and a token is drawn with one uniform number per row from block-wise
cumulative masses (``generate`` samples with ``multinomial``; torch's CPU ``cumsum`` over the whole vocabulary
is sequential). Each step runs the model's own forward into a transformers ``StaticCache``: no model code of
ours. What is sampled is the same distribution as ``generate``'s for the settings
:class:`~stat_pl.engines.base.SamplingParams` has (temperature, top-p, no top-k, no repetition penalty); the
random draws differ, so the samples for a seed differ from ``generate``'s. Greedy decoding picks what
``generate`` picks (the tests compare them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache, StaticCache

from stat_pl.distributed import all_ranks_agree
from stat_pl.models import CACHE_KWARG

#: Indices per block of :func:`draw_token`'s two-level draw.
DRAW_BLOCK = 256


@torch.no_grad()
def decode(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    pick: Callable[[torch.Tensor], torch.Tensor],
    stop_token_ids: Sequence[int],
    pad_token_id: int,
    samples: int = 1,
    stopped: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_step: Callable[[], None] | None = None,
    lockstep: bool = False,
) -> torch.Tensor:
    """New token ids ``[B * samples, max_new_tokens]`` for left-padded prompts ``input_ids[B, T]``, pad after a stop.

    Each prompt is prefilled once and its KV cache repeated for its ``samples`` rows (rows of a prompt are
    consecutive). ``pick(logits[R, V]) -> tokens[R]`` chooses the next tokens. A row stops at a token in
    ``stop_token_ids`` (kept) or when ``stopped(new_ids[R, t])`` marks it (a stop string, say); its later
    tokens are ``pad_token_id``. The loop ends when every row has stopped. ``on_step`` is called per token.

    ``lockstep``: the loop ends when every row of every rank has stopped (a rank that is done steps on with padding).
    Under FSDP each forward all-gathers the weights from all ranks, so a rank that left the loop early would leave the
    others waiting in their next all-gather for ever.
    """
    rows, width = input_ids.shape[0] * samples, input_ids.shape[1]
    device = input_ids.device
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]: left padding does not count
    prefill = DynamicCache()
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
        **{CACHE_KWARG: prefill},
    )
    steps = _ModelSteps(model, prefill, samples, width + max_new_tokens)
    del prefill
    mask = torch.zeros(rows, width + max_new_tokens, dtype=attention_mask.dtype, device=device)  # [R, T + N]
    mask[:, :width] = attention_mask.repeat_interleave(samples, 0)
    position = positions[:, -1:].repeat_interleave(samples, 0)  # [R, 1]
    logits = out.logits[:, -1].repeat_interleave(samples, 0)  # [R, V]
    stop = torch.tensor(sorted(set(stop_token_ids)), dtype=torch.long, device=device)
    new = torch.full((rows, max_new_tokens), pad_token_id, dtype=torch.long, device=device)  # [R, N]
    done = torch.zeros(rows, dtype=torch.bool, device=device)  # [R]
    for step in range(max_new_tokens):
        token = torch.where(done, pad_token_id, pick(logits.float()))  # [R]
        new[:, step] = token
        done |= torch.isin(token, stop)
        if stopped is not None:
            done |= stopped(new[:, : step + 1])
        if on_step is not None:
            on_step()
        finished = bool(done.all())
        if lockstep:
            finished = all_ranks_agree(finished, device)
        if step == max_new_tokens - 1 or finished:
            break
        mask[:, width + step] = 1
        position = position + 1
        logits = steps(token, position, mask[:, : width + step + 1])
    return new


class _ModelSteps:
    """Decoding steps through the model's own forward, into a transformers ``StaticCache`` written in place."""

    def __init__(self, model: torch.nn.Module, prefill: DynamicCache, samples: int, capacity: int) -> None:
        self.model = model
        self.cache = StaticCache(config=model.config, max_cache_len=capacity)
        for index, layer in enumerate(prefill.layers):  # the prompts' keys and values, once per sample
            keys, values = layer.keys.repeat_interleave(samples, 0), layer.values.repeat_interleave(samples, 0)
            self.cache.update(keys, values, index)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{CACHE_KWARG: self.cache},
        )
        return out.logits[:, -1]  # [R, V]


def sampler(temperature: float, top_p: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``pick`` for :func:`decode`: the argmax at temperature 0, else one draw from ``softmax(logits / T)``
    cut to its top-``top_p`` mass (:func:`draw_token`). It uses the global torch RNG, which the engine seeds.
    """
    if temperature == 0:
        return lambda logits: logits.argmax(-1)

    def draw(logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits if temperature == 1 else logits / temperature, dim=-1)  # [R, V]
        if top_p >= 1:
            return draw_token(probs)
        probs, order = probs.double().sort(dim=-1, descending=True)
        before = probs.cumsum(-1) - probs  # mass of the more likely tokens
        probs = probs.masked_fill(before >= top_p, 0.0)  # keep the fewest tokens that reach top_p
        return order.gather(-1, draw_token(probs)[:, None]).squeeze(-1)  # [R]

    return draw


def draw_token(probs: torch.Tensor) -> torch.Tensor:
    """One index per row of ``probs[R, V]`` (non-negative, not necessarily normalised), index ``i`` with
    probability ``probs[r, i] / probs[r].sum()``, from one uniform number per row; an index of probability
    0 is never drawn.

    Two levels, each in float64 (so even a token of probability 1e-9 keeps its share of ``[0, 1)``): the
    uniform number picks a block of :data:`DRAW_BLOCK` indices by the blocks' cumulative masses, and what is
    left of it picks the index by the cumulative mass within that block. Why not one cumulative sum over the
    vocabulary: torch's ``cumsum`` on a CPU is sequential, 9 ms per decoding step for 16 rows of SmolLM2's
    49,152 tokens; block sums and one block's cumulative sum cost a fraction of that.
    """
    rows, vocab = probs.shape
    padded = torch.nn.functional.pad(probs, (0, -vocab % DRAW_BLOCK)) if vocab % DRAW_BLOCK else probs
    blocks = padded.view(rows, -1, DRAW_BLOCK)  # [R, B, K]
    mass = blocks.sum(-1, dtype=torch.float64)  # [R, B]
    cdf = mass.cumsum(-1)  # [R, B]
    u = torch.rand(rows, 1, dtype=torch.float64, device=probs.device) * cdf[:, -1:]  # [R, 1] in [0, total)
    block = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1)  # [R, 1]: first cdf > u, mass > 0
    u = u - (cdf.gather(-1, block) - mass.gather(-1, block))  # [R, 1]: what is left inside the block
    within = blocks.gather(1, block[:, :, None].expand(-1, 1, DRAW_BLOCK)).squeeze(1).double().cumsum(-1)  # [R, K]
    top = torch.nextafter(within[:, -1:], torch.zeros_like(u))  # below the block's total: rounding never passes it
    u = torch.minimum(u.clamp_(min=0), top)
    index = torch.searchsorted(within, u, right=True).clamp_(max=DRAW_BLOCK - 1)  # [R, 1]: first cdf > u, p > 0
    return (block * DRAW_BLOCK + index).squeeze(-1)  # [R]
