"""SFT throughput on CPU: stat-pl's SFTModule + SFTDataModule vs TRL's SFTTrainer, SmolLM2-135M with LoRA.

Both arms train ``offline:smollm2-135m-instruct`` with the paper's LoRA (rank 16, alpha 32, dropout 0.05,
every attention and MLP projection) on the first ``--rows`` rows of the local MATH training split, chat
formatted with the loss on the answer only, micro-batch 2 x 4 accumulation, max length 512, AdamW at lr 2e-4,
gradient clipping at 1.0, bf16 autocast over float32 weights. Each arm runs ``--warmup-steps`` optimizer
steps untimed, then ``--steps`` timed ones, in its own subprocess so its peak RSS is its own.

* stat-pl: ``SFTModule`` + ``SFTDataModule`` (length-grouped batches) under a Lightning ``Trainer`` with
  ``precision="bf16-mixed"``. Before training it checks that bf16 autocast keeps the loss: the first batch's
  loss under autocast must be within ``--loss-tolerance`` (relative) of its float32 loss.
* TRL (the anchor): ``SFTTrainer`` on a conversational prompt-completion dataset (so TRL's
  ``completion_only_loss`` defaults to on), the LoRA config through ``peft_config``, ``use_cpu=True`` and
  TRL's defaults otherwise: bf16 on (TRL's default, honoured on CPU), no length grouping, float32 weights.
  One TRL default is overridden so both arms do the same work: ``gradient_checkpointing=False`` (TRL turns
  it on by default; stat-pl's default is off, and recomputing activations costs about a third more).
* stat-pl QLoRA (``--quantization nf4``): the stat-pl arm again with NF4 base weights.

Trained tokens are the non-padding tokens of the timed steps; tokens per CPU-second (the process's user +
system time) is printed beside tokens per wall-second because other processes share the cores. MFU is against
the machine's own matmul peak, measured here with ``torch.matmul`` on square matrices. With frozen base
weights a trained token costs ``4 * N`` FLOPs (2N forward, 2N for the activation gradients; no weight
gradients) plus ``6 * N_lora`` for the adapters, where N counts the matmul weights (projections and the tied
LM head) and attention scores are left out; full fine-tuning would be the usual ``6 * N``.

Peak RSS is read twice: after the timed steps, and after one more training micro-batch made of the two
longest rows, through each framework's own step. The second is the peak a full epoch reaches; the first
depends on which rows the short window happened to draw. The arms run interleaved (A B, then B A, ...) and
the speed-up is the geometric mean of the per-round ratios, so load from other processes hits both arms
alike; the load average is printed before and after every arm.

Torch runs one thread per arm by default. The machine this was written on has 2 cores shared with other
engineers' jobs (CPU pressure near 100%); there, a second torch thread waits at every parallel region for a
core another process holds, and each op got 10-170x slower (an elementwise multiply of a 2 x 192 x 576
tensor: 69 us with one thread, 11.8 ms with two), so two-thread timings measured the scheduler, not the
frameworks. ``--threads 2`` is right on an idle machine.

    python bench/sft_throughput.py                              # 1 warm-up + 6 timed steps, one round
    python bench/sft_throughput.py --rounds 2 --quantization nf4
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trl import SFTTrainer

    from stat_pl.modules.sft import SFTModule

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = "offline:smollm2-135m-instruct"
MATH_TRAIN = REPO.parent / "shared" / "data" / "math" / "train.jsonl"
TARGET_SPEEDUP = 1.3
WORKER_ARGS = (
    "rows",
    "steps",
    "warmup_steps",
    "micro_batch",
    "accumulation",
    "max_length",
    "loss_tolerance",
    "threads",
)


# ---- the machine -----------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name, for the table header (figures only compare on the same machine)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def load_average() -> float:
    """The 1-minute load average (what ``uptime`` prints first): how busy the shared cores were."""
    import psutil

    return psutil.getloadavg()[0]


def matmul_peak_flops(dtype_name: str, size: int = 2048, repeats: int = 10) -> float:
    """Best FLOP/s of ``torch.matmul`` on ``size`` x ``size`` matrices: the machine's reachable GEMM peak.

    The best of ``repeats`` is taken because other processes share the cores: the best run is the one
    least disturbed by them.
    """
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(2):
        torch.matmul(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def matmul_params(model_path: str) -> int:
    """Weights that take part in a matmul per token: every projection plus the (tied) LM head, counted once."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_path)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    attention = c.hidden_size * head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    mlp = 3 * c.hidden_size * c.intermediate_size
    return c.num_hidden_layers * (attention + mlp) + c.hidden_size * c.vocab_size


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (the kernel's high-water mark, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def clocks() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process over all its threads)."""
    return time.perf_counter(), time.process_time()


def window(started: tuple[float, float], ended: tuple[float, float], tokens: int, padded: int) -> dict:
    """The timed steps' figures, and the peak RSS they reached (before the longest-batch probe raises it)."""
    return {
        "seconds": ended[0] - started[0],
        "cpu_seconds": ended[1] - started[1],
        "tokens": tokens,
        "padded": padded,
        "window_rss_mib": peak_rss_mib(),
    }


def two_longest(lengths: list[int]) -> list[int]:
    """Indices of the two longest examples: together they make the largest micro-batch of an epoch."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])[:2]


# ---- arm A: stat-pl ----------------------------------------------------------------------------------
def run_stat_pl(args: argparse.Namespace, quantization: str) -> dict:
    """Fit SFTModule + SFTDataModule under Lightning; time the steps after the warm-up."""
    import lightning as L
    import torch

    from stat_pl.data.formatting import collate
    from stat_pl.data.sft_datamodule import SFTDataModule
    from stat_pl.models import LoRAConfig, StudentConfig
    from stat_pl.modules.sft import SFTModule
    from stat_pl.records import RecordSource

    class StepWindow(L.Callback):
        """Clocks and tokens of the micro-batches between the end of the warm-up and the last step."""

        def __init__(self) -> None:
            self.started: tuple[float, float] | None = None
            self.ended = (0.0, 0.0)
            self.tokens = self.padded = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self.started is None:
                if trainer.global_step == args.warmup_steps:
                    self.started = clocks()
                return
            self.tokens += int(batch["attention_mask"].sum())
            self.padded += batch["attention_mask"].numel()
            self.ended = clocks()

    L.seed_everything(0, verbose=False)
    with tempfile.TemporaryDirectory() as out:
        data = SFTDataModule(
            MODEL,
            train=[RecordSource(str(MATH_TRAIN), limit=args.rows)],
            max_length=args.max_length,
            batch_size=args.micro_batch,
            group_by_length=True,
            seed=0,
        )
        module = SFTModule(StudentConfig(model=MODEL, quantization=quantization, lora=LoRAConfig()), adapter_dir=out)
        data.setup("fit")
        module.configure_model()
        check = (
            bf16_loss_check(module, next(iter(data.train_dataloader())), args.loss_tolerance)
            if quantization == "none"
            else {}
        )
        steps = StepWindow()
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            precision="bf16-mixed",
            max_steps=args.warmup_steps + args.steps,
            accumulate_grad_batches=args.accumulation,
            gradient_clip_val=1.0,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=out,
            callbacks=[steps],
        )
        trainer.fit(module, data)
        result = window(steps.started, steps.ended, steps.tokens, steps.padded)
        longest = [data.train_examples[i] for i in two_longest([len(e["input_ids"]) for e in data.train_examples])]
        batch = collate(longest, pad_token_id=data.tokenizer.pad_token_id)
        with trainer.precision_plugin.forward_context():
            loss = module.masked_lm_loss(batch)
        loss.backward()
    return {
        **result,
        "longest_batch": batch["input_ids"].numel(),
        **check,
        "precision": "bf16-mixed" + (" (NF4 base)" if quantization == "nf4" else ""),
        "lora_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "torch_threads": torch.get_num_threads(),
    }


def bf16_loss_check(module: SFTModule, batch: dict, tolerance: float) -> dict:
    """The first batch's loss in float32 and under bf16 autocast (dropout off, the initial weights)."""
    import torch

    module.model.eval()
    with torch.no_grad():
        fp32 = float(module.masked_lm_loss(batch))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = float(module.masked_lm_loss(batch))
    module.model.train()
    return {"loss_fp32": fp32, "loss_bf16": bf16, "loss_ok": abs(bf16 - fp32) <= tolerance * abs(fp32)}


# ---- arm B: TRL --------------------------------------------------------------------------------------
def trl_trainer(args: argparse.Namespace, out: str, callbacks: list) -> SFTTrainer:
    """SFTTrainer set up the way TRL's docs set up LoRA SFT on a conversational prompt-completion dataset."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from stat_pl.models import PAPER_TARGET_MODULES, LoRAConfig
    from stat_pl.offline_models import resolve_model_path
    from stat_pl.records import RecordSource
    from stat_pl.tokenizer import load_tokenizer

    records = RecordSource(str(MATH_TRAIN), limit=args.rows).load()
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r.problem}],
                "completion": [{"role": "assistant", "content": r.solutions[0]}],
            }
            for r in records
        ]
    )
    lora = LoRAConfig()
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(PAPER_TARGET_MODULES),
        task_type="CAUSAL_LM",
    )
    config = SFTConfig(
        output_dir=out,
        use_cpu=True,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.accumulation,
        max_length=args.max_length,
        max_steps=args.warmup_steps + args.steps,
        learning_rate=2e-4,
        max_grad_norm=1.0,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    return SFTTrainer(
        model=resolve_model_path(MODEL),
        args=config,
        train_dataset=dataset,
        processing_class=load_tokenizer(MODEL),
        peft_config=peft_config,
        callbacks=callbacks,
    )


def run_trl(args: argparse.Namespace) -> dict:
    """Train with TRL's SFTTrainer; time the steps after the warm-up."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """Clocks at the end of the warm-up and of the last step."""

        def __init__(self) -> None:
            self.started = self.ended = (0.0, 0.0)

        def on_step_end(self, train_args, state, control, **kwargs) -> None:
            if state.global_step == args.warmup_steps:
                self.started = clocks()
            elif state.global_step == args.warmup_steps + args.steps:
                self.ended = clocks()

    batches: list[tuple[int, int]] = []  # (non-padding, padded) tokens of each collated micro-batch, in order
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        trainer = trl_trainer(args, out, [clock])
        collate = trainer.data_collator

        def counting_collate(examples: list[dict]) -> dict:
            batch = collate(examples)
            batches.append((int(batch["attention_mask"].sum()), batch["attention_mask"].numel()))
            return batch

        # The Trainer fetches ahead; batches are consumed in collation order, so the timed steps' micro-batches
        # are the slice after the warm-up's.
        trainer.data_collator = counting_collate
        trainer.train()
        timed = batches[args.warmup_steps * args.accumulation : (args.warmup_steps + args.steps) * args.accumulation]
        result = window(clock.started, clock.ended, sum(t for t, _ in timed), sum(p for _, p in timed))
        rows = trainer.train_dataset
        longest = collate(
            [
                {"input_ids": rows[i]["input_ids"], "labels": rows[i]["labels"]}
                for i in two_longest([len(ids) for ids in rows["input_ids"]])
            ]
        )
        trainer.training_step(trainer.model_wrapped, longest)
    return {
        **result,
        "longest_batch": longest["input_ids"].numel(),
        "precision": "bf16-mixed" if trainer.args.bf16 else "fp32",
        "completion_only_loss": trainer.completion_only_loss,
        "torch_threads": torch.get_num_threads(),
        "lora_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    }


# ---- the parent: interleave the arms, print the table -------------------------------------------------
ARMS = {"stat-pl": ("stat-pl", "none"), "trl": ("TRL SFTTrainer", None), "stat-pl-nf4": ("stat-pl QLoRA", "nf4")}


def run_arm(arm: str, args: argparse.Namespace) -> dict:
    """One arm of this bench in a fresh subprocess."""
    return run_worker(__file__, arm, [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in WORKER_ARGS])


def run_worker(script: str, arm: str, options: list[str]) -> dict:
    """``script --worker arm`` in a fresh subprocess (its own peak RSS), with the load average before and after.

    The worker writes its figures as JSON to the file named by ``--result``; shared by the bench scripts.
    """
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        load_before = load_average()
        command = [sys.executable, script, "--worker", arm, "--result", result.name, *options]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"arm {arm} failed:\n{done.stderr[-4000:]}")
        row = json.loads(Path(result.name).read_text())
    return {"arm": arm, "load_before": load_before, "load_after": load_average(), **row}


def worker(args: argparse.Namespace) -> None:
    """Run one arm in this process and write its figures, peak RSS included, to ``args.result``."""
    import torch

    torch.set_num_threads(args.threads)
    _, quantization = ARMS[args.worker]
    row = run_trl(args) if args.worker == "trl" else run_stat_pl(args, quantization)
    row["peak_rss_mib"] = peak_rss_mib()
    Path(args.result).write_text(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256, help="first rows of the MATH training split")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps")
    parser.add_argument("--warmup-steps", type=int, default=1, help="untimed optimizer steps first")
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--accumulation", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of every arm")
    parser.add_argument(
        "--quantization",
        choices=["none", "nf4"],
        default="none",
        help="nf4: also run stat-pl with QLoRA as a third row",
    )
    parser.add_argument(
        "--loss-tolerance",
        type=float,
        default=0.01,
        help="allowed relative gap between the bf16-autocast and float32 first-batch loss",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per arm (and for the matmul peak); see the module docstring",
    )
    parser.add_argument("--worker", choices=list(ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if not MATH_TRAIN.is_file():
        sys.exit(f"{MATH_TRAIN} is absent; this bench trains on the real MATH rows from ../shared/data")

    import torch

    from stat_pl.offline_models import resolve_model_path

    torch.set_num_threads(args.threads)
    frozen = matmul_params(resolve_model_path(MODEL))
    load_start = load_average()
    peaks = {name: matmul_peak_flops(name) for name in ("float32", "bfloat16")}
    arms = ["stat-pl", "trl"] + (["stat-pl-nf4"] if args.quantization == "nf4" else [])
    rows = []
    for round_index in range(args.rounds):
        for arm in arms if round_index % 2 == 0 else arms[::-1]:
            rows.append({"round": round_index + 1, **run_arm(arm, args)})
            print(
                f"round {round_index + 1} {arm}: {rows[-1]['tokens'] / rows[-1]['seconds']:.0f} tokens/s",
                file=sys.stderr,
            )
    report(rows, args, peaks, frozen, load_start)


def report(rows: list[dict], args: argparse.Namespace, peaks: dict[str, float], frozen: int, load_start: float) -> None:
    """The table, the bf16 loss check and the verdict on the targets."""
    print(
        f"\nSFT throughput, {MODEL} + LoRA r16, {args.rows} MATH rows, micro-batch {args.micro_batch} x "
        f"{args.accumulation} accumulation, max length {args.max_length}, {args.warmup_steps} warm-up + "
        f"{args.steps} timed steps, {args.rounds} round(s)"
    )
    print(f"CPU: {cpu_model()}, {rows[0]['torch_threads']} torch threads; load average {load_start:.2f} at start")
    print(
        f"matmul peak: fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s; "
        f"N = {frozen / 1e6:.1f}M matmul weights, N_lora = {rows[0]['lora_params'] / 1e6:.2f}M; "
        "FLOPs per trained token = 4 N + 6 N_lora\n"
    )
    print(
        "| round | arm | precision | tokens | padding | wall s | tokens/s | tokens/CPU-s | MFU | "
        "peak RSS MiB, steps | peak RSS MiB, longest batch (tokens) | load before/after |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rate = r["tokens"] / r["seconds"]
        peak = peaks["bfloat16" if r["precision"].startswith("bf16") else "float32"]
        mfu = rate * (4 * frozen + 6 * r["lora_params"]) / peak
        print(
            f"| {r['round']} | {ARMS[r['arm']][0]} | {r['precision']} | {r['tokens']} | "
            f"{100 * (1 - r['tokens'] / r['padded']):.1f}% | {r['seconds']:.1f} | {rate:.1f} | "
            f"{r['tokens'] / r['cpu_seconds']:.1f} | {100 * mfu:.1f}% | {r['window_rss_mib']:.0f} | "
            f"{r['peak_rss_mib']:.0f} ({r['longest_batch']}) | {r['load_before']:.2f}/{r['load_after']:.2f} |"
        )
    print()
    for check in (r for r in rows if "loss_fp32" in r):
        gap = abs(check["loss_bf16"] - check["loss_fp32"]) / check["loss_fp32"]
        print(
            f"bf16 autocast, first batch loss: fp32 {check['loss_fp32']:.4f}, bf16 {check['loss_bf16']:.4f} "
            f"({100 * gap:.2f}% apart): {'within' if check['loss_ok'] else 'OUTSIDE'} the "
            f"{100 * args.loss_tolerance:.0f}% tolerance"
        )
    verdicts(rows)


def paired_speedup(arm_rows: list[dict], anchor_rows: list[dict], clock: str) -> float:
    """Geometric mean over rounds of (tokens per ``clock`` second of the arm) / (the same of the anchor)."""
    ratios = [a["tokens"] / a[clock] / (b["tokens"] / b[clock]) for a, b in zip(arm_rows, anchor_rows, strict=True)]
    return math.exp(statistics.fmean(math.log(x) for x in ratios))


def verdicts(rows: list[dict]) -> None:
    """Each stat-pl arm against TRL: paired per-round speed-ups and the peak RSS at the longest batch."""

    def of(arm: str) -> list[dict]:
        return [r for r in rows if r["arm"] == arm]

    trl = of("trl")
    print(f"TRL: completion_only_loss={trl[0]['completion_only_loss']}, precision {trl[0]['precision']}")
    for arm in (a for a in ARMS if a != "trl" and of(a)):
        wall, cpu = paired_speedup(of(arm), trl, "seconds"), paired_speedup(of(arm), trl, "cpu_seconds")
        rss = max(r["peak_rss_mib"] for r in of(arm)) / max(r["peak_rss_mib"] for r in trl)
        line = (
            f"{ARMS[arm][0]} vs TRL: {wall:.2f}x tokens/s ({cpu:.2f}x tokens per CPU-second), "
            f"{rss:.2f}x peak RSS at the longest batch"
        )
        if arm == "stat-pl":
            met = wall >= TARGET_SPEEDUP and rss <= 1.0
            line += f": {'meets' if met else 'MISSES'} the target (>= {TARGET_SPEEDUP}x tokens/s, RSS <= TRL's)"
        print(line)


if __name__ == "__main__":
    main()
