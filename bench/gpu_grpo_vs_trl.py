"""GRPO on one GPU with colocated vLLM: stat-pl's GRPOModule vs TRL's GRPOTrainer, seconds per step and peak memory.

    python bench/gpu_grpo_vs_trl.py                                            # SmolLM2-135M, 8 x 8, 1 + 5 steps
    python bench/gpu_grpo_vs_trl.py --model meta-llama/Llama-3.2-1B-Instruct   # a Hub model (its licence accepted)
    python bench/gpu_grpo_vs_trl.py --vllm-sleep --rounds 2                    # vLLM sleeps between batches, both arms

Run from the repo root on a machine with a CUDA GPU and vLLM (``pip install -e ".[dev,bench,vllm]"``); it refuses to
start without a GPU. Both arms run the same GRPO on the same GPU: ``--model`` in bf16 (a float32 checkpoint, such as
the offline SmolLM2, is first saved as a bf16 copy that both arms load, since TRL's colocated vLLM takes the
checkpoint's dtype) with the paper's LoRA (rank 16, alpha 32, dropout 0.05, every attention and MLP projection),
``--prompts`` MATH training questions x ``--generations`` completions per rollout batch, at most ``--max-new-tokens``
new tokens at temperature 1.0 (top-p 1), reward = answer correctness (:class:`stat_pl.rewards.CorrectnessReward`, the
paper's), group-std-scaled advantages, beta 0, token-mean loss (TRL's ``loss_type="dapo"``), clip epsilon 0.2, AdamW at
lr 1e-6 (constant, no weight decay), gradient clipping 1.0, one optimizer step per rollout batch with the whole batch
in one forward/backward, bf16 autocast, no gradient checkpointing. Rollouts come from vLLM colocated on the training
GPU in both, with ``--gpu-memory-utilization`` of it and ``max_model_len`` = ``--max-prompt-length`` +
``--max-new-tokens``; with ``--vllm-sleep`` both put vLLM to sleep between rollout batches.

* stat-pl: ``GRPOModule`` (``engine="vllm"``: the adapter saved before each batch, served by vLLM as a LoRA adapter)
  + ``PromptDataModule`` (every question once, seeded order) under a Lightning ``Trainer``, ``precision="bf16-mixed"``,
  once with ``skip_zero_advantage_groups=False`` (the target's arm: every group through the backward, as in TRL) and
  once with its default (groups whose rewards are all equal skip the forward and backward; same adapter).
* TRL (the anchor): ``GRPOTrainer`` with ``use_vllm=True, vllm_mode="colocate"`` (the adapter merged into the weights
  it pushes to vLLM), ``peft_config``, ``per_device_train_batch_size`` = prompts x generations,
  ``gradient_accumulation_steps=1``, ``bf16=True``, ``gradient_checkpointing=False``,
  ``vllm_importance_sampling_correction=False`` (stat-pl applies none; TRL's default is on); the reward is the same
  CorrectnessReward behind TRL's reward-function signature.

Both arms draw from the same questions: the first ``prompts x (warmup + steps)`` answered rows of ``--data`` whose
prompt fits ``--max-prompt-length`` tokens, each used once, batched in each framework's own seeded order; completions
differ (each framework seeds its own sampling), so generated tokens per step are printed beside the times. Seconds
per step are over the ``--steps`` steps after ``--warmup-steps`` (vLLM's start-up falls in the warm-up), CUDA
synchronised. Peak GPU memory is device-wide ``memory.used`` from nvidia-smi, sampled every 0.2 s while the arm's
process runs (vLLM's engine process included), beside ``torch.cuda.max_memory_allocated`` of the training process.
Each arm runs in its own process; the arms interleave over ``--rounds``; ratios are geometric means over rounds.
Target (issue 24): stat-pl <= 0.7x TRL's seconds per step at <= TRL's peak GPU memory.

Written without a GPU: not yet run; figures go to bench/README.md with the date, GPU and versions once measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from gpu_sft_vs_trl import MATH_TRAIN, MODEL, cuda_clock, nvidia_smi, paired_ratio, peft_lora, require_cuda, run_worker

PROMPT_SUFFIX = "\nGive the final answer in \\boxed{}."  # configs/grpo_smollm2_math.yaml's
LEARNING_RATE, EPSILON, MAX_GRAD_NORM = 1e-6, 0.2, 1.0
TARGET_STEP_RATIO = 0.7
ARMS = {
    "stat-pl": ("stat-pl, skipping off", False),
    "trl": ("TRL GRPOTrainer", None),
    "stat-pl-skip": ("stat-pl, skipping on", True),
}
WORKER_ARGS = ("prompts", "generations", "max_new_tokens", "max_prompt_length", "steps", "warmup_steps")


# ---- what both arms load -------------------------------------------------------------------------
def bf16_model(name: str, folder: Path) -> str:
    """``name``'s path where its checkpoint is bf16 already, else a bf16 copy saved in ``folder``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from stat_pl.offline_models import resolve_model_path
    from stat_pl.tokenizer import load_tokenizer

    path = resolve_model_path(name)
    if str(AutoConfig.from_pretrained(path).dtype).removeprefix("torch.") == "bfloat16":
        return path
    AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).save_pretrained(folder)
    load_tokenizer(name).save_pretrained(folder)
    return str(folder)


