"""PackedFrozenLinear computes nn.Linear's output and input gradient; a LoRA model gets the same adapter gradients."""

import pytest
import torch

from stat_pl.frozen_linear import PackedFrozenLinear, pack_for_training, packed_is_faster, use_packed_frozen_linear
from stat_pl.models import LoRAConfig, load_causal_lm


def frozen_linear(bias: bool) -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(24, 40, bias=bias).requires_grad_(False)


def test_this_build_has_the_kernel():
    """Not a skip: the CPU torch wheel ships oneDNN, so packing must work here (it raises where it is missing)."""
    pack_for_training(torch.randn(64, 32))


def test_the_probe_declines_weights_the_kernel_does_not_serve():
    assert not packed_is_faster(torch.randn(64, 32, dtype=torch.bfloat16))  # float32 only


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 7, 24), (5, 24), (300, 24)])
def test_output_and_input_gradient_match_nn_linear(bias, shape):
    layer = frozen_linear(bias)
    x = torch.randn(*shape, requires_grad=True)
    expected = layer(x)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    assert use_packed_frozen_linear(layer) == 1 and isinstance(layer, PackedFrozenLinear)
    out = layer(x)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, expected_grad)


def test_a_bias_that_trains_gets_its_gradient():
    layer = frozen_linear(bias=True)
    layer.bias.requires_grad_(True)
    use_packed_frozen_linear(layer)
    x = torch.randn(6, 24)
    layer(x).sum().backward()
    torch.testing.assert_close(layer.bias.grad, torch.full((40,), 6.0))


def test_it_follows_a_weight_written_in_place():
    layer = frozen_linear(bias=False)
    use_packed_frozen_linear(layer)
    x = torch.randn(4, 24)
    layer(x)  # packs the first weight
    with torch.no_grad():
        layer.weight.mul_(2.0)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight))


def test_trainable_layers_and_autocast_keep_nn_linear():
    trainable = torch.nn.Linear(24, 40)
    assert use_packed_frozen_linear(trainable) == 0 and type(trainable) is torch.nn.Linear
    layer = frozen_linear(bias=False)
    use_packed_frozen_linear(layer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(4, 24)).dtype == torch.bfloat16  # F.linear under autocast, not the float32 kernel


def test_a_lora_model_gets_the_same_adapter_gradients(tiny_model_dir):
    model = load_causal_lm(str(tiny_model_dir), quantization="none", lora=LoRAConfig(r=4, alpha=8, dropout=0.0))
    ids = torch.randint(5, 100, (3, 20))

    def adapter_grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    with torch.no_grad():  # a non-zero B, so every adapter weight gets a gradient
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    expected = adapter_grads()
    switched = use_packed_frozen_linear(model)
    assert switched == sum(type(m) is PackedFrozenLinear for m in model.modules()) > 0
    got = adapter_grads()
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_float32_cpu_training_switches_the_frozen_layers(tiny_model_dir, monkeypatch):
    from stat_pl.modules import adapter_module
    from stat_pl.modules.sft import SFTModule

    monkeypatch.setattr(adapter_module, "packed_is_faster", lambda weight: True)  # whatever this CPU measures
    module = SFTModule(str(tiny_model_dir), quantization="none", compute_dtype="float32")
    module.configure_model()
    frozen = [m for m in module.model.modules() if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad]
    assert frozen and all(type(m) is PackedFrozenLinear for m in frozen)
