"""GRPO on CPU: stat-pl's GRPOModule vs TRL's GRPOTrainer, SmolLM2-135M with LoRA, seconds per optimizer step.

Both arms run the same GRPO: ``offline:smollm2-135m-instruct`` in float32 (or both in bf16 autocast with
``--precision bf16``) with the paper's LoRA (rank 16,
alpha 32, dropout 0.05, every attention and MLP projection), 4 prompts x 4 completions per rollout batch,
at most ``--max-new-tokens`` new tokens sampled at temperature 1.0 (top-p 1), reward = answer
correctness (:class:`stat_pl.rewards.CorrectnessReward`, the paper's), group-std-scaled advantages,
beta 0 (no reference forward), token-mean loss (TRL's ``loss_type="dapo"``), clip epsilon 0.2, AdamW at
lr 1e-6 (constant, no weight decay), gradient clipping at 1.0, one optimizer step per rollout batch
(one pass). Each arm runs ``--warmup-steps`` steps untimed,
then ``--steps`` timed ones, in its own subprocess so its peak RSS is its own.

The prompts are the first rows of the local MATH training split with the shipped GRPO config's suffix
("Give the final answer in \\boxed{}."). stat-pl has no file-order sampling, so its ``PromptDataModule``
deals them (seeded permutation, length-grouped batches of 4); the parent process records those batches
and hands TRL the same rows in the same batches (``shuffle_dataset=False``). Both workers check that they
generate from exactly those prompt token ids. The completions differ (each framework seeds its own
sampling), so generated tokens per step are printed beside the times.

* stat-pl: ``GRPOModule`` (student ``quantization="none"``, ``engine="hf"``) + ``PromptDataModule`` under a
  Lightning ``Trainer`` with ``precision="32-true"`` (``"bf16-mixed"`` under ``--precision bf16``;
  ``compute_dtype="auto"`` follows it, so it then also samples from a bf16 merged copy), its defaults otherwise
  (``cpu_kernels="auto"``, one group of 4 completions per forward/backward, shared-prompt forward, prefill
  shared by a prompt's 4 samples), once with ``skip_zero_advantage_groups=False`` (the target's arm: every
  group goes through the backward, as in TRL) and once with it on (groups whose 4 rewards are equal skip the
  forward and backward; same adapter).
* TRL (the anchor): ``GRPOTrainer`` with the LoRA config through ``peft_config``, ``use_cpu=True``,
  ``per_device_train_batch_size=16``, ``gradient_accumulation_steps=1`` (so ``steps_per_generation=1``:
  one generation batch per optimizer step, no old-log-prob forward; the whole batch in one
  forward/backward), ``num_iterations=1``,
  ``bf16=False`` (``True`` under ``--precision bf16``) and ``gradient_checkpointing=False`` (TRL defaults
  both on; stat-pl's arm recomputes nothing), ``lr_scheduler_type="constant"``; the reward is the same CorrectnessReward
  behind TRL's reward-function signature.
* TRL, one group per backward (``--trl-per-group``): the same with ``per_device_train_batch_size=4``
  and ``gradient_accumulation_steps=4`` (so ``steps_per_generation=4``: still one generation of 16
  completions and one optimizer step per rollout batch, no old-log-prob forward, a token-mean normaliser
  over all 16), i.e. stat-pl's micro-batch: the like-for-like memory comparison.
* stat-pl QLoRA (``--quantization nf4``): the skip-off stat-pl arm with NF4 base weights (on CPU it
  generates from a float32 dequantised copy).

Time per phase, summed over the timed steps and divided by their number: stat-pl's own ``PhaseTimer``
(logged as ``train/time/*_s``): generation (``HFEngine.generate``), reward (scoring and advantages) and
train (log-probs, loss, backward, clipping, optimizer step); other = the step's wall time minus those
(adapter sync, Lightning's loop, logging). TRL: generation = ``_generate_single_turn`` (its
``model.generate``), reward = ``_calculate_rewards``, train = the step's wall time outside
``_generate_and_score_completions`` (loss forward and backward, clipping, optimizer step, the Trainer's
loop), other = the rest of ``_generate_and_score_completions`` (tokenising, decoding, padding, advantages,
metrics). Peak RSS is the worker's ``ru_maxrss`` after its last step. The arms run interleaved (A B C,
then C B A, ...); ratios are geometric means of the per-round ratios; the load average is printed
before and after every arm.

    python bench/grpo_throughput.py                          # 1 warm-up + 3 timed steps per arm, one round
    python bench/grpo_throughput.py --threads 2 --quantization nf4
    python bench/grpo_throughput.py --threads 2 --rounds 2 --trl-per-group
    python bench/grpo_throughput.py --threads 2 --rounds 2 --precision bf16   # a CPU with native bf16 only
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from sft_throughput import clocks, cpu_model, load_average, peak_rss_mib, run_worker

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = "offline:smollm2-135m-instruct"
MATH_TRAIN = REPO.parent / "shared" / "data" / "math" / "train.jsonl"
PROMPT_SUFFIX = "\nGive the final answer in \\boxed{}."  # configs/grpo_smollm2_math.yaml's
PROMPTS, GENERATIONS = 4, 4
LEARNING_RATE, EPSILON, MAX_GRAD_NORM = 1e-6, 0.2, 1.0
TARGET_STEP_RATIO, TARGET_RSS_RATIO = 0.5, 0.5
WORKER_ARGS = ("steps", "warmup_steps", "max_new_tokens", "threads", "precision")
ARMS = {
    "stat-pl": ("stat-pl, skipping off", "none", False),
    "stat-pl-skip": ("stat-pl, skipping on", "none", True),
    "trl": ("TRL GRPOTrainer", None, None),
    "trl-group": ("TRL GRPOTrainer, one group per backward", None, None),
    "stat-pl-nf4": ("stat-pl QLoRA, skipping off", "nf4", False),
}
PHASES = ("generation", "reward", "train", "other")


# ---- the prompts both arms see -------------------------------------------------------------------
def prompt_plan(args: argparse.Namespace) -> dict:
    """The rollout batches stat-pl's PromptDataModule deals: per prompt its text, gold answer and token ids.

    ``rows`` is the number of leading file rows that hold exactly enough prompts for full batches (a row
    without an answer or over ``max_prompt_length`` tokens is skipped by the data module, so a few more rows
    than prompts may be needed: TRL groups its dataset rows by position and needs every batch full).
    """
    needed = PROMPTS * (args.warmup_steps + args.steps)
    rows = needed
    while True:
        data = prompt_data(rows)
        data.setup("fit")
        if len(data.train_examples) >= needed:
            break
        rows += needed - len(data.train_examples)
    batches = [
        [
            {"content": data.records[r].problem + PROMPT_SUFFIX, "answer": answer, "prompt_ids": ids}
            for r, answer, ids in zip(batch["record"].tolist(), batch["answers"], batch["prompt_ids"], strict=True)
        ]
        for batch in data.train_dataloader()
    ]
    return {"rows": rows, "batches": batches}


def prompt_data(rows: int):
    """The first ``rows`` MATH training rows as stat-pl's GRPO data module, batches of ``PROMPTS``."""
    from stat_pl.data.prompt_datamodule import PromptDataModule
    from stat_pl.records import RecordSource

    return PromptDataModule(
        MODEL,
        train=[RecordSource(str(MATH_TRAIN), limit=rows)],
        batch_size=PROMPTS,
        prompt_suffix=PROMPT_SUFFIX,
        skip_unanswered=True,
        seed=0,
    )


