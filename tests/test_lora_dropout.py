"""LoRADropout has nn.Dropout's distribution (drop rate, scale, independence, gradient) and replaces PEFT's."""

import pytest
import torch

from stat_pl.lora_dropout import LoRADropout, dropped_positions, geometric_gaps
from stat_pl.models import LoRAConfig, load_causal_lm


def test_it_drops_each_element_with_probability_p_and_scales_the_rest():
    torch.manual_seed(0)
    dropout = LoRADropout(0.05).train()
    out = dropout(torch.ones(1000, 999))
    dropped = (out == 0).double().mean().item()
    assert dropped == pytest.approx(0.05, abs=1.5e-3)
    assert torch.equal(out[out != 0].unique(), torch.tensor([1 / 0.95]))


def test_neighbours_are_dropped_independently():
    torch.manual_seed(1)
    out = LoRADropout(0.5).train()(torch.ones(2_000_000)).view(-1, 2) == 0  # adjacent pairs
    both = (out[:, 0] & out[:, 1]).double().mean().item()
    assert both == pytest.approx(0.25, abs=2e-3)


def test_gaps_are_geometric_and_positions_cover_the_whole_tensor():
    torch.manual_seed(3)
    gaps = geometric_gaps(1_000_000, 0.2)
    for k in (1, 2, 5):
        assert (gaps == k).double().mean().item() == pytest.approx(0.8 ** (k - 1) * 0.2, abs=2e-3)
    assert gaps.min().item() >= 1
    positions = dropped_positions(100_000, 0.3)  # increasing, in range, about 30% of them
    assert bool((positions[1:] > positions[:-1]).all()) and 0 <= positions[0] and positions[-1] < 100_000
    assert len(positions) / 100_000 == pytest.approx(0.3, abs=0.01)
    assert torch.equal(dropped_positions(10, 0.999999), torch.arange(10))  # more gaps drawn when the first run out


def test_gradient_is_the_mask_times_the_scale_and_eval_or_p0_is_the_identity():
    torch.manual_seed(2)
    x = torch.randn(64, 32, requires_grad=True)
    out = LoRADropout(0.3).train()(x)
    out.sum().backward()
    torch.testing.assert_close(x.grad, (out != 0).float() / 0.7)
    assert LoRADropout(0.3).eval()(x) is x and LoRADropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        LoRADropout(1.0)


def test_models_with_lora_use_it(tiny_model_dir):
    model = load_causal_lm(str(tiny_model_dir), quantization="none", lora=LoRAConfig(r=4, dropout=0.1))
    dropouts = [m for m in model.modules() if isinstance(m, LoRADropout)]
    assert dropouts and all(d.p == 0.1 for d in dropouts)
    assert not any(
        type(d) is torch.nn.Dropout for m in model.modules() for d in getattr(m, "lora_dropout", {}).values()
    )
