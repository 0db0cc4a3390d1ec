"""StatTrainer: Lightning's Trainer with the hardware choices stat-pl makes for its users.

Two defaults differ from ``lightning.Trainer`` and nothing else does:

* ``precision="auto"`` resolves to ``bf16-mixed`` where bf16 is native and fast and to ``32-true``
  elsewhere (:func:`stat_pl.precision.resolve_precision`), and says which and why in one log line. An
  explicit precision is kept as given; an explicit bf16 on a CPU that emulates bf16 gets a warning.
* with stdout not a terminal (a log file, CI) the progress bar is
  :class:`~stat_pl.line_progress.LineProgress`, plain lines every ``log_every_n_steps``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.utilities import rank_zero_info

from stat_pl.line_progress import LineProgress
from stat_pl.precision import resolve_precision, warn_if_bf16_emulated

log = logging.getLogger(__name__)


class StatTrainer(L.Trainer):
    """``lightning.Trainer`` with ``precision="auto"`` and line progress off a terminal.

    Args:
        precision: ``"auto"`` (the hardware decides: see :mod:`stat_pl.precision`) or any Lightning precision.
        accelerator, callbacks, enable_progress_bar: as in ``lightning.Trainer``.
        **kwargs: every other ``lightning.Trainer`` argument.
    """

    def __init__(
        self,
        *,
        accelerator: str = "auto",
        precision: str | int | None = "auto",
        callbacks: list[Callback] | Callback | None = None,
        enable_progress_bar: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if precision == "auto":
            choice = resolve_precision(str(accelerator))
            rank_zero_info(f"stat_pl: precision auto -> {choice.lightning} ({choice.reason})")
            precision = choice.lightning
        else:
            warn_if_bf16_emulated(precision, str(accelerator))
        callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks or [])
        has_bar = any(isinstance(c, ProgressBar) for c in callbacks)
        if enable_progress_bar is not False and not has_bar and not sys.stdout.isatty():
            callbacks.append(LineProgress())
        super().__init__(
            accelerator=accelerator,
            precision=precision,
            callbacks=callbacks,
            enable_progress_bar=enable_progress_bar,
            **kwargs,
        )
