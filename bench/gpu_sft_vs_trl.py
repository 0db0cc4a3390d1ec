"""SFT on one GPU: stat-pl's SFTModule vs TRL's SFTTrainer, trained tokens per second and peak GPU memory.

    python bench/gpu_sft_vs_trl.py                                            # SmolLM2-135M, QLoRA, 3 + 20 steps
    python bench/gpu_sft_vs_trl.py --model meta-llama/Llama-3.2-1B-Instruct   # a Hub model (its licence accepted)
    python bench/gpu_sft_vs_trl.py --quantization none --rounds 2             # bf16 base weights; two rounds

Run from the repo root on a machine with a CUDA GPU (``pip install -e ".[dev,bench]"`` on PyPI's CUDA torch); it
refuses to start without one. Both arms train ``--model`` on the same GPU with the paper's LoRA (rank 16, alpha 32,
dropout 0.05, every attention and MLP projection) on the first ``--rows`` rows of the local MATH training split
(``--data``), chat formatted with the loss on the answer only: micro-batch ``--micro-batch`` x ``--accumulation``, max
length ``--max-length``, bitsandbytes' paged AdamW 8-bit at lr 2e-4 (the paper's optimizer), gradient clipping 1.0,
bf16 autocast over bf16 weights; with ``--quantization nf4`` (the default, the paper's QLoRA) the base is NF4 with bf16
compute and storage and double quantisation, the same ``BitsAndBytesConfig`` in both. Gradient checkpointing is off
in both (TRL's default is on; ``--gradient-checkpointing`` turns it on in both).

* stat-pl: ``SFTModule`` + ``SFTDataModule`` (its default length-grouped batches) under a Lightning ``Trainer`` on
  the GPU with ``precision="bf16-mixed"``.
* TRL (the anchor): ``SFTTrainer`` on a conversational prompt-completion dataset (completion-only loss), the model
  by name with ``model_init_kwargs={"dtype": "bfloat16"}``, the ``quantization_config`` and ``peft_config``,
  ``optim="paged_adamw_8bit"``, ``bf16=True``; TRL's defaults otherwise (no length grouping).

Figures: trained (non-padding) tokens per second over the ``--steps`` optimizer steps after ``--warmup-steps``
(CUDA synchronised at both ends), and the peak GPU memory: device-wide ``memory.used`` as nvidia-smi reports it,
sampled every 0.2 s while the arm's process runs (CUDA context, the caching allocator's reserve and paged optimizer
state included: what the GPU must hold), beside ``torch.cuda.max_memory_allocated``. After the timed steps each arm
trains one more micro-batch of its longest rows through its own step, so the peak is the one a whole epoch reaches.
Each arm runs in its own process; the arms interleave over ``--rounds``, and ratios are geometric means over rounds.
Target (issue 24): stat-pl >= 1.3x TRL's tokens/s at <= TRL's peak GPU memory (device-wide).

Written without a GPU: not yet run; figures go to bench/README.md with the date, GPU and versions once measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = "offline:smollm2-135m-instruct"
MATH_TRAIN = REPO.parent / "shared" / "data" / "math" / "train.jsonl"
TARGET_SPEEDUP = 1.3
LEARNING_RATE = 2e-4
ARMS = {"stat-pl": "stat-pl SFTModule", "trl": "TRL SFTTrainer"}
WORKER_ARGS = (
    "model",
    "data",
    "rows",
    "steps",
    "warmup_steps",
    "micro_batch",
    "accumulation",
    "max_length",
    "quantization",
)


# ---- shared with bench/gpu_grpo_vs_trl.py ------------------------------------------------------------
def require_cuda() -> None:
    """Exit with one line where torch sees no CUDA device."""
    import torch

    if not torch.cuda.is_available():
        sys.exit(f"{Path(sys.argv[0]).name}: needs a CUDA GPU; torch {torch.__version__} sees none on this machine")


def gpu_index() -> str:
    """The GPU the arms run on, as nvidia-smi names it (the first of ``CUDA_VISIBLE_DEVICES``, else 0)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"


def nvidia_smi(query: str) -> str:
    command = ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits", f"--id={gpu_index()}"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


class DeviceMemoryPeak:
    """The highest device-wide ``memory.used`` (MiB) nvidia-smi reports while the ``with`` block runs.

    Sampled from the parent, so it sees every process of an arm (vLLM's engine process included), every 0.2 s:
    the caching allocators keep what they reserve, so a short spike stays visible until the next sample.
    """

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s = every_s
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak_mib = max(self.peak_mib, float(nvidia_smi("memory.used")))
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> DeviceMemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_worker(script: str, arm: str, options: list[str]) -> dict:
    """``script --worker arm`` in a fresh process (its own CUDA context and memory), its device-wide peak measured.

    The worker writes its figures as JSON to the file named by ``--result``.
    """
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        idle_mib = float(nvidia_smi("memory.used"))
        command = [sys.executable, script, "--worker", arm, "--result", result.name, *options]
        with DeviceMemoryPeak() as memory:
            done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"arm {arm} failed:\n{done.stderr[-4000:]}")
        row = json.loads(Path(result.name).read_text())
    return {"arm": arm, "idle_mib": idle_mib, "device_peak_mib": memory.peak_mib, **row}