def question_rows(args: argparse.Namespace, model: str, path: Path) -> None:
    """Write the questions both arms train on to ``path``: the first answered rows whose prompt fits."""
    from stat_pl.data.formatting import encode_prompt
    from stat_pl.records import RecordSource
    from stat_pl.tokenizer import load_tokenizer

    tokenizer, needed, rows = load_tokenizer(model), args.prompts * (args.warmup_steps + args.steps), []
    for record in RecordSource(args.data).load():
        fits = len(encode_prompt(tokenizer, record.problem + PROMPT_SUFFIX)) <= args.max_prompt_length
        if record.answer.strip() and fits:
            rows.append({"id": record.id, "problem": record.problem, "answer": record.answer})
        if len(rows) == needed:
            break
    if len(rows) < needed:
        sys.exit(f"--data {args.data} has {len(rows)} answered questions that fit, {needed} needed")
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


# ---- arm A: stat-pl ------------------------------------------------------------------------------
def run_stat_pl(args: argparse.Namespace, skip: bool) -> dict:
    """Fit GRPOModule (engine vllm) + PromptDataModule on the GPU; time the steps after the warm-up."""
    import functools

    import lightning as L
    import torch

    from stat_pl.data.prompt_datamodule import PromptDataModule
    from stat_pl.engines.vllm import VLLMSettings
    from stat_pl.models import LoRAConfig, StudentConfig
    from stat_pl.modules.grpo import GRPOModule
    from stat_pl.records import RecordSource

    class StepWindow(L.Callback):
        """Clock, generated tokens and rewards of the rollout batches after the warm-up."""

        def __init__(self) -> None:
            self.started: float | None = None
            self.ended = 0.0
            self.lengths: list[int] = []
            self.rewards: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self.started is None:
                if trainer.global_step == args.warmup_steps:
                    self.started = cuda_clock()
                return
            rollouts = outputs["rollouts"]
            self.lengths += [len(c.token_ids) for group in rollouts.completions for c in group]
            self.rewards += rollouts.rewards.flatten().tolist()
            self.ended = cuda_clock()

    L.seed_everything(0, verbose=False)
    window = StepWindow()
    with tempfile.TemporaryDirectory() as out:
        data = PromptDataModule(
            args.model,
            train=[RecordSource(args.questions)],
            max_prompt_length=args.max_prompt_length,
            prompt_suffix=PROMPT_SUFFIX,
            batch_size=args.prompts,
            sampling="permutation",
            seed=0,
        )
        module = GRPOModule(
            StudentConfig(args.model, quantization="none", compute_dtype="bfloat16", lora=LoRAConfig()),
            num_generations=args.generations,
            max_new_tokens=args.max_new_tokens,
            temperature=1.0,
            loss_aggregation="token_mean",
            epsilon=EPSILON,
            beta=0.0,
            num_iterations=1,
            micro_batch_groups=None,  # the whole batch in one forward/backward, as TRL's arm
            skip_zero_advantage_groups=skip,
            max_grad_norm=MAX_GRAD_NORM,
            optimizer=functools.partial(torch.optim.AdamW, lr=LEARNING_RATE, weight_decay=0.0),
            engine="vllm",
            vllm=VLLMSettings(gpu_memory_utilization=args.gpu_memory_utilization, enable_sleep_mode=args.vllm_sleep),
            adapter_dir=out,
            seed=0,
        )
        trainer = L.Trainer(
            accelerator="gpu",
            devices=1,
            precision="bf16-mixed",
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
        "seconds_per_step": (window.ended - window.started) / args.steps,
        **rollout_stats(window.lengths, window.rewards, args),
        "lora_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
    }


