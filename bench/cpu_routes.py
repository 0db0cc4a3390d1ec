"""CPU routes end to end: a shipped config run with stat-pl's CPU code and with the plain library routes instead.

Each row is one ``python -m stat_pl fit --config <config>`` run, timed from start to exit, in a fresh process:

* ``stat-pl``: as shipped (``student.cpu_kernels: auto``: engines generate from the merged copy,
  :mod:`stat_pl.cpu`; HFEngine's decoding loop, :mod:`stat_pl.engines.decode`);
* ``no merged copy``: ``cpu_kernels: off``, engines generate from the live NF4 + PEFT model;
* ``generate, merged copy``: HFEngine's loop replaced by transformers' ``generate`` (static cache), same copy;
* ``generate, live model``: both library routes: the plain transformers + PEFT route.

The ``generate`` rows patch ``HFEngine`` in this bench only (what a library user would call: greedy or sampled
``generate`` with ``num_return_sequences``, the model's stop tokens). Rounds alternate the routes so a slow spell
of the machine hits them alike. Run on an otherwise idle machine, from the repository root:

    python bench/cpu_routes.py --config configs/grpo_smollm2_math.yaml --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROUTES = {
    "stat-pl": [],
    "no merged copy": ["--model.init_args.student.cpu_kernels=off"],
    "generate, merged copy": ["--generate"],
    "generate, live model": ["--generate", "--model.init_args.student.cpu_kernels=off"],
}


def use_library_generate() -> None:
    """Make HFEngine sample with transformers' ``generate`` (static cache, no compile) instead of its own loop."""
    from stat_pl.engines import hf
    from stat_pl.padding import left_pad

    def generate_batch(self, prompt_ids, sampling, on_step=None):
        device = next(self.model.parameters()).device
        ids, mask = (t.to(device) for t in left_pad(prompt_ids, self.tokenizer.pad_token_id))
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=sampling.max_new_tokens,
            do_sample=sampling.temperature > 0,
            temperature=sampling.temperature or None,
            top_p=sampling.top_p if sampling.temperature > 0 else None,
            top_k=None,
            num_return_sequences=sampling.n,
            eos_token_id=self._stop_token_ids(),
            pad_token_id=self.tokenizer.pad_token_id,
            cache_implementation="static",
            disable_compile=True,
        )[:, ids.shape[1] :].tolist()
        completions = [hf.completion_from_ids(self.tokenizer, row, sampling) for row in out]
        return [completions[i : i + sampling.n] for i in range(0, len(completions), sampling.n)]

    hf.HFEngine._generate_batch = generate_batch


def child(argv: list[str]) -> None:
    """One fit, in this process: ``--generate`` first patches the engine."""
    if "--generate" in argv:
        argv.remove("--generate")
        use_library_generate()
    from stat_pl.cli import main

    main(["fit", *argv])


def run(config: str, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, "--child", "--config", config, f"--trainer.default_root_dir={out}", *extra],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return time.perf_counter() - started


def main() -> None:
    if "--child" in sys.argv:
        argv = sys.argv[1:]
        argv.remove("--child")
        return child(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/grpo_smollm2_math.yaml")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--routes", nargs="+", default=list(ROUTES), choices=list(ROUTES))
    args = parser.parse_args()
    print(f"{args.config}: torch CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.rounds} rounds")
    seconds: dict[str, list[float]] = {route: [] for route in args.routes}
    for _ in range(args.rounds):
        for route in args.routes:
            seconds[route].append(run(args.config, ROUTES[route]))
            print(f"  {route:24s} {seconds[route][-1]:7.1f} s", flush=True)
    base = statistics.median(seconds["stat-pl"]) if "stat-pl" in seconds else None
    print("\n| route | wall s (median) | runs | vs stat-pl |\n| --- | ---: | --- | ---: |")
    for route, times in seconds.items():
        ratio = f"{statistics.median(times) / base:.2f}x" if base else "-"
        runs = ", ".join(f"{t:.1f}" for t in times)
        print(f"| {route} | {statistics.median(times):.1f} | {runs} | {ratio} |")


if __name__ == "__main__":
    main()