def cuda_clock() -> float:
    """Wall seconds after the GPU finished the work queued so far."""
    import torch

    torch.cuda.synchronize()
    return time.perf_counter()


def paired_ratio(arm_rows: list[dict], anchor_rows: list[dict], key: str) -> float:
    """Geometric mean over rounds of the arm's ``key`` over the anchor's."""
    ratios = [a[key] / b[key] for a, b in zip(arm_rows, anchor_rows, strict=True)]
    return math.exp(statistics.fmean(math.log(x) for x in ratios))


def peft_lora():
    """The paper's LoRA (stat-pl's ``LoRAConfig`` defaults) as the ``peft.LoraConfig`` TRL takes."""
    from peft import LoraConfig

    from stat_pl.models import LoRAConfig

    lora = LoRAConfig()
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )


def longest(lengths: list[int], count: int) -> list[int]:
    """Indices of the ``count`` longest examples: together the largest micro-batch of an epoch."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])[:count]


# ---- arm A: stat-pl ----------------------------------------------------------------------------------
def run_stat_pl(args: argparse.Namespace) -> dict:
    """Fit SFTModule + SFTDataModule on the GPU; time the steps after the warm-up, then the longest micro-batch."""
    import functools

    import bitsandbytes as bnb
    import lightning as L
    import torch

    from stat_pl.data.formatting import collate
    from stat_pl.data.sft_datamodule import SFTDataModule
    from stat_pl.models import LoRAConfig, StudentConfig
    from stat_pl.modules.sft import SFTModule
    from stat_pl.records import RecordSource

    class StepWindow(L.Callback):
        """Clock and trained tokens of the micro-batches after the warm-up's last optimizer step."""

        def __init__(self) -> None:
            self.started: float | None = None
            self.ended = 0.0
            self.tokens = self.padded = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self.started is None:
                if trainer.global_step == args.warmup_steps:
                    self.started = cuda_clock()
                return
            self.tokens += int(batch["attention_mask"].sum())
            self.padded += batch["attention_mask"].numel()
            self.ended = cuda_clock()

    L.seed_everything(0, verbose=False)
    window = StepWindow()
    with tempfile.TemporaryDirectory() as out:
        data = SFTDataModule(
            args.model,
            train=[RecordSource(args.data, limit=args.rows)],
            max_length=args.max_length,
            batch_size=args.micro_batch,
            seed=0,
        )
        student = StudentConfig(
            args.model,
            quantization=args.quantization,
            compute_dtype="bfloat16",
            lora=LoRAConfig(),
            gradient_checkpointing=args.gradient_checkpointing,
        )
        module = SFTModule(
            student, optimizer=functools.partial(bnb.optim.PagedAdamW8bit, lr=LEARNING_RATE), adapter_dir=out
        )
        trainer = L.Trainer(
            accelerator="gpu",
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
            callbacks=[window],
        )
        trainer.fit(module, data)
        lengths = [len(e["input_ids"]) for e in data.train_examples]
        rows = [data.train_examples[i] for i in longest(lengths, args.micro_batch)]
        batch = {k: v.to(module.device) for k, v in collate(rows, data.tokenizer.pad_token_id).items()}
        with trainer.precision_plugin.forward_context():
            loss = module.masked_lm_loss(batch)
        loss.backward()
        torch.cuda.synchronize()
    return {
        "seconds": window.ended - window.started,
        "tokens": window.tokens,
        "padded": window.padded,
        "longest_batch": batch["input_ids"].numel(),
        "lora_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
    }


