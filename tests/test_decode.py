"""stat-pl's decoding loop against transformers' ``generate``; its sampler against the distribution it draws."""

import pytest
import torch

from stat_pl.engines.base import SamplingParams
from stat_pl.engines.decode import DRAW_BLOCK, decode, draw_token, sampler
from stat_pl.engines.hf import HFEngine
from stat_pl.models import load_causal_lm
from stat_pl.padding import left_pad
from stat_pl.tokenizer import load_tokenizer

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]  # different lengths: left padding matters


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_causal_lm(str(tiny_model_dir), quantization="none").eval()


def test_greedy_decoding_picks_what_generate_picks_under_left_padding(model):
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    ours = decode(model, ids, mask, 10, sampler(0.0, 1.0), stop_token_ids=[], pad_token_id=0)
    with torch.no_grad():
        theirs = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None
        )[:, ids.shape[1] :]
    assert torch.equal(ours, theirs)


def test_a_row_stops_at_a_stop_token_and_is_padded_after_it(model):
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    free = decode(model, ids, mask, 8, sampler(0.0, 1.0), stop_token_ids=[], pad_token_id=0)
    stop_token = int(free[0, 2])
    stopped = decode(model, ids, mask, 8, sampler(0.0, 1.0), stop_token_ids=[stop_token], pad_token_id=0)
    for row, out in zip(free, stopped, strict=True):
        hits = (row == stop_token).nonzero()
        end = int(hits[0]) + 1 if len(hits) else len(row)
        assert torch.equal(out[:end], row[:end]) and bool((out[end:] == 0).all())


def test_samples_of_a_prompt_share_its_prefill_and_still_differ(model):
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    torch.manual_seed(0)
    out = decode(model, ids, mask, 6, sampler(1.0, 1.0), stop_token_ids=[], pad_token_id=0, samples=4)
    assert out.shape == (12, 6)
    assert len({tuple(r) for r in out[4:8].tolist()}) > 1  # the second prompt's four samples


def test_the_model_generation_config_eos_tokens_also_stop(tiny_model_dir, model):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    engine = HFEngine(model, tokenizer, progress=False)
    free = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=6))[0][0]
    assert free.num_tokens == 6  # the tokenizer's EOS alone does not stop this prompt
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, free.token_ids[0]]
    try:
        stopped = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=6))[0][0]
    finally:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    assert stopped.token_ids[0] == free.token_ids[0] and stopped.num_tokens == 1 and stopped.finish_reason == "stop"


def test_the_sampler_draws_from_softmax_at_the_temperature():
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, float("-inf")])
    draws = sampler(0.5, 1.0)(logits.expand(200_000, -1))
    freq = torch.bincount(draws, minlength=5).double() / len(draws)
    torch.testing.assert_close(freq, torch.softmax(logits.double() / 0.5, -1), atol=4e-3, rtol=0)
    assert freq[4] == 0  # a zero-probability token is never drawn


def test_top_p_keeps_the_fewest_most_likely_tokens_that_reach_p():
    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    draws = sampler(1.0, 0.75)(probs.log().expand(100_000, -1))
    freq = torch.bincount(draws, minlength=4).double() / len(draws)
    torch.testing.assert_close(freq, torch.tensor([0.625, 0.375, 0.0, 0.0], dtype=torch.float64), atol=5e-3, rtol=0)
    # a shuffled vocabulary: the nucleus is found by probability, not by position
    perm = torch.tensor([2, 0, 3, 1])
    shuffled = sampler(1.0, 0.75)(probs[perm].log().expand(100_000, -1))
    assert set(shuffled.unique().tolist()) == {1, 3}  # where 0.5 and 0.3 now sit


def test_draw_token_across_blocks_follows_the_probabilities_and_never_draws_a_zero():
    torch.manual_seed(0)
    vocab = 3 * DRAW_BLOCK + 7  # not a whole number of blocks; the second block has no mass at all
    probs = torch.zeros(vocab)
    mass = {0: 0.1, DRAW_BLOCK - 1: 0.2, 2 * DRAW_BLOCK: 0.3, 2 * DRAW_BLOCK + 5: 1e-3, vocab - 1: 0.399}
    for index, p in mass.items():
        probs[index] = p
    draws = draw_token(probs.expand(400_000, -1).contiguous())
    freq = torch.bincount(draws, minlength=vocab).double() / len(draws)
    expected = probs.double() / probs.double().sum()
    torch.testing.assert_close(freq, expected, atol=3e-3, rtol=0)
    assert set(draws.unique().tolist()) == set(mass)  # every token drawn has probability > 0


def test_draw_token_takes_unnormalised_mass_and_one_sure_token():
    torch.manual_seed(0)
    probs = torch.zeros(4, 2 * DRAW_BLOCK)
    probs[:, DRAW_BLOCK] = 5.0  # all the mass on the first token of the second block
    assert draw_token(probs).tolist() == [DRAW_BLOCK] * 4
