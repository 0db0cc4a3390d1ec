"""Generation throughput on CPU: HFEngine on SmolLM2-135M-Instruct, batched vs one prompt at a time.

Greedy decoding of ``--max-new-tokens`` tokens for the first ``--prompts`` problems of the local MATH test
split (chat formatted by the engine), at each of ``--batch-sizes``. The anchor is batch size 1 (one
``generate`` call per prompt) in the same run; the target is at least 5x its tokens per second at batch 32.
Tokens are the generated tokens each completion keeps (up to its EOS), so padding after an early EOS in a
batch does not count.

Then the QLoRA case at the largest batch size: the live NF4 + LoRA model that ``SFTModule`` trains, against
the float copy that ``SFTModule.generation_model()`` hands the engines on CPU
(:func:`stat_pl.models.dequantized_copy`). Both generate greedily, so the share of identical completions
is printed as well: the copy is meant to generate exactly what the live model would.

Torch runs one thread by default: on the shared 2-core machine this was written on, a second thread stalls
at every parallel region while other processes hold the other core (see ``bench/sft_throughput.py``).

    python bench/generation_throughput.py                      # 32 prompts, 64 new tokens, batch 1, 8, 32
    python bench/generation_throughput.py --threads 2 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers import PreTrainedTokenizerBase  # noqa: E402

from stat_pl.engines.base import SamplingParams  # noqa: E402
from stat_pl.engines.hf import HFEngine  # noqa: E402
from stat_pl.models import load_causal_lm, load_tokenizer  # noqa: E402
from stat_pl.modules.sft import SFTModule  # noqa: E402
from stat_pl.records import RecordSource  # noqa: E402

MODEL = "offline:smollm2-135m-instruct"
MATH_TEST = REPO.parent / "shared" / "data" / "math" / "test.jsonl"
TARGET_SPEEDUP_AT_32 = 5.0


def load_average() -> float:
    """The 1-minute load average (what ``uptime`` prints first): how busy the shared cores were."""
    import psutil

    return psutil.getloadavg()[0]


def cpu_model() -> str:
    """The CPU's model name, for the table header (figures only compare on the same machine)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def measure(name: str, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list, batch_size: int,
            sampling: SamplingParams) -> dict:
    """Generate for every prompt at ``batch_size``; wall and CPU seconds, kept tokens, the texts."""
    engine = HFEngine(model, tokenizer, batch_size=batch_size, progress=False)
    load_before = load_average()
    wall, cpu = time.perf_counter(), time.process_time()
    completions = [group[0] for group in engine.generate(prompts, sampling)]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tokens = sum(c.num_tokens for c in completions)
    return {"name": name, "batch": batch_size, "tokens": tokens, "seconds": wall, "cpu_seconds": cpu,
            "texts": [c.text for c in completions], "load": (load_before, load_average())}


def warm_up(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list) -> None:
    """One short generation, so one-time costs (lazy init, first allocations) stay out of the timings."""
    HFEngine(model, tokenizer, batch_size=len(prompts), progress=False).generate(prompts,
                                                                                 SamplingParams(max_new_tokens=4))


def print_table(rows: list[dict], anchor: dict) -> None:
    """One row per measurement; speed-ups are against ``anchor`` (batch 1 of the same run)."""
    print("| model | batch | tokens | wall s | tokens/s | vs batch 1 | tokens/CPU-s | load before/after |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rate = r["tokens"] / r["seconds"]
        print(f"| {r['name']} | {r['batch']} | {r['tokens']} | {r['seconds']:.1f} | {rate:.1f} | "
              f"{rate / (anchor['tokens'] / anchor['seconds']):.1f}x | {r['tokens'] / r['cpu_seconds']:.1f} | "
              f"{r['load'][0]:.2f}/{r['load'][1]:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32, help="first problems of the MATH test split")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32], help="the first is the anchor")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    if not MATH_TEST.is_file():
        sys.exit(f"{MATH_TEST} is absent; this bench reads the real MATH test problems from ../shared/data")
    torch.set_num_threads(args.threads)
    prompts = [[{"role": "user", "content": r.problem}]
               for r in RecordSource(str(MATH_TEST), limit=args.prompts).load()]
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens)
    tokenizer = load_tokenizer(MODEL)
    start_load = load_average()

    model = load_causal_lm(MODEL, quantization="none").eval().requires_grad_(False)
    warm_up(model, tokenizer, prompts[:2])
    rows = [measure("SmolLM2 fp32", model, tokenizer, prompts, b, sampling) for b in args.batch_sizes]
    del model

    module = SFTModule(MODEL, quantization="nf4")
    module.configure_model()
    largest = max(args.batch_sizes)
    warm_up(module.model, tokenizer, prompts[:2])
    live = measure("QLoRA live (NF4)", module.model, tokenizer, prompts, largest, sampling)
    copy = module.generation_model()
    warm_up(copy, tokenizer, prompts[:2])
    dequantized = measure("QLoRA dequantized_copy", copy, tokenizer, prompts, largest, sampling)

    print(f"\nHFEngine generation, {MODEL}, {args.prompts} MATH test prompts, greedy, "
          f"max_new_tokens={args.max_new_tokens}")
    print(f"CPU: {cpu_model()}, {torch.get_num_threads()} torch thread(s); load average {start_load:.2f} at start\n")
    print_table(rows + [live, dequantized], rows[0])
    anchor_rate = rows[0]["tokens"] / rows[0]["seconds"]
    at_largest = rows[-1]["tokens"] / rows[-1]["seconds"] / anchor_rate
    same = sum(a == b for a, b in zip(live["texts"], dequantized["texts"], strict=True))
    print(f"\nbatch {rows[-1]['batch']} vs batch {rows[0]['batch']}: {at_largest:.1f}x tokens/s: "
          f"{'meets' if at_largest >= TARGET_SPEEDUP_AT_32 else 'MISSES'} the target of >= {TARGET_SPEEDUP_AT_32:.0f}x")
    copy_speedup = (dequantized["tokens"] / dequantized["seconds"]) / (live["tokens"] / live["seconds"])
    print(f"QLoRA at batch {largest}: dequantized_copy {copy_speedup:.1f}x the live NF4 model's tokens/s; "
          f"{same}/{len(prompts)} completions identical")


if __name__ == "__main__":
    main()
