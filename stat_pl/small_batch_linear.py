"""Linear layers for decoding on a CPU: a few rows at a time, computed as ``weight @ x.T``.

A decoding step multiplies a handful of rows (one token per sequence) by every weight matrix. torch's
``F.linear`` computes ``x @ weight.T``; MKL's kernel for that form is slow when ``x`` has few rows on some
CPUs, and the same product as ``weight @ x.T`` is faster there: on 2 cores of an AMD EPYC (AVX2) 16 rows
through SmolLM2-135M's 211 projections took 115-130 ms one way and 77-90 ms the other, and decoding 16
rollouts took 24% less time (bench/README.md). Which form is faster depends on the CPU and its BLAS, so
:func:`weight_first_is_faster` measures both on the model's own weight before :class:`MergedCopy
<stat_pl.models.MergedCopy>` switches its layers. The results agree up to float rounding (another
summation order).
"""

from __future__ import annotations

import time

import torch

#: Inputs with more rows than this (prefill, training) take ``F.linear``.
MAX_ROWS = 64


class SmallBatchLinear(torch.nn.Linear):
    """``nn.Linear`` whose inputs of at most :data:`MAX_ROWS` rows are computed as ``weight @ x.T``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows > MAX_ROWS:
            return super().forward(x)
        out = torch.mm(self.weight, x.reshape(rows, x.shape[-1]).t()).t()  # [rows, out], a transposed view
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)


def weight_first_is_faster(weight: torch.Tensor, rows: int = 16, repeats: int = 5) -> bool:
    """Whether ``weight @ x.T`` beats ``F.linear`` for ``rows`` rows on this CPU (best of ``repeats``, a few ms)."""
    x = torch.randn(rows, weight.shape[1], dtype=weight.dtype)

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return min(times)

    with torch.no_grad():
        linear = best(lambda: torch.nn.functional.linear(x, weight))
        weight_first = best(lambda: torch.mm(weight, x.t()))
    return weight_first < linear


def use_small_batch_linear(model: torch.nn.Module) -> int:
    """Turn every plain ``nn.Linear`` of ``model`` into a :class:`SmallBatchLinear` (same weights); returns how many."""
    layers = [m for m in model.modules() if type(m) is torch.nn.Linear]
    for layer in layers:
        layer.__class__ = SmallBatchLinear
    return len(layers)
