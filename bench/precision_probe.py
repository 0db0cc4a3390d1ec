"""Training tokens/s of the shipped demo config under ``precision: auto``, forced bf16 and forced float32.

Each arm is one subprocess running the README's main command (``python -m stat_pl fit --config
configs/demo.yaml``) for ``--steps`` optimizer steps without the re-profiling callback, so the figure is
the demo's own training: SmolLM2-135M-Instruct, NF4 + LoRA, micro-batches of 8, same seed and data. The
tokens/s is the median of the per-micro-batch ``train/tokens_per_s`` the module logs, after the first
logged step (warm-up). Arms run one after another in the same run, once per ``--threads`` value. An arm
that is still training after ``--arm-timeout-s`` is stopped and measured on the micro-batches it finished
(emulated bf16 trains at a few tokens/s: one micro-batch of 8 takes minutes).

``--emulate-avx2`` runs every arm with ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``: torch and
oneDNN then use only AVX2 kernels, as on a CPU without AVX512-BF16/AMX, where bf16 matmuls are emulated.
The target (issue 9): on such a CPU ``auto`` trains at >= 0.8x the tokens/s of forced float32.

    python bench/precision_probe.py                       # this CPU as it is; 1 and 2 threads
    python bench/precision_probe.py --emulate-avx2 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/demo.yaml"
ARMS = {  # name -> (trainer.precision, student compute_dtype)
    "auto": ("auto", "auto"),
    "bf16 (forced)": ("bf16-mixed", "bfloat16"),
    "float32 (forced)": ("32-true", "float32"),
}
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def run_arm(precision: str, compute_dtype: str, steps: int, threads: int, emulate_avx2: bool, timeout_s: float) -> dict:
    """Train ``steps`` optimizer steps of the demo config in a subprocess; tokens/s and what auto chose."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            "-m",
            "stat_pl",
            "fit",
            "--config",
            CONFIG,
            f"--trainer.precision={precision}",
            f"--model.init_args.student.compute_dtype={compute_dtype}",
            f"--trainer.max_steps={steps}",
            "--trainer.callbacks=[]",
            "--trainer.log_every_n_steps=1",
            f"--trainer.default_root_dir={out}",
            f"--trainer.logger.init_args.save_dir={out}",
            "--trainer.logger.init_args.flush_logs_every_n_steps=1",
            "--trainer.enable_checkpointing=false",
            f"--model.init_args.adapter_dir={out}/adapter",
        ]
        env = {**os.environ, "STAT_PL_THREADS": str(threads), **(AVX2_ENV if emulate_avx2 else {})}
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            output, _ = proc.communicate(timeout=timeout_s)
            stopped = False
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            stopped = True
        wall = time.perf_counter() - start
        if proc.returncode != 0 and not stopped:
            raise RuntimeError(f"arm {precision}/{compute_dtype} failed:\n{output[-3000:]}")
        rates = [float(row["train/tokens_per_s"]) for row in _metrics(Path(out)) if row.get("train/tokens_per_s")]
        if not rates and not stopped:
            raise RuntimeError(f"arm {precision}/{compute_dtype} finished but logged no train/tokens_per_s")
        chosen = next(
            (line.split("precision auto -> ", 1)[1] for line in output.splitlines() if "precision auto -> " in line), ""
        )
    # An arm stopped before its first micro-batch (emulated bf16) has no rate: the table says so.
    return {
        "tokens_per_s": statistics.median(rates[1:] or rates) if rates else None,
        "micro_batches": len(rates),
        "wall_s": wall,
        "stopped": stopped,
        "auto_chose": chosen,
    }


def _metrics(out: Path) -> list[dict]:
    files = sorted(out.glob("logs/version_*/metrics.csv"))
    if not files:  # stopped before the logger's first flush
        return []
    with open(files[-1]) as f:
        return list(csv.DictReader(f))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per arm (2 micro-batches each)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads, one row each")
    parser.add_argument("--emulate-avx2", action="store_true", help="AVX2-only kernels (no native bf16)")
    parser.add_argument("--arm-timeout-s", type=float, default=420, help="stop an arm after this many seconds")
    args = parser.parse_args()

    import torch

    env = AVX2_ENV if args.emulate_avx2 else {}
    capability = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(
        f"torch {torch.__version__}, CPU capability {capability}"
        f"{' (AVX2 emulated with ONEDNN_MAX_CPU_ISA/ATEN_CPU_CAPABILITY)' if args.emulate_avx2 else ''}, "
        f"load average {os.getloadavg()[0]:.2f} at start, {args.steps} optimizer steps per arm\n"
    )
    print("| threads | arm | tokens/s | micro-batches | wall s (incl. load) | vs float32 | auto chose |")
    print("|---|---|---|---|---|---|---|")
    for threads in args.threads:
        rows = {
            name: run_arm(p, d, args.steps, threads, args.emulate_avx2, args.arm_timeout_s)
            for name, (p, d) in ARMS.items()
        }
        fp32 = rows["float32 (forced)"]["tokens_per_s"]
        for name, row in rows.items():
            stopped = " (stopped)" if row["stopped"] else ""
            rate = row["tokens_per_s"]
            figures = (
                (f"{rate:.1f}", f"{rate / fp32:.2f}x")
                if rate is not None
                else (f"no micro-batch in {args.arm_timeout_s:.0f} s", "-")
            )
            print(
                f"| {threads} | {name} | {figures[0]} | {row['micro_batches']}{stopped} | "
                f"{row['wall_s']:.0f} | {figures[1]} | {row['auto_chose']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
