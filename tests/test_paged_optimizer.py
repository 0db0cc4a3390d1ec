"""repage_optimizer_state on a CPU: a no-op for every optimizer (the paging itself is CUDA-only: tests/test_gpu.py)."""

import torch

from stat_pl.paged_optimizer import repage_optimizer_state


def test_an_unpaged_or_host_optimizer_is_left_as_it_is():
    param = torch.nn.Parameter(torch.randn(512, 512))
    optimizer = torch.optim.AdamW([param])
    param.grad = torch.randn_like(param)
    optimizer.step()
    before = {k: v.clone() for k, v in optimizer.state[param].items()}
    assert repage_optimizer_state(optimizer) == 0
    for key, value in optimizer.state[param].items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_a_paged_optimizers_host_state_stays_on_the_host():
    import bitsandbytes as bnb

    param = torch.nn.Parameter(torch.randn(512, 512))
    optimizer = bnb.optim.PagedAdamW([param])
    param.grad = torch.randn_like(param)
    optimizer.step()  # bitsandbytes falls back to unpaged host buffers on a CPU
    state = dict(optimizer.state[param])
    assert repage_optimizer_state(optimizer) == 0
    assert all(optimizer.state[param][k] is v for k, v in state.items())
