"""What a LightningModule that trains a (Q)LoRA adapter needs whatever its objective: the model, checkpoints, export.

The model is built in ``configure_model`` (quantised weights are placed on the device they load on; on a
CPU training in float32, its frozen linear layers multiply through oneDNN where that is faster,
:mod:`stat_pl.frozen_linear`, and each LoRA layer is one autograd function, :mod:`stat_pl.fused_lora`),
the compute dtype follows the trainer's precision, the optimizer is a LightningCLI ``OptimizerCallable``,
checkpoints hold only the trainable adapter weights (the frozen base is reloaded from its source),
``generation_model`` is what engines sample from, and the adapter is written with PEFT's
``save_pretrained`` when fitting ends. ``SFTModule`` and ``GRPOModule`` add only their objective.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable

from stat_pl.frozen_linear import packed_is_faster, use_packed_frozen_linear
from stat_pl.fused_lora import use_fused_lora
from stat_pl.hardware import compute_dtype_for, remembered, resolve_precision
from stat_pl.models import LoRAConfig, MergedCopy, Quantization, load_causal_lm, torch_dtype


class AdapterModule(L.LightningModule):
    """A causal LM + a trainable PEFT LoRA adapter.

    Args:
        model: Hub name, local folder, GGUF file or ``offline:smollm2-135m-instruct``.
        quantization: ``"nf4"`` for QLoRA (the paper), ``"int8"``, or ``"none"``.
        compute_dtype: bitsandbytes compute dtype and the generation copy's dtype: ``"auto"`` follows the
            trainer's precision (``bf16-mixed`` -> bfloat16, the paper's; ``32-true`` -> float32), which
            ``precision: auto`` picks from the hardware (:mod:`stat_pl.hardware`).
        lora: adapter settings; the defaults are the paper's.
        optimizer: builds the optimizer from the trainable parameters (LightningCLI's ``OptimizerCallable``:
            in YAML a ``class_path`` such as ``torch.optim.AdamW`` or the paper's
            ``bitsandbytes.optim.PagedAdamW8bit`` (CUDA) with ``init_args``).
        init_adapter: a saved PEFT adapter folder to continue training from (continual STAT, GRPO after
            SFT); its own r/alpha/targets are used. Default: a new adapter with ``lora``.
        gradient_checkpointing: trade compute for memory on long sequences.
        adapter_dir: where :meth:`on_fit_end` saves the adapter; default ``<default_root_dir>/adapter``.
    """

    def __init__(
        self,
        model: str,
        optimizer: OptimizerCallable,
        quantization: Quantization = "nf4",
        compute_dtype: str = "auto",
        lora: LoRAConfig | None = None,
        init_adapter: str | None = None,
        gradient_checkpointing: bool = False,
        adapter_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.model_name = model
        self.optimizer = optimizer
        self.quantization = quantization
        self.configured_compute_dtype = compute_dtype
        self.lora = lora
        self.init_adapter = init_adapter
        self.gradient_checkpointing = gradient_checkpointing
        self.adapter_dir = adapter_dir
        self.model: torch.nn.Module | None = None
        self._generation_copy: list[MergedCopy] = []  # a list: the copy is not a submodule (nor in checkpoints)

    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.model = load_causal_lm(
            self.model_name,
            quantization=self.quantization,
            compute_dtype=self.compute_dtype(),
            lora=self.lora if self.init_adapter else (self.lora or LoRAConfig()),  # an adapter has its own
            gradient_checkpointing=self.gradient_checkpointing,
            device=self.device if self.device.type == "cuda" else "cpu",
            init_adapter=self.init_adapter,
        )
        if self.device.type == "cpu" and self.compute_dtype() == "float32":
            self._pack_frozen_linears()
            use_fused_lora(self.model)

    def _pack_frozen_linears(self) -> None:
        """Frozen float32 layers through oneDNN's packed kernel, where a probe on the largest projection is faster
        (its verdict kept for this machine: :func:`~stat_pl.hardware.remembered`)."""
        head = self.model.get_output_embeddings()
        frozen = [
            m.weight
            for m in self.model.modules()
            if type(m) is torch.nn.Linear and not m.weight.requires_grad and m is not head
        ]
        if not frozen:
            return
        largest = max(frozen, key=torch.Tensor.numel)
        if remembered("packed_frozen_linear", lambda: packed_is_faster(largest), *largest.shape):
            use_packed_frozen_linear(self.model)

    def compute_dtype(self) -> str:
        """The configured compute dtype, with ``"auto"`` resolved from the trainer's precision (or the hardware)."""
        if self.configured_compute_dtype != "auto":
            return self.configured_compute_dtype
        if self._trainer is not None:
            return compute_dtype_for(self.trainer.precision)
        return resolve_precision(self.device.type).dtype

    def generation_model(self) -> torch.nn.Module:
        """The model engines generate with: on CUDA the live model; on CPU a :class:`~stat_pl.models.MergedCopy`.

        The copy (a plain model with the adapter merged in, in :meth:`compute_dtype`'s dtype) is made once and
        gets the current adapter at every call, so it computes what the live model computes, up to rounding,
        without bitsandbytes' per-step dequantisation or PEFT's unmerged LoRA path.
        """
        if self.device.type != "cpu":
            return self.model
        if not self._generation_copy:
            self._generation_copy.append(MergedCopy(self.model, torch_dtype(self.compute_dtype())))
        return self._generation_copy[0].refresh(self.model)

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
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        unexpected, missing = set(state_dict) - set(own), trainable - set(state_dict)
        if strict and (unexpected or missing):
            raise KeyError(
                f"checkpoint does not fit this model's adapter: weights it lacks {sorted(unexpected)[:5]}, "
                f"adapter weights missing from it {sorted(missing)[:5]}; was it made for another model "
                "or LoRA config?"
            )
        return super().load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False, assign=assign)

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            self.save_adapter(self.adapter_path())

    def adapter_path(self) -> Path:
        return Path(self.adapter_dir or Path(self.trainer.default_root_dir) / "adapter")

    def save_adapter(self, path: str | Path) -> Path:
        """Write the adapter with PEFT's ``save_pretrained`` (loadable by plain PEFT on the base model)."""
        self.model.save_pretrained(str(path))
        return Path(path)
