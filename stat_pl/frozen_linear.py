"""Frozen projections of float32 LoRA training on a CPU, forward and backward through oneDNN on packed weights.

LoRA trains the adapter only: every base projection and the LM head keep their weights, so each can be
reordered once into oneDNN's blocked layout and multiplied by oneDNN's linear kernel
(``torch.ops.mkldnn._reorder_linear_weight`` / ``_linear_pointwise``, the pair that
:mod:`stat_pl.small_batch_linear` uses for decoding) instead of torch's ``F.linear``, which calls MKL. A
frozen layer's backward needs only the input gradient ``grad @ W``, itself a linear layer with weight ``W.T``,
so a second packed copy (of ``W.T``) serves it. On 2 cores of an AMD EPYC (Zen 4, AVX512), 232 rows by
SmolLM2-135M's projections ran at 178-185 GFLOP/s packed against 101-149 through ``F.linear``, and by its LM
head at 148 against 85 (bench/README.md has the training step). The cost is two more copies of the frozen
weights (about 0.85 GB for SmolLM2-135M), remade when a weight changes (its version counter moves).

Only float32 compute: under bf16 autocast ``F.linear`` already runs oneDNN's bf16 kernel and autocast does not
know the packed op, so a layer falls back to ``F.linear`` there, and whenever its weight requires a gradient.
:func:`packed_is_faster` measures both on the model's own largest weight before :func:`use_packed_frozen_linear`
switches its layers.
"""

from __future__ import annotations

import torch

from stat_pl.hardware import best_seconds
from stat_pl.small_batch_linear import onednn_linear

#: The row count oneDNN's layout is chosen for: a group's completions (4 x 64 tokens) in GRPO, a few SFT rows.
TRAINING_ROWS = 256


class PackedFrozenLinear(torch.nn.Linear):
    """``nn.Linear`` that, with a frozen float32 weight and no autocast, multiplies through packed copies."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.requires_grad or x.dtype != torch.float32 or torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        forward, backward = self._packed_weights()
        return _PackedLinear.apply(x, forward, backward, self.bias, self.out_features)

    def _packed_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """oneDNN's copies of ``W`` and ``W.T``, remade whenever the weight was written (or replaced) since."""
        key = (self.weight.data_ptr(), self.weight._version)
        if getattr(self, "_packed_key", None) != key:
            weight = self.weight.detach()
            self._packed = (pack_for_training(weight), pack_for_training(weight.t()))
            self._packed_key = key
        return self._packed


class _PackedLinear(torch.autograd.Function):
    """``x @ W.T + b`` and its input gradient ``grad @ W``, both by oneDNN on packed weights; no weight gradient."""

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        packed: torch.Tensor,
        packed_t: torch.Tensor,
        bias: torch.Tensor | None,
        out_features: int,
    ) -> torch.Tensor:
        ctx.packed_t = packed_t
        ctx.has_bias = bias is not None
        flat = x.reshape(-1, x.shape[-1])
        out = onednn_linear(flat, packed, bias)
        return out.view(*x.shape[:-1], out_features)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        flat = grad.reshape(-1, grad.shape[-1]).contiguous()
        grad_x = onednn_linear(flat, ctx.packed_t)
        grad_bias = flat.sum(0) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return grad_x.view(*grad.shape[:-1], grad_x.shape[-1]), None, None, grad_bias, None


def frozen_product(layer: torch.nn.Linear, flat: torch.Tensor) -> torch.Tensor:
    """``flat[rows, in] @ W.T + b`` of a frozen layer: on its packed copy when it is a :class:`PackedFrozenLinear`."""
    if isinstance(layer, PackedFrozenLinear):
        return onednn_linear(flat, layer._packed_weights()[0], layer.bias)
    return torch.nn.functional.linear(flat, layer.weight, layer.bias)


def frozen_input_grad(layer: torch.nn.Linear, grad: torch.Tensor) -> torch.Tensor:
    """``grad[rows, out] @ W``, the input gradient of a frozen layer: on its packed ``W.T`` when it has one."""
    if isinstance(layer, PackedFrozenLinear):
        return onednn_linear(grad.contiguous(), layer._packed_weights()[1])
    return grad @ layer.weight


def pack_for_training(weight: torch.Tensor) -> torch.Tensor:
    """``weight[out, in]`` reordered into oneDNN's layout for inputs of about :data:`TRAINING_ROWS` rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), TRAINING_ROWS)


def packed_is_faster(weight: torch.Tensor, repeats: int = 3) -> bool:
    """Whether the packed forward beats ``F.linear`` for :data:`TRAINING_ROWS` rows by ``weight`` on this CPU.

    False where this torch build has no oneDNN kernel for it. Best of ``repeats`` each; tens of ms.
    """
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return False
    x = torch.randn(TRAINING_ROWS, weight.shape[1])
    try:
        packed = pack_for_training(weight.detach())
    except (RuntimeError, AttributeError):  # a build without the kernel
        return False
    with torch.no_grad():
        linear = best_seconds(lambda: torch.nn.functional.linear(x, weight), repeats)
        onednn = best_seconds(lambda: onednn_linear(x, packed), repeats)
    return onednn < linear


def use_packed_frozen_linear(model: torch.nn.Module) -> int:
    """Make every plain ``nn.Linear`` of ``model`` whose weight is frozen a :class:`PackedFrozenLinear`.

    Meant for a LoRA model after PEFT froze its base (PEFT's ``lora_A``/``lora_B`` layers train, so they stay
    as they are). The packed copies are made now, not in the first step that needs them (with zero-advantage
    skipping that can be any step). Returns how many layers were switched.
    """
    layers = [m for m in model.modules() if type(m) is torch.nn.Linear and not m.weight.requires_grad]
    for layer in layers:
        layer.__class__ = PackedFrozenLinear
        if layer.weight.dtype == torch.float32:
            layer._packed_weights()
    return len(layers)
