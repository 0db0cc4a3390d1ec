"""An offline stage over several devices and nodes, through Lightning Fabric: the ranks, their devices, their messages.

``python -m stat_pl profile --config X --devices 4`` runs the stage once per device, as ``fit`` does with
``trainer.devices``: Fabric's launcher starts the other processes (or finds them started by ``torchrun`` or SLURM),
each rank generates its share of the questions on its own device, and rank 0 judges them all. stat-pl has no launcher
of its own. Python objects between ranks travel over :class:`~stat_pl.distributed.ObjectGroup` (gloo, on the host)
with the stage's ``timeout_s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch

from stat_pl.distributed import ObjectGroup
from stat_pl.errors import UserError
from stat_pl.models import default_device


@dataclass(frozen=True)
class StageRanks:
    """This process's place in a stage: its rank, how many there are, its device, the group for Python objects."""

    rank: int
    world_size: int
    device: torch.device
    objects: ObjectGroup

    @property
    def is_zero(self) -> bool:
        return self.rank == 0


def launch_ranks(
    stage: str, accelerator: str, devices: int, num_nodes: int, timeout_s: float, device: str | None
) -> StageRanks:
    """This process's :class:`StageRanks`; with more than one device in all, Fabric launches the other ranks now.

    ``device`` places a single-process stage (``cuda:1``, ``cpu``); with several ranks each takes its own device and
    ``device`` must be unset.
    """
    if devices < 1 or num_nodes < 1:
        raise UserError(f"{stage}: devices and num_nodes must be >= 1, got devices={devices}, num_nodes={num_nodes}")
    if devices * num_nodes == 1:
        place = torch.device(device) if device else default_device()
        return StageRanks(0, 1, place, ObjectGroup(timeout_s, f"{stage}: timeout_s"))
    if device is not None:
        raise UserError(
            f"{stage}: device={device!r} places a single process; with devices={devices} every rank takes its own "
            "device: unset `device`"
        )
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    fabric = Fabric(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=DDPStrategy(timeout=timedelta(seconds=timeout_s)),
    )
    fabric.launch()
    return StageRanks(
        fabric.global_rank, fabric.world_size, fabric.device, ObjectGroup(timeout_s, f"{stage}: timeout_s")
    )
