"""SFTModule: supervised fine-tuning of a causal LM with (Q)LoRA (DESIGN.md section 4).

The Trainer owns the loop (accumulation, clipping, precision, strategy); this module computes the
masked next-token loss and the paper's schedule. The model, the optimizer, small (adapter-only)
checkpoints and the export are :class:`~stat_pl.modules.adapter_module.AdapterModule`'s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from transformers import get_cosine_schedule_with_warmup

from stat_pl.models import StudentConfig
from stat_pl.modules.adapter_module import AdapterModule


def paper_adamw(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW at lr 2e-4 and the paper's weight decay 0.1: the default ``optimizer``.

    The paper picks each method's peak lr from {5e-4, 2e-4, 1e-4, 8e-5, 2e-5} by MATH accuracy; 2e-4 is one
    point of that grid, fixed here for every method (docs/paper.md, Departures).
    """
    return torch.optim.AdamW(params, lr=2e-4, weight_decay=0.1)


class SFTModule(AdapterModule):
    """A causal LM + PEFT LoRA adapter trained on the assistant tokens.

    Args:
        student: the model and adapter settings (:class:`~stat_pl.models.StudentConfig`).
        optimizer: an ``OptimizerCallable`` (see :class:`AdapterModule`); default AdamW at lr 2e-4 (one point
            of the paper's per-method lr grid, not a value the paper fixes) and the paper's weight decay 0.1.
        scheduler: an ``LRSchedulerCallable`` stepped every optimizer step; default (None) the paper's
            cosine decay after ``warmup_ratio`` of linear warm-up (transformers' ``get_cosine_schedule_with_warmup``).
        warmup_ratio: the share of optimizer steps of warm-up of the default schedule (paper: 0.03).
        adapter_dir: where the adapter is saved when fitting ends (default ``<default_root_dir>/adapter``).
        seed: seeds the LoRA dropout masks of each micro-batch from ``(seed, epoch, batch, rank)``, so a run resumed
            from any checkpoint, even after a kill, trains exactly as the uninterrupted run (the data sampler has
            its own seed and state); seeding the global RNG once would not survive the restart (the resumed run draws
            from it in other places, e.g. when it builds the data loader's iterator mid-epoch).
    """

    def __init__(
        self,
        student: StudentConfig,
        optimizer: OptimizerCallable = paper_adamw,
        scheduler: LRSchedulerCallable | None = None,
        warmup_ratio: float = 0.03,
        adapter_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(student, optimizer, adapter_dir)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.scheduler = scheduler
        self._step_started = 0.0

    # ---- steps -----------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def masked_lm_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean next-token cross entropy over the label tokens (prompt and padding are -100)."""
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return out.loss

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        micro_batch = ((self.hparams.seed * 1_000_003 + self.current_epoch) * 1_000_003 + batch_idx) * 1_009
        micro_batch_seed = (micro_batch + self.global_rank) % 2**64  # torch.manual_seed's range, for any int seed
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(micro_batch_seed)  # this micro-batch's dropout masks, after a resume too
            loss = self.masked_lm_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        """Log trained tokens per second: non-padding tokens of this micro-batch over its wall time.

        Not Lightning's ``ThroughputMonitor``: it reports nothing until its window (100 batches by default)
        is full, longer than the demo's whole epoch, and it logs to the logger only, so the progress line
        (:class:`~stat_pl.line_progress.LineProgress`) could not show tokens/s.
        """
        elapsed = time.perf_counter() - self._step_started
        tokens = int(batch["attention_mask"].sum())
        self.log("train/tokens_per_s", tokens / max(elapsed, 1e-9), prog_bar=True, batch_size=1)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.masked_lm_loss(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]), sync_dist=True)
        return loss

    # ---- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.build_optimizer()
        if self.scheduler is not None:
            scheduler = self.scheduler(optimizer)
        else:
            total = max(1, int(self.trainer.estimated_stepping_batches))
            warmup = math.ceil(self.hparams.warmup_ratio * total)
            scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
