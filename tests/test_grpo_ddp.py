"""GRPO under DDP for real (2 gloo CPU processes): the step's gradient is the single-process gradient of all groups,
and a rank that skips every group (all its advantages are 0) does not hang the other."""

import torch
import yaml
from peft import set_peft_model_state_dict
from test_grpo_cli import grpo_config
from test_sft_cli import run_cli

from stat_pl.engines.base import Completion
from stat_pl.models import LoRAConfig, load_causal_lm
from stat_pl.modules.grpo_forward import LogprobForward, micro_batch_loss
from stat_pl.modules.grpo_loss import PolicyLoss
from stat_pl.modules.rollouts import Rollouts
from stat_pl.padding import right_pad
from stat_pl.tokenizer import load_tokenizer


def test_two_ranks_sum_to_the_single_process_gradient_with_uneven_skipping(tmp_path, tiny_model_dir):
    config_path = grpo_config(tmp_path, tiny_model_dir, devices=2, strategy="ddp", max_steps=2)
    config = yaml.safe_load(config_path.read_text())
    settings = config["model"]["init_args"]
    settings["student"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    settings.update(
        {
            "max_grad_norm": None,
            "rewards": [{"class_path": "grpo_helpers.QuietOnRankOne"}],
        }
    )
    config["trainer"]["callbacks"] = [
        {"class_path": "grpo_helpers.FirstStepRecorder", "init_args": {"path": str(tmp_path / "step.pt")}}
    ]
    config_path.write_text(yaml.safe_dump(config))
    out = run_cli("fit", "--config", str(config_path))
    assert out.returncode == 0, out.stderr[-3000:]  # rank 1 skipped every group of both steps and nothing hung

    ranks = [torch.load(tmp_path / f"step.rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert bool(ranks[0]["advantages"].ne(0).any()) and not bool(ranks[1]["advantages"].ne(0).any())
    for name, grad in ranks[0]["grads"].items():  # every rank steps with the same summed gradient
        torch.testing.assert_close(ranks[1]["grads"][name], grad, rtol=0, atol=0)

    model = load_causal_lm(str(tiny_model_dir), quantization="none", lora=LoRAConfig(r=4, alpha=8, dropout=0.0))
    set_peft_model_state_dict(model, torch.load(tmp_path / "step.initial.pt", weights_only=False))
    rollouts = [
        Rollouts(
            r["prompt_ids"],
            [[Completion("", len(ids), "stop", tuple(ids)) for ids in group] for group in r["ids"]],
            torch.zeros(4),
            [""] * 4,
            torch.zeros_like(r["advantages"]),
            {},
            r["advantages"],
        )
        for r in ranks
    ]
    forward = LogprobForward(settings["temperature"])
    loss_of = PolicyLoss(settings["max_new_tokens"], settings["loss_aggregation"], settings["epsilon"])
    normaliser = sum(
        loss_of.normaliser_share(right_pad(r.completion_ids([g]), 0)[1]) for r in rollouts for g in range(4)
    )
    pad = load_tokenizer(str(tiny_model_dir)).pad_token_id
    for r in rollouts:  # one process, every group of both ranks (no skipping), one backward each
        loss, _ = micro_batch_loss(model, r, list(range(4)), normaliser, None, {}, pad, forward, loss_of)
        loss.backward()
    single = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any(float(g.abs().sum()) > 0 for g in single.values())
    for name, grad in single.items():
        torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=1e-4, atol=1e-7, msg=name)
