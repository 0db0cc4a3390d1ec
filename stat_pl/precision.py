"""Precision, decided once from the hardware: what ``precision: auto`` means.

bfloat16 is the paper's compute dtype (NF4 with bf16 compute, bf16 autocast), and on a GPU with bf16
or a CPU with native bf16 matmuls (AVX512-BF16 or AMX) it is the fast choice. On a CPU without them
(AVX2 only: many laptops and cloud VMs) every bf16 matmul is emulated and about 30-400x slower than
float32 (measured: 2.9 vs 120 GFLOP/s per core), which made the demo unusable. So ``auto`` resolves:

* CUDA with bf16 support -> ``bf16-mixed`` / ``bfloat16``; other CUDA devices -> ``32-true`` / ``float32``;
* a CPU whose flags include AVX512-BF16 or AMX *and* on which a short bf16 matmul probe is at least as
  fast as float32 -> ``bf16-mixed`` / ``bfloat16`` (the probe catches oneDNN capped by
  ``ONEDNN_MAX_CPU_ISA`` or a VM that hides the instructions); a CPU on another architecture is judged by
  the probe alone; everything else -> ``32-true`` / ``float32``.

Where it is decided: ``python -m stat_pl fit`` (:class:`~stat_pl.cli.StatCLI`) resolves ``trainer.precision:
auto`` and the student's ``compute_dtype: auto`` before anything is built, logs the choice with its reason and
writes the resolved values into the run's ``config.yaml``, so a rerun from that file makes the same choice
without probing. In Python, :class:`~stat_pl.trainer.StatTrainer` resolves its own ``auto`` with the same
function, and a module given ``compute_dtype="auto"`` takes the dtype of its trainer's precision
(:func:`compute_dtype_for`) once, when its model is built.
"""

from __future__ import annotations

import functools
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)
#: Where Linux lists the CPU's instruction-set flags.
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``auto`` resolved to, and why (logged once per run)."""

    lightning: str  # Lightning's ``precision``: "bf16-mixed" or "32-true"
    dtype: str  # the compute dtype name: "bfloat16" or "float32"
    reason: str


def cpu_has_bf16_instructions() -> bool | None:
    """True/False from the x86 CPU flags in ``/proc/cpuinfo`` (AVX512-BF16 or AMX); None where they say nothing."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return None
    try:
        cpuinfo = CPUINFO.read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup(size: int = 256, repeats: int = 3) -> float:
    """bf16 over float32 matmul throughput on this CPU, from a short probe (about 10 ms where bf16 is native).

    Native bf16 measures 2-5x here; emulated bf16 (AVX2 only) 0.01-0.03x: far from the 1.0 threshold either way.
    """
    a32, b32 = torch.randn(size, size), torch.randn(size, size)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    return _best_seconds(lambda: a32 @ b32, repeats) / max(_best_seconds(lambda: a16 @ b16, repeats), 1e-9)


def _best_seconds(call, repeats: int) -> float:
    call()  # picks kernels, allocates
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def cpu_bf16_is_fast() -> tuple[bool, str]:
    """Whether bf16 is native and fast on this CPU, and the evidence in words."""
    flags = cpu_has_bf16_instructions()
    capability = torch.backends.cpu.get_cpu_capability()
    if flags is False:
        return False, f"CPU has no AVX512-BF16/AMX (torch CPU capability {capability}): bf16 would be emulated"
    speedup = cpu_bf16_speedup()
    evidence = "AVX512-BF16/AMX" if flags else f"{platform.machine()} CPU"
    if speedup >= 1.0:
        return True, f"{evidence}, bf16 matmul {speedup:.1f}x float32 (torch CPU capability {capability})"
    return False, f"{evidence} but bf16 matmul measured {speedup:.2f}x float32: emulated, not native"


def resolve_precision(accelerator: str = "auto") -> PrecisionChoice:
    """Resolve ``precision: auto`` for ``accelerator`` (``cpu``, ``cuda``/``gpu`` or ``auto``)."""
    if accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available()):
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            device = torch.cuda.get_device_name()
            return PrecisionChoice("bf16-mixed", "bfloat16", f"CUDA device {device} supports bf16")
        return PrecisionChoice("32-true", "float32", "CUDA device without bf16 support")
    if accelerator not in ("cpu", "auto"):
        return PrecisionChoice("32-true", "float32", f"accelerator {accelerator!r}: bf16 not assumed")
    fast, reason = cpu_bf16_is_fast()
    return PrecisionChoice("bf16-mixed", "bfloat16", reason) if fast else PrecisionChoice("32-true", "float32", reason)


def compute_dtype_for(lightning_precision: str | int | None) -> str:
    """The compute dtype that matches a Lightning precision (``bf16-mixed`` -> ``bfloat16``)."""
    text = str(lightning_precision)
    if text.startswith("bf16"):
        return "bfloat16"
    if text.startswith("16"):
        return "float16"
    return "float32"


def warn_if_bf16_emulated(precision: str | int | None, accelerator: str) -> None:
    """An explicit bf16 precision keeps working on a CPU, but a CPU that emulates bf16 gets a warning."""
    if not str(precision).startswith("bf16") or accelerator not in ("cpu", "auto") or torch.cuda.is_available():
        return
    fast, reason = cpu_bf16_is_fast()
    if not fast:
        log.warning(
            "precision %s on this CPU is slow (%s); 'auto' or '32-true' trains many times faster", precision, reason
        )
