"""TEST-ONLY: :class:`~stat_pl.fsdp.QLoRAFSDPStrategy` on CPU processes over gloo.

torch's FSDP runs on a CPU only when told the device: without a ``device_id`` it looks for an accelerator and raises
"FSDP needs a non-CPU accelerator device", and Lightning passes ``device_id=root_device.index``, which is ``None`` for
the CPU. This subclass wraps with ``device_id=torch.device("cpu")`` itself (Lightning then keeps the wrapped model and
adds activation checkpointing), and without ``sync_module_states``, which FSDP allows only for GPU tensors (the
ranks start equal anyway: ``seed_everything`` gives each the same LoRA init). Checkpoints gather the optimizer state
without FSDP's CPU offload: FSDP gathers each state (Adam's two moments) of a unit into one reused buffer and offloads
with ``.cpu()``, which on a CPU is no copy, so the saved first moments were the second moments (torch 2.13,
``_optim_utils._allgather_orig_param_states``; a resumed run diverged); without offload FSDP clones them.
Everything else is the shipped strategy.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.distributed.fsdp import (
    FullOptimStateDictConfig,
    FullStateDictConfig,
    FullyShardedDataParallel,
    OptimStateKeyType,
    StateDictType,
)

from stat_pl.fsdp import QLoRAFSDPStrategy


class CPUQLoRAFSDPStrategy(QLoRAFSDPStrategy):
    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        self.configure_policies(model)
        self.kwargs["sync_module_states"] = False
        wrapped = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )
        del self.kwargs["auto_wrap_policy"]  # applied above; Lightning would warn that it is ignored
        return FSDPStrategy._setup_model(self, wrapped)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer._optimizer
        weights, moments = (
            FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
            FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True),
        )
        with FullyShardedDataParallel.state_dict_type(self.model, StateDictType.FULL_STATE_DICT, weights, moments):
            state = FullyShardedDataParallel.optim_state_dict(self.model, optimizer)
        if self.global_rank == 0:  # Lightning's layout: keyed by parameter index
            state = FullyShardedDataParallel.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
        return state


class WrapRecorder(Callback):
    """Writes, when training starts, what FSDP wrapped: the class of every FSDP unit's module and of every module
    activation checkpointing wrapped, with counts (rank 0)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            units = Counter(
                type(m.module).__name__
                for m in trainer.strategy.model.modules()
                if isinstance(m, FullyShardedDataParallel)
            )
            checkpointed = Counter(
                type(m._checkpoint_wrapped_module).__name__
                for m in trainer.strategy.model.modules()
                if isinstance(m, CheckpointWrapper)
            )
            self.path.write_text(json.dumps({"units": units, "checkpointed": checkpointed}))
