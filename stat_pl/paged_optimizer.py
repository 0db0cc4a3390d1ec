"""Paged optimizer state again after a resume: bitsandbytes' paged optimizers (the paper's ``PagedAdamW8bit``) keep
their large state buffers in CUDA unified memory, which the driver pages out to host memory under pressure.

Resuming loses that: Lightning reads the checkpoint onto the host, bitsandbytes' ``load_state_dict`` keeps the host
tensors, and Lightning then moves them to the rank's device as ordinary device tensors, so a run that fitted before a
resume can run out of memory after it. :func:`repage_optimizer_state` puts the buffers a fresh optimizer would page
back into paged memory. CUDA only, written against bitsandbytes' documented ``functional.get_paged`` and its
optimizers' ``page_mng``; tested on a GPU only (``tests/test_gpu.py``): on a CPU it is a no-op.
"""

from __future__ import annotations

import torch

#: bitsandbytes pages a state buffer of at least this many elements (``Optimizer8bit.get_state_buffer``).
PAGED_MIN_NUMEL = 100_000
#: The state buffers bitsandbytes allocates through ``get_state_buffer`` (the rest, quantisation maps and absmax,
#: are small and never paged).
PAGED_STATE_KEYS = ("state1", "state2")


def repage_optimizer_state(optimizer: torch.optim.Optimizer) -> int:
    """Move a paged bitsandbytes optimizer's large CUDA state buffers back into paged memory; how many were moved.

    Any other optimizer, and buffers already paged, on the host, or small, are left as they are.
    """
    if not getattr(optimizer, "is_paged", False):
        return 0
    from bitsandbytes import functional

    moved = 0
    for state in optimizer.state.values():
        for key in PAGED_STATE_KEYS:
            buffer = state.get(key)
            if not _needs_paging(buffer):
                continue
            paged = functional.get_paged(*buffer.shape, dtype=buffer.dtype, device=buffer.device)
            paged.copy_(buffer)
            optimizer.page_mng.paged_tensors.append(paged)
            state[key] = paged
            moved += 1
    return moved


def _needs_paging(buffer: object) -> bool:
    return (
        isinstance(buffer, torch.Tensor)
        and buffer.device.type == "cuda"
        and buffer.numel() >= PAGED_MIN_NUMEL
        and not getattr(buffer, "is_paged", False)
    )