def check_prompts(arm: str, step: int, got: list[list[int]], plan: dict) -> None:
    expected = [p["prompt_ids"] for p in plan["batches"][step]]
    if got != expected:
        raise RuntimeError(
            f"{arm} step {step}: generated from other prompt ids than the plan's: got lengths "
            f"{[len(g) for g in got]}, expected {[len(e) for e in expected]}"
        )


def step_stats(lengths: list[list[int]], rewards: list[list[float]]) -> dict:
    """Generated tokens per step, mean reward and the share of groups whose rewards are all equal."""
    groups = [r[g : g + GENERATIONS] for r in rewards for g in range(0, len(r), GENERATIONS)]
    return {
        "generated_tokens": sum(map(sum, lengths)) / max(1, len(lengths)),
        "reward": statistics.fmean(x for r in rewards for x in r),
        "zero_advantage_groups": sum(min(g) == max(g) for g in groups) / len(groups),
    }


# ---- arm A: stat-pl ------------------------------------------------------------------------------
def run_stat_pl(args: argparse.Namespace, plan: dict, quantization: str, skip: bool) -> dict:
    """Fit GRPOModule + PromptDataModule under Lightning; time the steps after the warm-up."""
    import lightning as L
    import torch

    from stat_pl.models import LoRAConfig, StudentConfig
    from stat_pl.modules.grpo import GRPOModule

    class StepWindow(L.Callback):
        """Clocks, phase times and rollout figures of the steps after the warm-up."""

        def __init__(self) -> None:
            self.started: tuple[float, float] | None = None
            self.ended = (0.0, 0.0)
            self.phases: dict[str, float] = defaultdict(float)
            self.lengths: list[list[int]] = []
            self.rewards: list[list[float]] = []

        def on_train_start(self, trainer, pl_module) -> None:
            if args.warmup_steps == 0:
                self.started = clocks()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            check_prompts(args.worker, batch_idx, batch["prompt_ids"], plan)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self.started is None:
                if trainer.global_step == args.warmup_steps:
                    self.started = clocks()
                return
            for phase in ("generation", "reward", "train"):
                self.phases[phase] += float(trainer.callback_metrics[f"train/time/{phase}_s"])
            rollouts = outputs["rollouts"]
            self.lengths.append([len(c.token_ids) for group in rollouts.completions for c in group])
            self.rewards.append(rollouts.rewards.flatten().tolist())
            self.ended = clocks()

    L.seed_everything(0, verbose=False)
    with tempfile.TemporaryDirectory() as out:
        data = prompt_data(plan["rows"])
        module = GRPOModule(
            StudentConfig(
                model=MODEL,
                quantization=quantization,
                compute_dtype="auto",  # follows the trainer's precision: float32, or bfloat16 under bf16-mixed
                lora=LoRAConfig(),
            ),
            engine="hf",  # both arms sample with transformers on the CPU, also where vllm is installed
            num_generations=GENERATIONS,
            max_new_tokens=args.max_new_tokens,
            temperature=1.0,
            loss_aggregation="token_mean",
            epsilon=EPSILON,
            beta=0.0,
            num_iterations=1,
            skip_zero_advantage_groups=skip,
            max_grad_norm=MAX_GRAD_NORM,
            adapter_dir=out,
            seed=0,
            optimizer=lambda params: torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0),
        )
        window = StepWindow()
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            precision="bf16-mixed" if args.precision == "bf16" else "32-true",
            max_steps=args.warmup_steps + args.steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
            default_root_dir=out,
            callbacks=[window],
        )
        trainer.fit(module, data)
    return {
        **timed_window(window.started, window.ended, window.phases, args.steps),
        **step_stats(window.lengths, window.rewards),
        "precision": ("bf16 autocast" if args.precision == "bf16" else "float32")
        + (" (NF4 base)" if quantization == "nf4" else ""),
        "micro_batch": f"{module.hparams.micro_batch_groups} group(s) of {GENERATIONS}",
        "lora_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "torch_threads": torch.get_num_threads(),
    }


