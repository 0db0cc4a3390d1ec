"""Does re-profiling help? Uniform SFT vs static STAT-Sel vs online STAT-Sel on the skill world.

Same model (SmolLM2-135M-Instruct + QLoRA), same seed, same number of optimizer steps, same
validation budget for the two profiling arms; per-skill accuracy on a held-out skill-world test set
before and after. Prints a table and the mean over the 3 skills that were weakest at the start.

    python bench/skillworld_effect.py [--epochs 3] [--samples-per-epoch 320] [--test-questions 240]
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections import defaultdict
from pathlib import Path

import lightning as L
import torch

from stat_pl.callbacks.skill_reprofiler import SkillReprofiler
from stat_pl.data.formatting import prompt_messages
from stat_pl.data.sft_datamodule import SFTDataModule
from stat_pl.data.skillworld import SkillWorldSource
from stat_pl.engines.base import SamplingParams
from stat_pl.engines.hf import HFEngine
from stat_pl.grading import grade
from stat_pl.hardware import configure_threads
from stat_pl.models import LoRAConfig
from stat_pl.modules.sft import SFTModule
from stat_pl.profiling.detectors import GroundTruthDetector
from stat_pl.profiling.oracle import SkillWorldOracle
from stat_pl.records import ProblemRecord
from stat_pl.trainer import StatTrainer

MODEL = "offline:smollm2-135m-instruct"
WORLD = {"levels": (1, 2), "max_skills": 2}


def per_skill_accuracy(model: torch.nn.Module, tokenizer, test: list[ProblemRecord], max_new_tokens: int) -> dict:
    completions = HFEngine(model, tokenizer, batch_size=48).generate(
        [prompt_messages(r.problem) for r in test], SamplingParams(max_new_tokens=max_new_tokens)
    )
    right: dict[str, list[bool]] = defaultdict(list)
    for record, (completion,) in zip(test, completions, strict=True):
        for skill in record.skills:
            right[skill].append(grade(completion.text, record.answer))
    return {s: sum(v) / len(v) for s, v in sorted(right.items())}


def train_arm(arm: str, args: argparse.Namespace, out: Path) -> SFTModule:
    L.seed_everything(args.seed)
    module = SFTModule(
        MODEL,
        quantization="nf4",
        lora=LoRAConfig(),
        optimizer=functools.partial(torch.optim.AdamW, lr=args.lr, weight_decay=0.1),
    )
    data = SFTDataModule(
        MODEL,
        train=[SkillWorldSource("train", 2000, seed=args.seed, **WORLD)],
        batch_size=8,
        samples_per_epoch=args.samples_per_epoch,
        max_length=192,
        weight_floor=0.2,
        seed=args.seed,
    )
    callbacks = []
    if arm != "uniform":
        callbacks.append(
            SkillReprofiler(
                SkillWorldSource("validation", 500, seed=args.seed, **WORLD),
                GroundTruthDetector(),
                SkillWorldOracle(),
                num_questions=args.validation_questions,
                one_shot=arm == "static",
                combine="ema",
                ema_alpha=0.7,
                max_new_tokens=args.max_new_tokens,
                batch_size=48,
                seed=args.seed,
            )
        )
    trainer = StatTrainer(
        accelerator="cpu",
        max_epochs=args.epochs,
        precision="auto",
        accumulate_grad_batches=2,
        gradient_clip_val=0.3,
        default_root_dir=out / arm,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(module, data)
    module.tokenizer = data.tokenizer
    return module


def weakest(before: dict[str, float], k: int = 3) -> list[str]:
    return sorted(before, key=lambda s: (before[s], s))[:k]


def report(before: dict[str, float], after: dict[str, dict[str, float]]) -> str:
    weak = weakest(before)
    lines = ["| skill | before | " + " | ".join(after) + " |", "|---|---|" + "---|" * len(after)]
    for skill in before:
        mark = " (weak)" if skill in weak else ""
        lines.append(
            f"| {skill}{mark} | {before[skill]:.2f} | " + " | ".join(f"{a[skill]:.2f}" for a in after.values()) + " |"
        )
    mean = lambda acc, skills: sum(acc[s] for s in skills) / len(skills)  # noqa: E731
    others = [s for s in before if s not in weak]
    lines.append(
        f"| **mean, 3 weakest at start** | {mean(before, weak):.3f} | "
        + " | ".join(f"{mean(a, weak):.3f}" for a in after.values())
        + " |"
    )
    lines.append(
        f"| **mean, other skills** | {mean(before, others):.3f} | "
        + " | ".join(f"{mean(a, others):.3f}" for a in after.values())
        + " |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples-per-epoch", type=int, default=320)
    parser.add_argument("--validation-questions", type=int, default=48)
    parser.add_argument("--test-questions", type=int, default=240)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", nargs="+", default=["uniform", "static", "online"])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_skillworld_effect"))
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: $STAT_PL_THREADS, else torch's choice)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    else:
        configure_threads()
    test = SkillWorldSource("test", args.test_questions, seed=args.seed, **WORLD).load()
    base = SFTModule(MODEL, quantization="nf4", lora=LoRAConfig())
    base.configure_model()
    from stat_pl.models import load_tokenizer

    tokenizer = load_tokenizer(MODEL)
    before = per_skill_accuracy(base.generation_model(), tokenizer, test, args.max_new_tokens)
    after, seconds = {}, {}
    for arm in args.arms:
        started = time.perf_counter()
        module = train_arm(arm, args, args.out)
        seconds[arm] = time.perf_counter() - started
        after[arm] = per_skill_accuracy(module.generation_model(), tokenizer, test, args.max_new_tokens)
    table = report(before, after)
    print(table)
    print("train+profile seconds per arm:", {k: round(v) for k, v in seconds.items()})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(
        json.dumps(
            {"before": before, "after": after, "seconds": seconds, "args": {k: str(v) for k, v in vars(args).items()}},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
