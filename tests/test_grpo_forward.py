"""The shared-prompt forward: log-probs and LoRA gradients equal G full rows; the head can run in chunks."""

import pytest
import torch

from stat_pl.models import LoRAConfig, load_causal_lm
from stat_pl.modules.grpo_forward import completion_logprobs


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    torch.manual_seed(0)
    model = load_causal_lm(str(tiny_model_dir), quantization="none", lora=LoRAConfig(r=4, alpha=8, dropout=0.0))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at 0; a trained adapter does not
            torch.nn.init.normal_(p, std=0.2)
    return model


PROMPTS = [[5, 17, 33, 8, 90, 41], [7, 3], [12, 60, 61, 2]]  # different lengths: left padding
COMPLETIONS = [
    [4, 9, 2],
    [30],
    [5, 6, 7, 8, 1],
    [11, 12],
    [44, 45, 46, 47],
    [3],
    [70, 71],
    [80, 81, 82],
    [90],
]  # 3 per prompt, different lengths: right padding


def logprobs_and_grads(model, **options):
    model.zero_grad()
    logp, entropy, mask = completion_logprobs(model, PROMPTS, COMPLETIONS, temperature=0.7, pad_token_id=0, **options)
    weights = torch.linspace(-1, 1, logp.numel()).view_as(logp)
    (logp * mask * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return logp.detach() * mask, entropy * mask, grads


def test_shared_prompt_forward_matches_full_rows(policy):
    full_logp, full_entropy, full_grads = logprobs_and_grads(policy, shared_prompt=False)
    logp, entropy, grads = logprobs_and_grads(policy, shared_prompt=True)
    torch.testing.assert_close(logp, full_logp, atol=1e-4, rtol=0)
    torch.testing.assert_close(entropy, full_entropy, atol=1e-4, rtol=0)
    assert any(float(g.abs().sum()) > 0 for n, g in grads.items() if "layers.0." in n)  # reached the first layer
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], atol=1e-4, rtol=1e-4, msg=name)


def test_chunked_head_gives_the_same_log_probs_and_gradients(policy):
    logp, _, grads = logprobs_and_grads(policy)
    chunked_logp, _, chunked_grads = logprobs_and_grads(policy, chunk_tokens=2)
    torch.testing.assert_close(chunked_logp, logp, atol=1e-6, rtol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_log_probs_are_those_of_a_plain_forward(policy):
    """The first completion, scored by the model's own full-vocabulary logits at the same temperature."""
    row = torch.tensor([PROMPTS[0] + COMPLETIONS[0]])
    with torch.no_grad():
        logits = policy(input_ids=row).logits[0, len(PROMPTS[0]) - 1 : -1]
        expected = torch.log_softmax(logits / 0.7, -1).gather(-1, torch.tensor(COMPLETIONS[0])[:, None])[:, 0]
        logp, _, _ = completion_logprobs(policy, PROMPTS[:1], COMPLETIONS[:3], temperature=0.7, pad_token_id=0)
    torch.testing.assert_close(logp[0, :3], expected, atol=1e-5, rtol=0)


def test_the_head_scores_real_tokens_only(policy):
    """Padding after a short completion never reaches the LM head; its log-prob and entropy are 0."""
    head = policy.get_base_model().get_output_embeddings()
    rows = []
    hook = head.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape[0]))
    try:
        with torch.no_grad():
            logp, entropy, mask = completion_logprobs(policy, PROMPTS, COMPLETIONS, temperature=0.7, pad_token_id=0)
    finally:
        hook.remove()
    assert rows == [sum(len(c) for c in COMPLETIONS)] and mask.numel() > rows[0]
    assert torch.all(logp[mask == 0] == 0) and torch.all(entropy[mask == 0] == 0)
    assert torch.all(logp[mask == 1] < 0)
