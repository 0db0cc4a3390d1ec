"""SmallBatchLinear computes what nn.Linear computes; MergedCopy uses it where the CPU probe says it is faster."""

import pytest
import torch

from stat_pl import models
from stat_pl.engines.decode import decode, sampler
from stat_pl.engines.hf import left_pad
from stat_pl.models import LoRAConfig, MergedCopy, load_causal_lm
from stat_pl.small_batch_linear import SmallBatchLinear, use_small_batch_linear


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(16, 1, 24), (3, 24), (100, 24)])  # decode rows, a plain batch, over MAX_ROWS
def test_it_computes_what_nn_linear_computes(bias, shape):
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 40, bias=bias)
    x = torch.randn(*shape)
    expected = linear(x)
    use_small_batch_linear(linear)
    assert isinstance(linear, SmallBatchLinear)
    out = linear(x)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected)


def test_a_model_decodes_the_same_tokens_with_it(tiny_model_dir):
    model = load_causal_lm(str(tiny_model_dir), quantization="none").eval()
    ids, mask = left_pad([[5, 6, 7, 8], [9, 10]], pad_token_id=0)
    plain = decode(model, ids, mask, 8, sampler(0.0, 1.0), stop_token_ids=[], pad_token_id=0)
    assert use_small_batch_linear(model) > 0
    assert torch.equal(decode(model, ids, mask, 8, sampler(0.0, 1.0), stop_token_ids=[], pad_token_id=0), plain)


@pytest.mark.parametrize("faster", [True, False])
def test_the_merged_copy_switches_only_where_the_probe_says_it_is_faster(tiny_model_dir, monkeypatch, faster):
    monkeypatch.setattr(models, "weight_first_is_faster", lambda weight: faster)
    model = load_causal_lm(str(tiny_model_dir), quantization="none", compute_dtype="float32", lora=LoRAConfig(r=4))
    copy = MergedCopy(model).refresh(model)
    kinds = {type(m) for m in copy.modules() if isinstance(m, torch.nn.Linear)}
    assert kinds == ({SmallBatchLinear} if faster else {torch.nn.Linear})
