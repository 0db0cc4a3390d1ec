"""Evaluation throughput: questions per second of ``evaluate`` on SmolLM2-135M-Instruct (CPU), batch 1 vs 32,
and how the time splits between generation and grading.

Runs the evaluate stage's own code (:func:`stat_pl.evaluation.evaluate.run_evaluation` with the HF
engine) on the first ``--questions`` questions of the local MATH evaluation split, once per batch
size, each into a fresh output folder, and reads the generation and grading seconds it records. The
anchor is batch size 1 in the same run; the target is grading under 5% of the generate + grade time.

    python bench/eval_throughput.py                     # 32 questions, 32 new tokens, batch 1 and 32
    python bench/eval_throughput.py --questions 64 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stat_pl.evaluation.adapters import ModelEntry  # noqa: E402
from stat_pl.evaluation.benchmarks import BenchmarkSpec  # noqa: E402
from stat_pl.evaluation.evaluate import EvalSettings, engine_factory, run_evaluation  # noqa: E402

MATH_TEST = REPO.parent / "shared" / "data" / "math" / "test.jsonl"
MODEL = "offline:smollm2-135m-instruct"
TARGET_GRADING_SHARE = 0.05


def measure(batch_size: int, questions: int, max_new_tokens: int) -> dict[str, float]:
    """One evaluate run at ``batch_size``; wall seconds and the generation / grading split."""
    spec = BenchmarkSpec("math", path=str(MATH_TEST), limit=questions)
    settings = EvalSettings(max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        results = run_evaluation(
            [ModelEntry("base", MODEL)],
            [spec],
            Path(out),
            settings,
            engine_factory("hf", batch_size, with_adapters=False),
        )
        wall = time.perf_counter() - start
    timing = results["generation"]
    busy = timing["generation_s"] + timing["grading_s"]
    return {
        "batch": batch_size,
        "questions": timing["questions_generated"],
        "wall_s": wall,
        "generation_s": timing["generation_s"],
        "grading_s": timing["grading_s"],
        "questions_per_s": timing["questions_generated"] / busy,
        "grading_share": timing["grading_s"] / busy,
        "pass@1": results["summary"]["base"]["math"]["pass@1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's); 1 avoids spinning threads on a shared CPU",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not MATH_TEST.is_file():
        sys.exit(f"{MATH_TEST} is absent; this bench reads the real MATH test questions from ../shared/data")
    rows = [measure(b, args.questions, args.max_new_tokens) for b in args.batch_sizes]
    anchor = rows[0]["questions_per_s"]
    print(
        f"\nevaluate on {MODEL}, {args.questions} MATH questions, max_new_tokens={args.max_new_tokens}, "
        f"CPU, {torch.get_num_threads()} torch threads\n"
    )
    print(
        "| batch | questions | wall s | generation s | grading s | questions/s | vs batch "
        f"{rows[0]['batch']} | grading share | pass@1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['batch']} | {r['questions']} | {r['wall_s']:.1f} | {r['generation_s']:.1f} | "
            f"{r['grading_s']:.2f} | {r['questions_per_s']:.3f} | {r['questions_per_s'] / anchor:.1f}x | "
            f"{100 * r['grading_share']:.2f}% | {100 * r['pass@1']:.1f} |"
        )
    worst = max(r["grading_share"] for r in rows)
    verdict = "meets" if worst < TARGET_GRADING_SHARE else "MISSES"
    print(f"\ngrading share at most {100 * worst:.2f}%: {verdict} the target of < {100 * TARGET_GRADING_SHARE:.0f}%")


if __name__ == "__main__":
    main()
