"""A test callback (importable by class_path from a subprocess) that records each batch's example indices."""

import hashlib
import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class BatchRecorder(Callback):
    """Appends one JSON line per batch: step, epoch, rank, the batch's example indices, a digest of the weights."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        weights = getattr(trainer.datamodule._batch_sampler.sampler, "weights", None)  # None: permutation sampling
        digest = hashlib.sha1(weights.numpy().tobytes()).hexdigest() if weights is not None else None
        row = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "index": batch["index"].tolist(),
            "rank": trainer.global_rank,
            "weights": digest,
        }
        path = self.path.with_suffix(f".rank{trainer.global_rank}.jsonl") if trainer.world_size > 1 else self.path
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
