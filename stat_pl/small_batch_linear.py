"""Linear layers for decoding on a CPU: a few rows at a time, by whichever of three kernels is fastest here.

A decoding step multiplies a handful of rows (one token per sequence) by every weight matrix. torch's
``F.linear`` computes ``x @ weight.T``, and MKL's kernel for that form is slow when ``x`` has few rows on
some CPUs. Two other forms compute the same product:

* ``"weight_first"``: ``weight @ x.T`` (MKL again, the other operand order). On 2 cores of an AMD EPYC
  (AVX2) 16 rows through SmolLM2-135M's 211 projections took 77-90 ms instead of 115-130 ms.
* ``"packed"``: oneDNN's linear kernel on a copy of the weight reordered once into oneDNN's blocked layout
  (``torch.ops.mkldnn._reorder_linear_weight`` / ``_linear_pointwise``, the pair torch.compile's CPU backend
  uses for frozen weights). On 2 cores of an AMD EPYC (Zen 4, AVX512), 16 rows by a ``[1536, 576]`` weight:
  0.41 ms ``F.linear``, 0.35 ms weight-first, 0.21 ms packed; by SmolLM2's LM head ``[49152, 576]``: 14.6
  ms weight-first, 6.1 ms packed. The packed copy is remade when the weight changes (its version counter
  moves, as :meth:`MergedCopy.refresh <stat_pl.models.MergedCopy.refresh>` makes it): about 0.2 s for the
  whole model there, once per rollout batch, and it holds a second copy of the weights.

Which form is fastest depends on the CPU and its BLAS, so :func:`fastest_form` measures them on the model's
own weight before :class:`MergedCopy <stat_pl.models.MergedCopy>` switches its layers. The results agree up
to float rounding (another summation order). These layers are for inference: the packed form has no
gradient.
"""

from __future__ import annotations

from typing import Literal

import torch

from stat_pl.hardware import best_seconds

#: Inputs with more rows than this (prefill, training) take ``F.linear``; the packed layout is tuned for it.
MAX_ROWS = 64

Form = Literal["linear", "weight_first", "packed"]


class SmallBatchLinear(torch.nn.Linear):
    """``nn.Linear`` whose inputs of at most :data:`MAX_ROWS` rows are computed in another ``form``."""

    form: Form = "weight_first"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows > MAX_ROWS or self.form == "linear":
            return super().forward(x)
        flat = x.reshape(rows, x.shape[-1])
        if self.form == "packed":
            out = onednn_linear(flat, self._packed_weight(), self.bias)
        else:
            out = torch.mm(self.weight, flat.t()).t()  # [rows, out], a transposed view
            if self.bias is not None:
                out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def _packed_weight(self) -> torch.Tensor:
        """oneDNN's copy of the weight, remade whenever the weight was written (or replaced) since."""
        key = (self.weight.data_ptr(), self.weight._version)
        if getattr(self, "_packed_key", None) != key:
            self._packed = pack_weight(self.weight)
            self._packed_key = key
        return self._packed


def onednn_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x[rows, in] @ W.T + bias`` by oneDNN's linear kernel on ``packed``, ``W`` reordered into its layout."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` reordered into oneDNN's layout for inputs of up to :data:`MAX_ROWS` rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), MAX_ROWS)


def available_forms(weight: torch.Tensor) -> list[Form]:
    """The forms this torch build computes for ``weight`` on a CPU (packed needs oneDNN and its dtype)."""
    forms: list[Form] = ["linear", "weight_first"]
    if weight.device.type == "cpu" and torch.backends.mkldnn.is_available():
        try:
            x = torch.zeros(1, weight.shape[1], dtype=weight.dtype)
            onednn_linear(x, pack_weight(weight))
            forms.append("packed")
        except (RuntimeError, AttributeError):  # a build or dtype without the kernel
            pass
    return forms


def fastest_form(weight: torch.Tensor, rows: int = 16, repeats: int = 5) -> Form:
    """Which form multiplies ``rows`` rows by ``weight`` fastest on this CPU (best of ``repeats``, a few ms)."""
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
    layer.__class__ = SmallBatchLinear
    x = torch.randn(rows, weight.shape[1], dtype=weight.dtype)

    def best(form: Form) -> float:
        layer.form = form
        return best_seconds(lambda: layer(x), repeats)  # the untimed call packs, for the packed form

    with torch.no_grad():
        return min(available_forms(weight), key=best)


def use_small_batch_linear(model: torch.nn.Module, form: Form) -> int:
    """Make every plain ``nn.Linear`` of ``model`` a :class:`SmallBatchLinear` computing ``form``; returns how many."""
    layers = [m for m in model.modules() if type(m) is torch.nn.Linear]
    for layer in layers:
        layer.__class__ = SmallBatchLinear
        layer.form = form
    return len(layers)
