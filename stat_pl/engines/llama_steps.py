"""One decoding step of a Llama-family model on a CPU without transformers' per-layer machinery.

A decoding step of SmolLM2-135M for 16 rows spent a third of its time outside the linear layers
(2 cores of an AMD EPYC, bench/README.md): transformers' mask building, its static cache's index
bookkeeping, per-layer wrappers, and attention over the whole preallocated cache, including the slots
no token has reached yet. :class:`LlamaSteps` runs the same model, the same modules (embedding, norms,
projections, rotary embedding, activation, head) in the same order, with less around them:

* one boolean ``[R, 1, 1, S]`` attention mask per step, shared by every layer;
* keys and values written with one slice copy per layer; attention over the ``S`` slots filled so far;
* grouped-query heads folded onto their key/value head for the one query (``[R, Hkv, Hq / Hkv, D]``), so
  no key or value is repeated.

In-process on 2 cores of an AMD EPYC (Zen 4), one GRPO rollout batch of SmolLM2-135M (16 rows, 64 new
tokens, float32 merged copy) took 7.6 s instead of 8.3 s (medians of 8 interleaved runs, faster in 7).
It serves ``llama`` and ``qwen2`` (without sliding window) models on a CPU, the architectures whose
decoder is exactly this (:func:`supports`); anything else decodes through the model's own forward. The
tests compare its logits and greedy tokens with transformers'.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

#: Model types whose decoder layer is pre-norm attention + gated MLP with rotary embeddings, as here.
ARCHITECTURES = ("llama", "qwen2")


def supports(model: torch.nn.Module) -> bool:
    """Whether :class:`LlamaSteps` computes ``model``'s forward: a plain (not PEFT-wrapped) Llama/Qwen2 on a CPU."""
    config = getattr(model, "config", None)
    decoder = getattr(model, "model", None)
    return (
        config is not None
        and config.model_type in ARCHITECTURES
        and not getattr(config, "use_sliding_window", False)
        and all(hasattr(decoder, name) for name in ("layers", "embed_tokens", "norm", "rotary_emb"))
        and next(model.parameters()).device.type == "cpu"
    )


class LlamaSteps:
    """Decoding steps from a prefilled cache: ``steps(tokens[R], positions[R, 1], mask[R, S]) -> logits[R, V]``.

    ``prefill`` holds the prompts' keys and values ``[B, Hkv, T, D]`` per layer; each prompt's are repeated
    for its ``samples`` consecutive rows (``R = B x samples``), with room for ``capacity`` positions in all.
    ``mask`` is the 0/1 attention mask over the ``S`` positions filled after this step (the prompts' left
    padding is 0), as for the model's own forward.
    """

    def __init__(self, model: torch.nn.Module, prefill: DynamicCache, samples: int, capacity: int) -> None:
        self.decoder = model.model
        self.head = model.get_output_embeddings()
        self.filled = prefill.layers[0].keys.shape[2]  # positions written so far
        self.keys, self.values = [], []  # per layer [R, Hkv, capacity, D]
        for layer in prefill.layers:
            for cached, store in ((layer.keys, self.keys), (layer.values, self.values)):
                rows, heads, width, dim = cached.shape
                buffer = cached.new_empty(rows * samples, heads, capacity, dim)
                buffer[:, :, :width] = cached.repeat_interleave(samples, 0)
                store.append(buffer)

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.filled += 1
        if mask.shape[1] != self.filled:
            raise ValueError(f"LlamaSteps: the mask covers {mask.shape[1]} positions, the cache {self.filled}")
        hidden = self.decoder.embed_tokens(tokens[:, None])  # [R, 1, H]
        cos, sin = self.decoder.rotary_emb(hidden, positions)  # [R, 1, D]
        attend = mask.bool()[:, None, None, :]  # [R, 1, 1, S]
        for index, layer in enumerate(self.decoder.layers):
            hidden = hidden + self._attention(layer.self_attn, layer.input_layernorm(hidden), cos, sin, attend, index)
            mlp = layer.mlp
            normed = layer.post_attention_layernorm(hidden)
            hidden = hidden + mlp.down_proj(mlp.act_fn(mlp.gate_proj(normed)) * mlp.up_proj(normed))
        return self.head(self.decoder.norm(hidden))[:, 0]  # [R, V]

    def _attention(
        self,
        attention: torch.nn.Module,
        normed: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attend: torch.Tensor,
        index: int,
    ) -> torch.Tensor:
        rows = normed.shape[0]
        keys, values = self.keys[index], self.values[index]  # [R, Hkv, capacity, D]
        kv_heads, dim = keys.shape[1], keys.shape[3]
        query = rotate(attention.q_proj(normed).view(rows, -1, dim), cos, sin)  # [R, Hq, D]
        keys[:, :, self.filled - 1] = rotate(attention.k_proj(normed).view(rows, kv_heads, dim), cos, sin)
        values[:, :, self.filled - 1] = attention.v_proj(normed).view(rows, kv_heads, dim)
        grouped = query.view(rows, kv_heads, -1, dim)  # [R, Hkv, Hq / Hkv, D]: query head h reads kv head h // group
        out = torch.nn.functional.scaled_dot_product_attention(
            grouped,
            keys[:, :, : self.filled],
            values[:, :, : self.filled],
            attn_mask=attend,
            scale=attention.scaling,
        )  # [R, Hkv, Hq / Hkv, D]
        return attention.o_proj(out.reshape(rows, 1, -1))  # [R, 1, H]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x[R, heads, D]`` at each row's position (``cos``/``sin`` ``[R, 1, D]``), as transformers'
    ``apply_rotary_pos_emb``: ``x * cos + rotate_half(x) * sin``."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
