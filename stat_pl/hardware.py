"""Precision and CPU threads chosen from the hardware, in one place.

bfloat16 is the paper's compute dtype (NF4 with bf16 compute, bf16 autocast), and on a GPU with bf16
or a CPU with native bf16 matmuls (AVX512-BF16 or AMX) it is the fast choice. On a CPU without them
(AVX2 only: many laptops and cloud VMs) every bf16 matmul is emulated and about 30-400x slower than
float32 (measured: 2.9 vs 120 GFLOP/s per core), which made the demo unusable. So the value ``auto``
(the default of stat-pl's trainer and modules) resolves here:

* CUDA with bf16 support -> ``bf16-mixed`` / ``bfloat16``; other CUDA devices -> ``32-true`` / ``float32``;
* a CPU whose flags include AVX512-BF16 or AMX *and* on which a short bf16 matmul probe is at least as
  fast as float32 -> ``bf16-mixed`` / ``bfloat16`` (the probe catches oneDNN capped by
  ``ONEDNN_MAX_CPU_ISA`` or a VM that hides the instructions); a CPU on another architecture is judged by
  the probe alone; everything else -> ``32-true`` / ``float32``.

The trainer resolves ``trainer.precision: auto`` with :func:`resolve_precision`; modules with
``compute_dtype: auto`` follow the trainer's resolved precision (:func:`compute_dtype_for`), so the
bitsandbytes compute dtype, the autocast dtype and the generation copy always agree.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from stat_pl.offline_models import cache_root

log = logging.getLogger(__name__)

#: Environment variable read by every entry point for the number of torch CPU threads.
THREADS_ENV = "STAT_PL_THREADS"

T = TypeVar("T")


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``auto`` resolved to, and why (logged once per run)."""

    lightning: str  # Lightning's ``precision``: "bf16-mixed" or "32-true"
    dtype: str  # the compute dtype name: "bfloat16" or "float32"
    reason: str


def cpu_has_bf16_instructions() -> bool | None:
    """True/False from the x86 CPU flags (AVX512-BF16 or AMX); None where the flags say nothing (not x86)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return None
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup(size: int = 256, repeats: int = 3) -> float:
    """bf16 over float32 matmul throughput on this CPU, from a short probe (about 10 ms where bf16 is native).

    Native bf16 measures 2-5x here; emulated bf16 (AVX2 only) 0.01-0.03x.
    """
    a32, b32 = torch.randn(size, size), torch.randn(size, size)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    return best_seconds(lambda: a32 @ b32, repeats) / max(best_seconds(lambda: a16 @ b16, repeats), 1e-9)


def best_seconds(call: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``call``, after one untimed call (which picks kernels, packs,
    allocates): what the start-up probes compare."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


#: Environment variable naming the file that keeps kernel-probe verdicts (default ``<user cache>/probes.json``).
PROBES_ENV = "STAT_PL_PROBES"


def remembered(probe: str, measure: Callable[[], T], *key: object) -> T:
    """``measure()``'s verdict for ``probe`` on this machine: measured once, then read from a file.

    The kernel probes (:func:`stat_pl.frozen_linear.packed_is_faster`,
    :func:`stat_pl.small_batch_linear.fastest_form`) time two ways of computing the same product. Where the
    two are close, a probe run afresh in every process can go either way, and two runs of one seeded
    config, or a run and its resumption, then multiply in different kernels and differ in the last bits.
    Keeping the first verdict per machine (CPU model, torch's CPU capability and version, thread count,
    ``key``) in ``$STAT_PL_PROBES`` (default ``~/.cache/stat_pl/probes.json``) makes every later run take the
    same kernels; delete the file to measure again. The verdict must be JSON (a bool, a string).
    """
    path = Path(os.environ.get(PROBES_ENV) or cache_root() / "probes.json")
    entry = "|".join(map(str, (probe, *key, _machine(), torch.__version__, torch.get_num_threads())))
    try:
        verdicts = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: measure and write a fresh file
        verdicts = {}
    if entry not in verdicts:
        verdicts[entry] = measure()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(verdicts, indent=1, sort_keys=True))
        partial.replace(path)  # atomic: a concurrent reader sees the old file or the new one
    return verdicts[entry]


def _machine() -> str:
    """The CPU model and torch's CPU capability: what a kernel verdict depends on."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model} {torch.backends.cpu.get_cpu_capability()}"


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
    """The module compute dtype that matches a Lightning precision (``bf16-mixed`` -> ``bfloat16``)."""
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


def configure_threads() -> int | None:
    """Set torch's CPU threads from ``$STAT_PL_THREADS`` (unset: torch's default, one per core).

    On a CPU shared with other busy processes one thread per process is often several times faster
    than two (threads spin against each other); on an idle machine all cores are faster
    (bench/README.md has both measurements).
    """
    value = os.environ.get(THREADS_ENV)
    if value is None or value.strip() == "":
        return None
    try:
        threads = int(value)
    except ValueError:
        raise ValueError(f"${THREADS_ENV}={value!r}: expected a positive number of torch threads") from None
    if threads < 1:
        raise ValueError(f"${THREADS_ENV}={value!r}: expected a positive number of torch threads")
    torch.set_num_threads(threads)
    return threads


#: Environment variable that, set to 0, leaves glibc's malloc settings alone (see keep_freed_memory).
KEEP_MEMORY_ENV = "STAT_PL_KEEP_FREED_MEMORY"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of giving large blocks back to the OS.

    By default glibc serves each block over its mmap threshold (at most 32 MB) with a fresh ``mmap`` and
    unmaps it on ``free``, so every large tensor a step allocates (logits ``[N, L, V]``, activations)
    faults its pages in again, once per step. On 2 cores of an AMD EPYC a subtraction over 200 MB of
    logits took 92 ms with a fresh block and 23 ms with a reused one (bench/README.md, grpo_throughput.py).
    Here every block comes from the heap and freed memory stays with the process (up to 2 GiB at its top):
    memory the run freed is not returned to the OS until it exits, and a heap that fragments can raise the
    peak (its effect on peak RSS was not measured apart from the other changes). Linux with glibc only;
    ``$STAT_PL_KEEP_FREED_MEMORY=0`` turns it off. Returns whether the settings were applied.
    """
    if os.environ.get(KEEP_MEMORY_ENV, "").strip() == "0" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
