"""SmallBatchLinear computes what nn.Linear computes in every form; MergedCopy uses the form the CPU probe picks."""

import pytest
import torch

from stat_pl import models
from stat_pl.engines.decode import decode, sampler
from stat_pl.engines.hf import left_pad
from stat_pl.models import LoRAConfig, MergedCopy, load_causal_lm
from stat_pl.small_batch_linear import SmallBatchLinear, available_forms, fastest_form, use_small_batch_linear

FORMS = available_forms(torch.zeros(4, 4))


def test_this_build_has_the_packed_form():
    """Not a skip: the CPU torch wheel ships oneDNN, so the fastest form here must be among the three."""
    assert FORMS == ["linear", "weight_first", "packed"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(16, 1, 24), (3, 24), (100, 24)])  # decode rows, a plain batch, over MAX_ROWS
def test_it_computes_what_nn_linear_computes(form, bias, shape):
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 40, bias=bias)
    x = torch.randn(*shape)
    expected = linear(x)
    use_small_batch_linear(linear, form)
    assert isinstance(linear, SmallBatchLinear)
    out = linear(x)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected)


def test_the_packed_form_follows_a_weight_written_in_place():
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 40)
    use_small_batch_linear(linear, "packed")
    x = torch.randn(4, 24)
    linear(x)  # packs the first weight
    with torch.no_grad():
        linear.weight.add_(1.0)  # as MergedCopy.refresh writes the merged weight
    torch.testing.assert_close(linear(x), torch.nn.functional.linear(x, linear.weight, linear.bias))


def test_the_probe_picks_a_form_this_build_has():
    assert fastest_form(torch.randn(64, 32), repeats=2) in FORMS


@pytest.mark.parametrize("form", FORMS[1:])
def test_a_model_decodes_the_same_tokens_with_it(tiny_model_dir, form):
    model = load_causal_lm(str(tiny_model_dir), quantization="none").eval()
    ids, mask = left_pad([[5, 6, 7, 8], [9, 10]], pad_token_id=0)
    plain = decode(model, ids, mask, 8, sampler(0.0, 1.0), stop_token_ids=[], pad_token_id=0)
    assert use_small_batch_linear(model, form) > 0
    assert torch.equal(decode(model, ids, mask, 8, sampler(0.0, 1.0), stop_token_ids=[], pad_token_id=0), plain)


@pytest.mark.parametrize("form", FORMS)
def test_the_merged_copy_uses_the_form_the_probe_picks(tiny_model_dir, monkeypatch, form):
    monkeypatch.setattr(models, "fastest_form", lambda weight: form)
    model = load_causal_lm(str(tiny_model_dir), quantization="none", compute_dtype="float32", lora=LoRAConfig(r=4))
    copy = MergedCopy(model).refresh(model)
    linears = [m for m in copy.modules() if isinstance(m, torch.nn.Linear)]
    if form == "linear":
        assert {type(m) for m in linears} == {torch.nn.Linear}
    else:
        assert {(type(m), m.form) for m in linears} == {(SmallBatchLinear, form)}