def rollout_stats(lengths: list[int], rewards: list[float], args: argparse.Namespace) -> dict:
    """Generated tokens per step, the mean reward, and the share of groups whose rewards are all equal."""
    groups = [rewards[g : g + args.generations] for g in range(0, len(rewards), args.generations)]
    return {
        "generated_tokens": sum(lengths) / args.steps,
        "reward": statistics.fmean(rewards),
        "zero_advantage_groups": sum(min(g) == max(g) for g in groups) / len(groups),
    }


# ---- arm B: TRL ----------------------------------------------------------------------------------
def run_trl(args: argparse.Namespace) -> dict:
    """Train with TRL's GRPOTrainer and colocated vLLM on the GPU; time the steps after the warm-up."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from stat_pl.engines.base import Completion
    from stat_pl.records import RecordSource
    from stat_pl.rewards import CorrectnessReward
    from stat_pl.tokenizer import load_tokenizer

    tokenizer, correctness = load_tokenizer(args.model), CorrectnessReward()
    calls: list[tuple[list[int], list[float]]] = []  # per rollout batch: completion lengths, rewards

    def correct(prompts, completions, completion_ids, answer, **kwargs) -> list[float]:
        """stat-pl's CorrectnessReward behind TRL's reward-function signature."""
        done = [
            Completion(c[-1]["content"], len(ids), "stop" if ids and ids[-1] == tokenizer.eos_token_id else "length")
            for c, ids in zip(completions, completion_ids, strict=True)
        ]
        scores = correctness.score(done, answer)
        calls.append(([len(ids) for ids in completion_ids], scores))
        return scores

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.started = self.ended = 0.0

        def on_step_end(self, train_args, state, control, **kwargs) -> None:
            if state.global_step == args.warmup_steps:
                self.started = cuda_clock()
            elif state.global_step == args.warmup_steps + args.steps:
                self.ended = cuda_clock()

    questions = RecordSource(args.questions).load()
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": q.problem + PROMPT_SUFFIX}], "answer": q.answer} for q in questions]
    )
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out,
            bf16=True,
            model_init_kwargs={"dtype": "bfloat16"},
            gradient_checkpointing=False,
            per_device_train_batch_size=args.prompts * args.generations,
            gradient_accumulation_steps=1,
            num_generations=args.generations,
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
            optim="adamw_torch",
            max_grad_norm=MAX_GRAD_NORM,
            use_vllm=True,
            vllm_mode="colocate",
            vllm_gpu_memory_utilization=args.gpu_memory_utilization,
            vllm_enable_sleep_mode=args.vllm_sleep,
            vllm_max_model_length=args.max_prompt_length + args.max_new_tokens,
            vllm_importance_sampling_correction=False,
            max_steps=args.warmup_steps + args.steps,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=0,
        )
        trainer = GRPOTrainer(
            model=args.model,
            reward_funcs=[correct],
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_lora(),
            callbacks=[clock],
        )
        trainer.train()
    timed = calls[args.warmup_steps :]
    return {
        "seconds_per_step": (clock.ended - clock.started) / args.steps,
        **rollout_stats([n for lengths, _ in timed for n in lengths], [r for _, rs in timed for r in rs], args),
        "loss_type": trainer.loss_type,
        "lora_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    }


# ---- the parent: interleave the arms, print the table --------------------------------------------
def worker(args: argparse.Namespace) -> None:
    """Run one arm in this process and write its figures, torch's peak allocation included, to ``args.result``."""
    import torch

    row = run_trl(args) if args.worker == "trl" else run_stat_pl(args, ARMS[args.worker][1])
    row["allocated_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    Path(args.result).write_text(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL, help="Hub name, local folder or offline:smollm2-135m-instruct")
    parser.add_argument("--data", default=str(MATH_TRAIN), help="records JSONL with problems and gold answers")
    parser.add_argument("--prompts", type=int, default=8, help="questions per rollout batch")
    parser.add_argument("--generations", type=int, default=8, help="completions per question")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="completion budget in tokens")
    parser.add_argument("--max-prompt-length", type=int, default=256, help="longer questions are left out")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps (rollout batches)")
    parser.add_argument("--warmup-steps", type=int, default=1, help="untimed steps first (vLLM starts in them)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3, help="vLLM's share of the GPU, both")
    parser.add_argument("--vllm-sleep", action="store_true", help="vLLM sleeps between rollout batches, both arms")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of every arm")
    parser.add_argument("--worker", choices=list(ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--questions", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    require_cuda()
    if args.worker:
        worker(args)
        return
    if not Path(args.data).is_file():
        sys.exit(f"--data {args.data} is absent; point it at a records JSONL (the MATH copy is ../shared/data)")
    if args.steps < 1:
        sys.exit("--steps must be at least 1")
    rows = []
    with tempfile.TemporaryDirectory() as shared:
        model = bf16_model(args.model, Path(shared) / "model")
        question_rows(args, model, Path(shared) / "questions.jsonl")
        options = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in WORKER_ARGS]
        options += [f"--model={model}", f"--questions={Path(shared) / 'questions.jsonl'}"]
        options += [f"--gpu-memory-utilization={args.gpu_memory_utilization}"]
        options += ["--vllm-sleep"] if args.vllm_sleep else []
        for round_index in range(args.rounds):
            for arm in list(ARMS) if round_index % 2 == 0 else list(ARMS)[::-1]:
                rows.append({"round": round_index + 1, **run_worker(__file__, arm, options)})
                print(f"round {round_index + 1} {arm}: {rows[-1]['seconds_per_step']:.2f} s/step", file=sys.stderr)
    report(rows, args)


def report(rows: list[dict], args: argparse.Namespace) -> None:
    """The table and the verdict on the target (the skipping-off arm against TRL)."""
    print(
        f"\nGRPO on one GPU with colocated vLLM, {args.model} (bf16) + LoRA r16, {args.prompts} MATH prompts x "
        f"{args.generations} completions, <= {args.max_new_tokens} new tokens, T = 1.0, beta 0, token-mean loss, one "
        f"optimizer step per rollout batch, vLLM at {args.gpu_memory_utilization} of the GPU, sleep "
        f"{'on' if args.vllm_sleep else 'off'}, {args.warmup_steps} warm-up + {args.steps} timed steps, "
        f"{args.rounds} round(s)"
    )
    print(f"GPU: {nvidia_smi('name,memory.total,driver_version')}\n")
    print(
        "| round | arm | s/step | generated tokens/step | reward | zero-adv. groups | peak GPU MiB (device) | "
        "peak allocated MiB (training process) | GPU MiB before |"
    )
    print("|---" * 9 + "|")
    for r in rows:
        print(
            f"| {r['round']} | {ARMS[r['arm']][0]} | {r['seconds_per_step']:.2f} | {r['generated_tokens']:.0f} | "
            f"{r['reward']:.3f} | {100 * r['zero_advantage_groups']:.0f}% | {r['device_peak_mib']:.0f} | "
            f"{r['allocated_peak_mib']:.0f} | {r['idle_mib']:.0f} |"
        )

    def of(arm: str) -> list[dict]:
        return [r for r in rows if r["arm"] == arm]

    trl = of("trl")
    print(f"\nTRL loss_type={trl[0]['loss_type']}")
    for arm in ("stat-pl", "stat-pl-skip"):
        step = paired_ratio(of(arm), trl, "seconds_per_step")
        memory = max(r["device_peak_mib"] for r in of(arm)) / max(r["device_peak_mib"] for r in trl)
        line = f"{ARMS[arm][0]} vs TRL: {step:.2f}x s/step, {memory:.2f}x peak GPU memory"
        if arm == "stat-pl":
            met = step <= TARGET_STEP_RATIO and memory <= 1.0
            verdict = "meets" if met else "MISSES"
            line += f": {verdict} the target (<= {TARGET_STEP_RATIO}x s/step at <= TRL's peak memory)"
        print(line)


if __name__ == "__main__":
    main()
