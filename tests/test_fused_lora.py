"""FusedLoRALinear computes PEFT's LoRA layer: same output, same gradients, the same dropout mask for a seed."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from stat_pl.frozen_linear import use_packed_frozen_linear
from stat_pl.fused_lora import FusedLoRALinear, use_fused_lora
from stat_pl.lora_dropout import use_lora_dropout
from stat_pl.models import LoRAConfig, load_causal_lm


def lora_net(dropout: float, bias: bool) -> torch.nn.Module:
    """Two frozen projections with a LoRA adapter each (B non-zero, so every adapter weight gets a gradient)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(24, 40, bias=bias), torch.nn.Tanh(), torch.nn.Linear(40, 16, bias=bias))
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["0", "2"])
    model = use_lora_dropout(get_peft_model(net, config))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    return model.train()


def forward_backward(model: torch.nn.Module, shape: tuple[int, ...], input_grad: bool = True):
    """Output, input gradient and adapter gradients of ``(model(x) * w).sum()`` for a seeded ``x`` and mask."""
    torch.manual_seed(1)
    x = torch.randn(*shape, requires_grad=input_grad)
    weights = torch.randn(*shape[:-1], 16)
    model.zero_grad()
    torch.manual_seed(2)  # the dropout masks
    out = model(x)
    (out * weights).sum().backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same(got, expected) -> None:
    """Equal up to float32 rounding (relative to each tensor's scale: a dropped sum can cancel to near 0)."""
    for a, b in zip(got[:2], expected[:2], strict=True):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))
    assert got[2].keys() == expected[2].keys()
    for name, grad in expected[2].items():
        torch.testing.assert_close(got[2][name], grad, rtol=1e-5, atol=1e-6 * float(grad.abs().max()), msg=name)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 7, 24), (50, 24)])
def test_it_matches_peft_output_and_gradients(packed, dropout, bias, shape):
    model = lora_net(dropout, bias)
    expected = forward_backward(model, shape)
    fused = copy.deepcopy(model)
    if packed:
        use_packed_frozen_linear(fused)
    assert use_fused_lora(fused) == 2
    assert all(type(m) is FusedLoRALinear for m in fused.modules() if hasattr(m, "lora_A"))
    assert_same(forward_backward(fused, shape), expected)


def test_an_input_without_gradient_gives_the_adapter_its_gradients():
    """The first adapted layer's input (from frozen embeddings) needs no gradient: none is computed."""
    model = lora_net(0.3, bias=False)
    expected = forward_backward(model, (5, 24), input_grad=False)
    fused = copy.deepcopy(model)
    use_fused_lora(fused)
    got = forward_backward(fused, (5, 24), input_grad=False)
    assert got[1] is None
    assert_same(got, expected)


def _fused_copy(model: torch.nn.Module) -> torch.nn.Module:
    fused = copy.deepcopy(model)
    use_fused_lora(fused)
    return fused


def test_it_draws_the_mask_peft_draws():
    """Seeded alike, PEFT's layer (with LoRADropout) and the fused one drop the same elements."""
    model = lora_net(0.5, bias=True)
    fused = _fused_copy(model)
    x = torch.randn(8, 24)

    def output(net: torch.nn.Module, seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return net(x).detach()

    torch.testing.assert_close(output(fused, 4), output(model, 4), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(output(fused, 4), output(fused, 5))  # the mask is drawn, not skipped


def test_other_cases_take_peft_forward():
    """Adapter disabled, eval mode, autocast: the same results as PEFT's own forward."""
    model = lora_net(0.3, bias=True)
    fused = _fused_copy(model)
    x = torch.randn(6, 24)
    with model.disable_adapter(), fused.disable_adapter():
        torch.testing.assert_close(fused(x), model(x))
    model.eval(), fused.eval()
    torch.testing.assert_close(fused(x), model(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused(x).dtype == torch.bfloat16  # PEFT's path under autocast, not the float32 function


def test_a_lora_llama_gets_the_same_adapter_gradients(tiny_model_dir):
    model = load_causal_lm(str(tiny_model_dir), quantization="none", lora=LoRAConfig(r=4, alpha=8, dropout=0.1))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    model.train()
    ids = torch.randint(5, 100, (3, 20))

    def adapter_grads(net: torch.nn.Module) -> dict[str, torch.Tensor]:
        net.zero_grad()
        torch.manual_seed(7)
        net(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}

    expected = adapter_grads(model)
    fused = copy.deepcopy(model)
    use_packed_frozen_linear(fused)
    assert use_fused_lora(fused) > 0
    got = adapter_grads(fused)
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-5 * float(grad.abs().max()), msg=name)


def test_float32_cpu_training_fuses_the_lora_layers(tiny_model_dir):
    from stat_pl.modules.sft import SFTModule

    module = SFTModule(str(tiny_model_dir), quantization="none", compute_dtype="float32")
    module.configure_model()
    adapted = [m for m in module.model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    assert adapted and all(type(m) is FusedLoRALinear for m in adapted)