# ---- arm B: TRL --------------------------------------------------------------------------------------
def run_trl(args: argparse.Namespace) -> dict:
    """Train with TRL's SFTTrainer on the GPU; time the steps after the warm-up, then the longest micro-batch."""
    import torch
    from datasets import Dataset
    from transformers import BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from stat_pl.offline_models import resolve_model_path
    from stat_pl.records import RecordSource
    from stat_pl.tokenizer import load_tokenizer

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.started = self.ended = 0.0

        def on_step_end(self, train_args, state, control, **kwargs) -> None:
            if state.global_step == args.warmup_steps:
                self.started = cuda_clock()
            elif state.global_step == args.warmup_steps + args.steps:
                self.ended = cuda_clock()

    records = RecordSource(args.data, limit=args.rows).load()
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r.problem}],
                "completion": [{"role": "assistant", "content": r.solutions[0]}],
            }
            for r in records
        ]
    )
    nf4 = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=torch.bfloat16,
    )
    batches: list[tuple[int, int]] = []  # (non-padding, padded) tokens of each collated micro-batch, in order
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out,
            per_device_train_batch_size=args.micro_batch,
            gradient_accumulation_steps=args.accumulation,
            max_length=args.max_length,
            max_steps=args.warmup_steps + args.steps,
            learning_rate=LEARNING_RATE,
            max_grad_norm=1.0,
            optim="paged_adamw_8bit",
            bf16=True,
            gradient_checkpointing=args.gradient_checkpointing,
            model_init_kwargs={"dtype": "bfloat16"},
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=0,
        )
        trainer = SFTTrainer(
            model=resolve_model_path(args.model),
            args=config,
            train_dataset=dataset,
            processing_class=load_tokenizer(args.model),
            quantization_config=nf4 if args.quantization == "nf4" else None,
            peft_config=peft_lora(),
            callbacks=[clock],
        )
        collate = trainer.data_collator

        def counting_collate(examples: list[dict]) -> dict:
            batch = collate(examples)
            batches.append((int(batch["attention_mask"].sum()), batch["attention_mask"].numel()))
            return batch

        # The Trainer fetches ahead; micro-batches are consumed in collation order, so the timed ones follow the
        # warm-up's.
        trainer.data_collator = counting_collate
        trainer.train()
        timed = batches[args.warmup_steps * args.accumulation : (args.warmup_steps + args.steps) * args.accumulation]
        rows = trainer.train_dataset
        biggest = collate(
            [
                {"input_ids": rows[i]["input_ids"], "labels": rows[i]["labels"]}
                for i in longest([len(ids) for ids in rows["input_ids"]], args.micro_batch)
            ]
        )
        trainer.training_step(trainer.model_wrapped, biggest)
        torch.cuda.synchronize()
    return {
        "seconds": clock.ended - clock.started,
        "tokens": sum(t for t, _ in timed),
        "padded": sum(p for _, p in timed),
        "longest_batch": biggest["input_ids"].numel(),
        "completion_only_loss": trainer.completion_only_loss,
        "lora_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    }


# ---- the parent: interleave the arms, print the table -------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    """Run one arm in this process and write its figures, torch's peak allocation included, to ``args.result``."""
    import torch

    row = run_trl(args) if args.worker == "trl" else run_stat_pl(args)
    row["allocated_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    Path(args.result).write_text(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL, help="Hub name, local folder or offline:smollm2-135m-instruct")
    parser.add_argument("--data", default=str(MATH_TRAIN), help="records JSONL with problems and solutions")
    parser.add_argument("--rows", type=int, default=512, help="first rows of --data")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed optimizer steps first")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--quantization", choices=["nf4", "none"], default="nf4", help="the base weights, both arms")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in both arms")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of both arms")
    parser.add_argument("--worker", choices=list(ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    require_cuda()
    if args.worker:
        worker(args)
        return
    if not Path(args.data).is_file():
        sys.exit(f"--data {args.data} is absent; point it at a records JSONL (the MATH copy is ../shared/data)")
    options = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in WORKER_ARGS]
    options += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    rows = []
    for round_index in range(args.rounds):
        for arm in list(ARMS) if round_index % 2 == 0 else list(ARMS)[::-1]:
            rows.append({"round": round_index + 1, **run_worker(__file__, arm, options)})
            print(
                f"round {round_index + 1} {arm}: {rows[-1]['tokens'] / rows[-1]['seconds']:.0f} tokens/s",
                file=sys.stderr,
            )
    report(rows, args)


def report(rows: list[dict], args: argparse.Namespace) -> None:
    """The table and the verdict on the target."""
    print(
        f"\nSFT on one GPU, {args.model} + LoRA r16 ({args.quantization} base), {args.rows} rows of {args.data}, "
        f"micro-batch {args.micro_batch} x {args.accumulation}, max length {args.max_length}, paged AdamW 8-bit, bf16, "
        f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, {args.warmup_steps} warm-up + "
        f"{args.steps} timed steps, {args.rounds} round(s)"
    )
    print(f"GPU: {nvidia_smi('name,memory.total,driver_version')}\n")
    print(
        "| round | arm | tokens | padding | s | tokens/s | peak GPU MiB (device) | peak allocated MiB | "
        "longest batch tokens | GPU MiB before |"
    )
    print("|---" * 10 + "|")
    for r in rows:
        print(
            f"| {r['round']} | {ARMS[r['arm']]} | {r['tokens']} | {100 * (1 - r['tokens'] / r['padded']):.1f}% | "
            f"{r['seconds']:.2f} | {r['tokens'] / r['seconds']:.0f} | {r['device_peak_mib']:.0f} | "
            f"{r['allocated_peak_mib']:.0f} | {r['longest_batch']} | {r['idle_mib']:.0f} |"
        )
    ours, trl = ([r for r in rows if r["arm"] == arm] for arm in ARMS)
    for r in ours + trl:
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
    speedup = paired_ratio(ours, trl, "tokens_per_s")
    memory = max(r["device_peak_mib"] for r in ours) / max(r["device_peak_mib"] for r in trl)
    met = speedup >= TARGET_SPEEDUP and memory <= 1.0
    print(
        f"\nTRL completion_only_loss={trl[0]['completion_only_loss']}\nstat-pl vs TRL: {speedup:.2f}x tokens/s, "
        f"{memory:.2f}x peak GPU memory: {'meets' if met else 'MISSES'} the target "
        f"(>= {TARGET_SPEEDUP}x tokens/s at <= TRL's peak memory)"
    )


if __name__ == "__main__":
    main()
