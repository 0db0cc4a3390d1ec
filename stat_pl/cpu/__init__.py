"""CPU speed, behind one door: what stat-pl does only to make CPUs fast, switched by ``student.cpu_kernels``.

:class:`~stat_pl.modules.adapter_module.AdapterModule` calls :func:`accelerate` once, when it builds its model on
a CPU and ``cpu_kernels`` is ``"auto"`` (the default); nothing under ``stat_pl.cpu`` is imported on a GPU run or
with ``cpu_kernels: off``. Each part is here because it makes a shipped CPU config (``configs/demo.yaml``,
``configs/grpo_smollm2_math.yaml``, ``configs/sft_smollm2_math.yaml``) faster end to end than the plain library
route; bench/README.md ("CPU routes") has the figures, docs/cpu.md the notes. One part passes that bar:

* the generation copy (:class:`~stat_pl.cpu.merged_copy.MergedCopy`): engines sample from a plain float copy of
  the student with the adapter merged in, refreshed before each use, instead of the live 4-bit + PEFT model.

No choice here depends on a timing probe: a rerun of a config makes the same choices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stat_pl.cpu.merged_copy import MergedCopy
from stat_pl.models import torch_dtype


@dataclass
class CpuKernels:
    """What :func:`accelerate` turned on for one student, and the generation copy it keeps."""

    compute_dtype: str
    copy: MergedCopy | None = None  # made on first use: a run may never generate

    def generation_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """A plain model computing what ``model`` (the live student) computes now, up to rounding."""
        if self.copy is None:
            self.copy = MergedCopy(model, torch_dtype(self.compute_dtype))
        return self.copy.refresh(model)

    def describe(self) -> str:
        return f"engines generate from a merged {self.compute_dtype} copy of the student"


def accelerate(compute_dtype: str) -> CpuKernels:
    """The CPU speed-ups for a student built on a CPU (its caller logs :meth:`CpuKernels.describe`)."""
    return CpuKernels(compute_dtype)
