"""SFTModule: supervised fine-tuning of a causal LM with (Q)LoRA (DESIGN.md section 4).

The Trainer owns the loop (accumulation, clipping, precision, strategy); this module builds the model
in ``configure_model``, computes the masked next-token loss, and keeps checkpoints small: only the
trainable (adapter) weights are saved, never the frozen base.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from transformers import get_cosine_schedule_with_warmup

from stat_pl.hardware import compute_dtype_for, resolve_precision
from stat_pl.models import LoRAConfig, Quantization, dequantized_copy, load_causal_lm, sync_lora, torch_dtype


def paper_adamw(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW with the paper's SFT settings (lr 2e-4, weight decay 0.1): the default ``optimizer``."""
    return torch.optim.AdamW(params, lr=2e-4, weight_decay=0.1)


class SFTModule(L.LightningModule):
    """A causal LM + PEFT LoRA adapter trained on the assistant tokens.

    Args:
        model: Hub name, local folder, GGUF file or ``offline:smollm2-135m-instruct``.
        quantization: ``"nf4"`` for QLoRA (the paper), ``"int8"``, or ``"none"``.
        compute_dtype: bitsandbytes compute dtype and the generation copy's dtype: ``"auto"`` follows the
            trainer's precision (``bf16-mixed`` -> bfloat16, the paper's; ``32-true`` -> float32), which
            ``precision: auto`` picks from the hardware (:mod:`stat_pl.hardware`).
        lora: adapter settings; the defaults are the paper's.
        optimizer: builds the optimizer from the trainable parameters (LightningCLI's ``OptimizerCallable``:
            in YAML a ``class_path`` such as ``torch.optim.AdamW`` or the paper's
            ``bitsandbytes.optim.PagedAdamW8bit`` (CUDA) with ``init_args``); default AdamW with the paper's
            lr 2e-4 and weight decay 0.1.
        scheduler: an ``LRSchedulerCallable`` stepped every optimizer step; default (None) the paper's
            cosine decay after ``warmup_ratio`` of linear warm-up (transformers' ``get_cosine_schedule_with_warmup``).
        warmup_ratio: the share of optimizer steps of warm-up of the default schedule (paper: 0.03).
        gradient_checkpointing: trade compute for memory on long sequences.
        adapter_dir: where :meth:`on_fit_end` saves the adapter; default ``<default_root_dir>/adapter``.
        init_adapter: a saved PEFT adapter folder to continue training from (continual STAT-ConSel / ConSyn);
            default: a new adapter with ``lora``.
    """

    def __init__(
        self,
        model: str,
        quantization: Quantization = "nf4",
        compute_dtype: str = "auto",
        lora: LoRAConfig | None = None,
        optimizer: OptimizerCallable = paper_adamw,
        scheduler: LRSchedulerCallable | None = None,
        warmup_ratio: float = 0.03,
        gradient_checkpointing: bool = False,
        adapter_dir: str | None = None,
        init_adapter: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.model_name = model
        self.lora = lora or LoRAConfig()
        self.model: torch.nn.Module | None = None
        self._step_started = 0.0
        self._generation_copy: list[torch.nn.Module] = []  # a list, so the copy is not a registered submodule

    def configure_model(self) -> None:
        if self.model is not None:
            return
        device = self.device if self.device.type == "cuda" else "cpu"
        self.model = load_causal_lm(
            self.model_name,
            quantization=self.hparams.quantization,
            compute_dtype=self.compute_dtype(),
            lora=self.lora if self.hparams.init_adapter is None else self.hparams.lora,  # an adapter has its own
            gradient_checkpointing=self.hparams.gradient_checkpointing,
            device=device,
            init_adapter=self.hparams.init_adapter,
        )

    def compute_dtype(self) -> str:
        """The configured compute dtype, with ``"auto"`` resolved from the trainer's precision (or the hardware)."""
        if self.hparams.compute_dtype != "auto":
            return self.hparams.compute_dtype
        if self._trainer is not None:
            return compute_dtype_for(self.trainer.precision)
        return resolve_precision(self.device.type).dtype

    def generation_model(self) -> torch.nn.Module:
        """The model engines generate with: the live model, or on CPU with 4-bit weights a float copy.

        The copy (:func:`~stat_pl.models.dequantized_copy`) is made once, in :meth:`compute_dtype`'s dtype, and gets
        the current adapter weights at every call: the same effective weights, so greedy outputs differ from
        the 4-bit path's only by rounding. Measured on the shared 2-core dev CPU:
        3.3x faster with 2 torch threads, 0.9x with 1 thread (bench/README.md).
        """
        if self.hparams.quantization != "nf4" or self.device.type != "cpu":
            return self.model
        if not self._generation_copy:
            self._generation_copy.append(dequantized_copy(self.model, torch_dtype(self.compute_dtype())))
        sync_lora(self.model, self._generation_copy[0])
        return self._generation_copy[0]

    # ---- steps -----------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def masked_lm_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean next-token cross entropy over the label tokens (prompt and padding are -100)."""
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"])
        return out.loss

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.masked_lm_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        """Log trained tokens per second: non-padding tokens of this micro-batch over its wall time."""
        elapsed = time.perf_counter() - self._step_started
        tokens = int(batch["attention_mask"].sum())
        self.log("train/tokens_per_s", tokens / max(elapsed, 1e-9), prog_bar=True, batch_size=1)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.masked_lm_loss(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]), sync_dist=True)
        return loss

    # ---- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer([p for p in self.model.parameters() if p.requires_grad])
        if type(optimizer).__name__.startswith("Paged") and self.device.type != "cuda":
            raise RuntimeError(f"model.optimizer: {type(optimizer).__name__} pages optimizer state through CUDA "
                               "unified memory; on CPU use torch.optim.AdamW")
        if self.scheduler is not None:
            scheduler = self.scheduler(optimizer)
        else:
            total = max(1, int(self.trainer.estimated_stepping_batches))
            warmup = math.ceil(self.hparams.warmup_ratio * total)
            scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints and export ------------------------------------------------------------------
    def state_dict(self, *args, **kwargs) -> dict:
        """Only the trainable parameters: the frozen (quantised) base is reloaded from its source."""
        full = super().state_dict(*args, **kwargs)
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        prefix = kwargs.get("prefix", "")
        return {k: v for k, v in full.items() if k.removeprefix(prefix) in trainable}

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):
        """Load adapter weights into the freshly built model; every saved tensor must find its parameter."""
        missing_in_model = set(state_dict) - set(super().state_dict())
        if missing_in_model:
            raise KeyError(f"checkpoint has weights this model lacks: {sorted(missing_in_model)[:5]} ... "
                           "was it made for another model or LoRA config?")
        return super().load_state_dict(state_dict, strict=False, assign=assign)

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            self.save_adapter(self.adapter_path())

    def adapter_path(self) -> Path:
        return Path(self.hparams.adapter_dir or Path(self.trainer.default_root_dir) / "adapter")

    def save_adapter(self, path: str | Path) -> Path:
        """Write the adapter with PEFT's ``save_pretrained`` (loadable by plain PEFT on the base model)."""
        self.model.save_pretrained(str(path))
        return Path(path)

