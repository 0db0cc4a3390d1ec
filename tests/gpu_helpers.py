"""A callback the GPU tests put into CLI runs (importable there: the tests put this folder on PYTHONPATH)."""

import json
import sys
from pathlib import Path

import bitsandbytes as bnb
import torch
from lightning.pytorch.callbacks import Callback


class PlacementRecorder(Callback):
    """Writes one JSON file when training ends: the devices the run put the student's 4-bit weights, its LoRA weights
    and its optimizer state on, the strategy's root device, the precision and compute dtype, the optimizer's class,
    each micro-batch's loss (SFT), and the ``stat_pl.cpu`` modules the process imported (none on a GPU run)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if isinstance(outputs, dict) and "loss" in outputs:
            self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer, pl_module) -> None:
        model = pl_module.model
        four_bit = [m.weight for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        lora = [p for name, p in model.named_parameters() if "lora_" in name]
        optimizer = trainer.optimizers[0]
        state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
        record = {
            "root_device": str(trainer.strategy.root_device),
            "precision": str(trainer.precision),
            "compute_dtype": pl_module.compute_dtype,
            "four_bit": {"count": len(four_bit), "devices": sorted({str(w.device) for w in four_bit})},
            "lora": {"count": len(lora), "devices": sorted({str(p.device) for p in lora})},
            "optimizer": type(optimizer).__name__,
            "optimizer_state": sorted({str(t.device) for t in state}),
            "losses": self.losses,
            "cpu_door": sorted(m for m in sys.modules if m.startswith("stat_pl.cpu")),
        }
        self.path.write_text(json.dumps(record))


class RankEngineRecorder(Callback):
    """Writes ``<path>.rank<r>`` when training ends: the rank's CUDA device, the environment vLLM's launcher read,
    and the extra arguments its colocated vLLM engine started with (``external_launcher`` under DDP)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        import os

        engine = pl_module._generator.engine if pl_module._generator is not None else None
        record = {
            "device": str(trainer.strategy.root_device),
            "cuda_current": torch.cuda.current_device(),
            "env": {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")},
            "launch": engine.launch.arguments if engine is not None else None,
        }
        Path(f"{self.path}.rank{trainer.global_rank}").write_text(json.dumps(record))
