"""Padding token-id sequences and per-token values into rectangular tensors.

Decoder-only generation pads prompts on the left (every row's next token lands in the same column); completions
follow their prompt, so they are padded on the right. Generation (:mod:`stat_pl.engines.hf`) and GRPO's training
forward (:mod:`stat_pl.modules.grpo_forward`) both use these, so training never imports a generation engine.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


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


def right_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids[N, L], mask[N, L])``, each sequence left-aligned (completions follow their prompt); float mask."""
    width = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.float32)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def pad_values(rows: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    """Stack 1-D float tensors (per-token values of sequences), right-padded with 0 to ``width``: ``[N, width]``."""
    out = torch.zeros(len(rows), width, dtype=torch.float32, device=rows[0].device if rows else None)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out
