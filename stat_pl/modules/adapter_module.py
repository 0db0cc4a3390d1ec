"""What a LightningModule that trains a (Q)LoRA adapter needs whatever its objective: the model, checkpoints, export.

The student (:class:`~stat_pl.models.StudentConfig`) is built in ``configure_model`` on the device the trainer's
strategy runs it on, in the compute dtype decided once (:mod:`stat_pl.precision`); on a CPU, with
``cpu_kernels: auto``, :func:`stat_pl.cpu.accelerate` is the one call that makes it faster there. The optimizer
is a LightningCLI ``OptimizerCallable``, checkpoints hold only the trainable adapter weights (the frozen base is
reloaded from its source), ``generation_model`` is what engines sample from, and the adapter is written with
PEFT's ``save_pretrained`` when fitting ends. ``SFTModule`` and ``GRPOModule`` add only their objective.

Under FSDP (:class:`~stat_pl.fsdp.QLoRAFSDPStrategy`) the student is loaded for sharding (uniform dtypes, no
transformers checkpointing), CPU kernels stay off (they need whole weights), and saving the adapter gathers it from
the shards: a collective every rank joins, at the end of ``fit`` too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info

from stat_pl.fsdp import check_adapter_keys, gathered_trainable_state, is_fsdp
from stat_pl.models import StudentConfig, load_student
from stat_pl.paged_optimizer import repage_optimizer_state
from stat_pl.precision import compute_dtype_for, resolve_precision

if TYPE_CHECKING:
    from stat_pl.cpu import CpuKernels


class AdapterModule(L.LightningModule):
    """A causal LM + a trainable PEFT LoRA adapter.

    Args:
        student: the model and its adapter settings (:class:`~stat_pl.models.StudentConfig`); the defaults are the
            paper's (NF4, rank 16, alpha 32, dropout 0.05).
        optimizer: builds the optimizer from the trainable parameters (LightningCLI's ``OptimizerCallable``:
            in YAML a ``class_path`` such as ``torch.optim.AdamW`` or the paper's
            ``bitsandbytes.optim.PagedAdamW8bit`` (CUDA) with ``init_args``).
        adapter_dir: where :meth:`on_fit_end` saves the adapter; default ``<default_root_dir>/adapter``.
    """

    def __init__(self, student: StudentConfig, optimizer: OptimizerCallable, adapter_dir: str | None = None) -> None:
        super().__init__()
        self.student = student
        self.optimizer = optimizer
        self.adapter_dir = adapter_dir
        self.model: torch.nn.Module | None = None
        self.compute_dtype: str | None = None  # decided once, in configure_model
        self._cpu_kernels: CpuKernels | None = None

    def configure_model(self) -> None:
        if self.model is not None:
            return
        device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        self.compute_dtype = self._decide_compute_dtype(device)
        sharded = self._trainer is not None and is_fsdp(self.trainer)
        # from_pretrained returns a model in eval mode, and Lightning keeps each submodule's mode as it finds it:
        # without this, LoRA dropout (the paper's 0.05) would never act.
        self.model = load_student(self.student, self.compute_dtype, device, sharded=sharded).train()
        if device.type == "cpu" and self.student.cpu_kernels == "auto" and not sharded:
            from stat_pl import cpu  # the one door to CPU-only code: never imported on a GPU

            self._cpu_kernels = cpu.accelerate(self.compute_dtype)
            rank_zero_info(f"stat_pl: cpu_kernels auto -> {self._cpu_kernels.describe()}")

    def _decide_compute_dtype(self, device: torch.device) -> str:
        """``student.compute_dtype``; ``"auto"`` (left by Python callers: the CLI resolves it) is the trainer's."""
        if self.student.compute_dtype != "auto":
            return self.student.compute_dtype
        if self._trainer is not None:
            return compute_dtype_for(self.trainer.precision)
        return resolve_precision(device.type).dtype

    def generation_model(self) -> torch.nn.Module:
        """The model engines generate with: the live model, or with CPU kernels on a merged copy of it
        (:class:`~stat_pl.cpu.merged_copy.MergedCopy`) that computes what the live model computes now."""
        if self._cpu_kernels is None:
            return self.model
        return self._cpu_kernels.generation_model(self.model)

    def on_train_start(self) -> None:
        """After a resume, paged optimizer state back in paged memory (:mod:`stat_pl.paged_optimizer`)."""
        for optimizer in self.trainer.optimizers:
            repage_optimizer_state(optimizer)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The configured optimizer over the adapter; a paged (CUDA unified memory) one refused on CPU."""
        optimizer = self.optimizer(self.trainable_parameters())
        if type(optimizer).__name__.startswith("Paged") and self.device.type != "cuda":
            raise RuntimeError(
                f"model.optimizer: {type(optimizer).__name__} pages optimizer state through CUDA "
                "unified memory; on CPU use torch.optim.AdamW"
            )
        return optimizer

    # ---- checkpoints and export ------------------------------------------------------------------
    def state_dict(self, *args, **kwargs) -> dict:
        """Only the trainable parameters: the frozen (quantised) base is reloaded from its source."""
        full = super().state_dict(*args, **kwargs)
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        prefix = kwargs.get("prefix", "")
        return {k: v for k, v in full.items() if k.removeprefix(prefix) in trainable}

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):
        """Load adapter weights into the freshly built model.

        The frozen base is never in a checkpoint, so strictness is about the adapter: with ``strict`` every
        saved tensor must find its parameter and every trainable parameter must be in the checkpoint.
        """
        own = super().state_dict()
        if strict:
            trainable = {name for name, p in self.named_parameters() if p.requires_grad}
            check_adapter_keys(set(state_dict), trainable, known=set(own))
        return super().load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False, assign=assign)

    def on_fit_end(self) -> None:
        """Save the adapter from rank 0; under FSDP every rank first joins the gather of its shards."""
        if is_fsdp(self.trainer):
            state = gathered_trainable_state(self.trainer.strategy.model, self, rank0_only=True)
            if self.trainer.is_global_zero:
                self._write_adapter(self.adapter_path(), state)
        elif self.trainer.is_global_zero:
            self.save_adapter(self.adapter_path())

    def adapter_path(self) -> Path:
        return Path(self.adapter_dir or Path(self.trainer.default_root_dir) / "adapter")

    def save_adapter(self, path: str | Path) -> Path:
        """Write the adapter with PEFT's ``save_pretrained`` (loadable by plain PEFT on the base model).

        Under FSDP a collective: every rank gathers the whole adapter and writes it to its ``path`` (vLLM serves each
        rank's own copy).
        """
        if self._trainer is not None and is_fsdp(self.trainer):
            return self._write_adapter(path, gathered_trainable_state(self.trainer.strategy.model, self, False))
        return self._write_adapter(path, None)

    def _write_adapter(self, path: str | Path, state: dict[str, torch.Tensor] | None) -> Path:
        """PEFT's ``save_pretrained`` of the live adapter, or ``state`` (this module's names) gathered from FSDP in
        PEFT's layout (its config and ``adapter_model.safetensors``, keys without the adapter name).

        Why not ``save_pretrained(state_dict=...)`` under FSDP: PEFT picks the adapter's keys by the names of the
        model's LoRA modules, which FSDP's wrappers rename, and it then writes an empty file.
        """
        if state is None:
            self.model.save_pretrained(str(path))
            return Path(path)
        from peft.utils import SAFETENSORS_WEIGHTS_NAME
        from safetensors.torch import save_file

        adapter = self.model.active_adapter
        weights = {k.removeprefix("model.").replace(f".{adapter}.", "."): v.contiguous() for k, v in state.items()}
        Path(path).mkdir(parents=True, exist_ok=True)
        self.model.peft_config[adapter].save_pretrained(str(path))
        save_file(weights, str(Path(path) / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})
        return Path(path)
