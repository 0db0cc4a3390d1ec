"""A test callback (importable by class_path from a subprocess) that records each batch's example indices."""

import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class BatchRecorder(Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        row = {"step": trainer.global_step, "epoch": trainer.current_epoch, "index": batch["index"].tolist()}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
