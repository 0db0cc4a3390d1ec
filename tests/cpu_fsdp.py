"""TEST-ONLY: :class:`~stat_pl.fsdp.QLoRAFSDPStrategy` on CPU processes over gloo.

torch's FSDP runs on a CPU only when told the device: without a ``device_id`` it looks for an accelerator and raises
"FSDP needs a non-CPU accelerator device", and Lightning passes ``device_id=root_device.index``, which is ``None`` for
the CPU. This subclass wraps with ``device_id=torch.device("cpu")`` itself (Lightning then keeps the wrapped model and
adds activation checkpointing), and without ``sync_module_states``, which FSDP allows only for GPU tensors (the
ranks start equal anyway: ``seed_everything`` gives each the same LoRA init). Everything else is the shipped strategy.
"""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel

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