def timed_window(
    started: tuple[float, float], ended: tuple[float, float], phases: dict[str, float], steps: int
) -> dict:
    """Per-step wall and CPU seconds and phase seconds; ``other`` is the wall time the named phases leave."""
    wall = ended[0] - started[0]
    per_step = {phase: phases[phase] / steps for phase in ("generation", "reward", "train")}
    return {
        "seconds_per_step": wall / steps,
        "cpu_seconds_per_step": (ended[1] - started[1]) / steps,
        "phases": {**per_step, "other": wall / steps - sum(per_step.values())},
    }


# ---- arm B: TRL ----------------------------------------------------------------------------------
def run_trl(args: argparse.Namespace, plan: dict, per_group: bool) -> dict:
    """Train with TRL's GRPOTrainer on the plan's prompts in the plan's order; time the steps after the warm-up.

    ``per_group``: one group (``GENERATIONS`` completions) per forward/backward, accumulated over the batch.
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from stat_pl.engines.base import Completion
    from stat_pl.models import PAPER_TARGET_MODULES, LoRAConfig
    from stat_pl.offline_models import resolve_model_path
    from stat_pl.phase_timer import PhaseTimer
    from stat_pl.rewards import CorrectnessReward
    from stat_pl.tokenizer import load_tokenizer

    timer, lengths, rewards = PhaseTimer(), [], []
    tokenizer = load_tokenizer(MODEL)
    correctness = CorrectnessReward()

    def correct(prompts, completions, completion_ids, answer, **kwargs) -> list[float]:
        """stat-pl's CorrectnessReward behind TRL's reward-function signature."""
        done = [
            Completion(
                c[-1]["content"],
                len(ids),
                "stop" if ids and ids[-1] == tokenizer.eos_token_id else "length",
                tuple(ids),
            )
            for c, ids in zip(completions, completion_ids, strict=True)
        ]
        scores = correctness.score(done, answer)
        rewards.append(scores)
        return scores

    class StepClock(TrainerCallback):
        """Clocks at the end of the warm-up and of the last step; phase times restart with the window."""

        def __init__(self) -> None:
            self.started = self.ended = (0.0, 0.0)

        def on_train_begin(self, train_args, state, control, **kwargs) -> None:
            if args.warmup_steps == 0:
                self.started = clocks()

        def on_step_end(self, train_args, state, control, **kwargs) -> None:
            if state.global_step == args.warmup_steps:
                timer.seconds.clear()
                self.started = clocks()
            elif state.global_step == args.warmup_steps + args.steps:
                self.ended = clocks()

    lora = LoRAConfig()
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(PAPER_TARGET_MODULES),
        task_type="CAUSAL_LM",
    )
    dataset = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": p["content"]}], "answer": p["answer"]}
            for batch in plan["batches"]
            for p in batch
        ]
    )
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out,
            use_cpu=True,
            bf16=args.precision == "bf16",
            gradient_checkpointing=False,
            per_device_train_batch_size=GENERATIONS if per_group else PROMPTS * GENERATIONS,
            gradient_accumulation_steps=PROMPTS if per_group else 1,
            num_generations=GENERATIONS,
            max_completion_length=args.max_new_tokens,
            temperature=1.0,
            top_p=1.0,
            beta=0.0,
            loss_type="dapo",
            epsilon=EPSILON,
            num_iterations=1,
            learning_rate=LEARNING_RATE,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            max_grad_norm=MAX_GRAD_NORM,
            shuffle_dataset=False,
            max_steps=args.warmup_steps + args.steps,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=0,
        )
        trainer = GRPOTrainer(
            model=resolve_model_path(MODEL),
            reward_funcs=[correct],
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[clock],
        )
        generate, score, rollout = (
            trainer._generate_single_turn,
            trainer._calculate_rewards,
            trainer._generate_and_score_completions,
        )

        def timed_generate(prompt_ids, *rest, **kwargs):
            check_prompts("TRL", len(lengths), [list(p) for p in prompt_ids[::GENERATIONS]], plan)
            with timer("generation"):
                completion_ids, logprobs = generate(prompt_ids, *rest, **kwargs)
            lengths.append([len(ids) for ids in completion_ids])
            return completion_ids, logprobs

        def timed_score(*a, **kwargs):
            with timer("reward"):
                return score(*a, **kwargs)

        def timed_rollout(*a, **kwargs):
            with timer("rollout"):
                return rollout(*a, **kwargs)

        trainer._generate_single_turn, trainer._calculate_rewards = timed_generate, timed_score
        trainer._generate_and_score_completions = timed_rollout
        trainer.train()
    wall = clock.ended[0] - clock.started[0]
    phases = {
        "generation": timer.seconds["generation"],
        "reward": timer.seconds["reward"],
        "train": wall - timer.seconds["rollout"],
    }
    result = timed_window(clock.started, clock.ended, phases, args.steps)
    result["phases"]["other"] = (timer.seconds["rollout"] - phases["generation"] - phases["reward"]) / args.steps
    return {
        **result,
        **step_stats(lengths[args.warmup_steps :], rewards[args.warmup_steps :]),
        "precision": "bf16 autocast" if trainer.args.bf16 else "float32",
        "loss_type": trainer.loss_type,
        "steps_per_generation": trainer.args.steps_per_generation,
        "micro_batch": f"{trainer.args.per_device_train_batch_size} completions",
        "torch_threads": torch.get_num_threads(),
        "lora_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    }


# ---- the parent: interleave the arms, print the table --------------------------------------------
def run_arm(arm: str, args: argparse.Namespace, plan_file: str) -> dict:
    """One arm of this bench in a fresh subprocess, given the shared prompt plan."""
    options = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in WORKER_ARGS]
    return run_worker(__file__, arm, ["--plan", plan_file, *options])


def worker(args: argparse.Namespace) -> None:
    """Run one arm in this process and write its figures, peak RSS included, to ``args.result``."""
    import torch

    torch.set_num_threads(args.threads)
    plan = json.loads(Path(args.plan).read_text())
    _, quantization, skip = ARMS[args.worker]
    if args.worker.startswith("trl"):
        row = run_trl(args, plan, per_group=args.worker == "trl-group")
    else:
        row = run_stat_pl(args, plan, quantization, skip)
    row["peak_rss_mib"] = peak_rss_mib()
    Path(args.result).write_text(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps (rollout batches) per arm")
    parser.add_argument("--warmup-steps", type=int, default=1, help="untimed optimizer steps first")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="completion budget in tokens")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of every arm")
    parser.add_argument(
        "--quantization",
        choices=["none", "nf4"],
        default="none",
        help="nf4: also run stat-pl with QLoRA (skipping off) as another row",
    )
    parser.add_argument(
        "--trl-per-group",
        action="store_true",
        help="also run TRL with one group per forward/backward (stat-pl's default micro-batch) as another row",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per arm (the same for every arm)")
    parser.add_argument(
        "--precision",
        choices=["float32", "bf16"],
        default="float32",
        help="bf16: every arm in bf16 autocast (stat-pl bf16-mixed, its rollout copy in bf16; TRL bf16=True); "
        "refused where this CPU's bf16 is emulated",
    )
    parser.add_argument("--worker", choices=list(ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if not MATH_TRAIN.is_file():
        sys.exit(f"{MATH_TRAIN} is absent; this bench trains on the real MATH rows from ../shared/data")
    if args.steps < 1:
        sys.exit("--steps must be at least 1")
    if args.precision == "bf16":
        from stat_pl.precision import cpu_bf16_is_fast

        fast, reason = cpu_bf16_is_fast()
        if not fast:
            sys.exit(f"--precision bf16: {reason}")

    arms = ["stat-pl", "trl", "stat-pl-skip"] + (["stat-pl-nf4"] if args.quantization == "nf4" else [])
    arms += ["trl-group"] if args.trl_per_group else []
    load_start = load_average()
    rows = []
    with tempfile.NamedTemporaryFile("w", suffix=".json") as plan_file:
        json.dump(prompt_plan(args), plan_file)
        plan_file.flush()
        for round_index in range(args.rounds):
            for arm in arms if round_index % 2 == 0 else arms[::-1]:
                rows.append({"round": round_index + 1, **run_arm(arm, args, plan_file.name)})
                print(f"round {round_index + 1} {arm}: {rows[-1]['seconds_per_step']:.1f} s/step", file=sys.stderr)
    report(rows, args, load_start)


def report(rows: list[dict], args: argparse.Namespace, load_start: float) -> None:
    """The table and the verdict on the targets."""
    print(
        f"\nGRPO throughput, {MODEL} + LoRA r16, {PROMPTS} MATH prompts x {GENERATIONS} completions, <= "
        f"{args.max_new_tokens} new tokens, T = 1.0, beta 0, token-mean loss, one optimizer step per rollout "
        f"batch, {args.warmup_steps} warm-up + {args.steps} timed steps, {args.rounds} round(s)"
    )
    print(
        f"CPU: {cpu_model()}, {rows[0]['torch_threads']} torch threads; load average {load_start:.2f} at start; "
        f"{rows[0]['lora_params'] / 1e6:.2f}M trainable LoRA parameters\n"
    )
    print(
        "| round | arm | precision | micro-batch | s/step | CPU-s/step | generated tokens/step | reward | "
        "zero-adv. groups | " + " | ".join(f"{p} s/step" for p in PHASES) + " | peak RSS MiB | load before/after |"
    )
    print("|---" * (11 + len(PHASES)) + "|")
    for r in rows:
        print(
            f"| {r['round']} | {ARMS[r['arm']][0]} | {r['precision']} | {r['micro_batch']} | "
            f"{r['seconds_per_step']:.2f} | "
            f"{r['cpu_seconds_per_step']:.2f} | {r['generated_tokens']:.0f} | {r['reward']:.3f} | "
            f"{100 * r['zero_advantage_groups']:.0f}% | "
            + " | ".join(f"{r['phases'][p]:.2f}" for p in PHASES)
            + f" | {r['peak_rss_mib']:.0f} | {r['load_before']:.2f}/{r['load_after']:.2f} |"
        )
    print()
    verdicts(rows)


def paired_ratio(arm_rows: list[dict], anchor_rows: list[dict], key: str) -> float:
    """Geometric mean over rounds of the arm's ``key`` over the anchor's."""
    ratios = [a[key] / b[key] for a, b in zip(arm_rows, anchor_rows, strict=True)]
    return math.exp(statistics.fmean(math.log(x) for x in ratios))


def verdicts(rows: list[dict]) -> None:
    """Each stat-pl arm against each TRL arm: paired seconds per step, peak RSS; the target on the skipping-off
    arm against TRL with the whole batch per backward (the anchor the issue measured)."""

    def of(arm: str) -> list[dict]:
        return [r for r in rows if r["arm"] == arm]

    for anchor in (a for a in ARMS if a.startswith("trl") and of(a)):
        trl = of(anchor)
        print(
            f"{ARMS[anchor][0]}: loss_type={trl[0]['loss_type']}, steps_per_generation="
            f"{trl[0]['steps_per_generation']}, micro-batch {trl[0]['micro_batch']}, precision {trl[0]['precision']}"
        )
        for arm in (a for a in ARMS if not a.startswith("trl") and of(a)):
            step = paired_ratio(of(arm), trl, "seconds_per_step")
            cpu = paired_ratio(of(arm), trl, "cpu_seconds_per_step")
            rss = max(r["peak_rss_mib"] for r in of(arm)) / max(r["peak_rss_mib"] for r in trl)
            line = f"  {ARMS[arm][0]}: {step:.2f}x s/step ({cpu:.2f}x CPU-s/step), {rss:.2f}x peak RSS"
            if arm == "stat-pl" and anchor == "trl":
                met = step <= TARGET_STEP_RATIO and rss <= TARGET_RSS_RATIO
                line += (
                    f": {'meets' if met else 'MISSES'} the target (<= {TARGET_STEP_RATIO}x s/step, "
                    f"<= {TARGET_RSS_RATIO}x peak RSS)"
                )
            print(line)


if __name__ == "__main__":
    main()
