"""SFT formatting and the SkillWeightedSampler: masks, skill shares, seeds, ranks, weight replacement."""

from collections import Counter

import pytest

from stat_pl.data.formatting import IGNORE_INDEX, collate, encode_example, encode_prompt
from stat_pl.data.sampler import LengthGroupedBatchSampler, SkillWeightedSampler
from stat_pl.data.sft_datamodule import SFTDataModule
from stat_pl.data.skillworld import SkillWorldSource
from stat_pl.models import load_tokenizer
from stat_pl.profile import MissingSkillProfile


def test_formatting_masks_exactly_the_prompt_tokens(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    example = encode_example(tokenizer, "what is 2+3", "Step 1 [addition]: 2 + 3 = 5", max_length=512)
    prompt = encode_prompt(tokenizer, "what is 2+3")
    assert example["input_ids"][: len(prompt)] == prompt
    assert example["labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    answer = example["labels"][len(prompt) :]
    assert IGNORE_INDEX not in answer and answer[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(answer[:-1]) == "Step 1 [addition]: 2 + 3 = 5"


def test_collate_pads_right_and_keeps_padding_out_of_the_loss():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "index": 0},
                     {"input_ids": [5], "labels": [5], "index": 1}], pad_token_id=0, pad_to_multiple_of=4)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [5, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [5, -100, -100, -100]]


def test_same_seed_same_order_other_seed_other_order():
    draw = lambda seed: SkillWeightedSampler([1.0] * 100, num_samples=50, seed=seed).epoch_indices()  # noqa: E731
    assert draw(3) == draw(3) and draw(3) != draw(4)


def test_epochs_differ_and_replay():
    sampler = SkillWeightedSampler([1.0] * 100, num_samples=50, seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_two_ranks_draw_disjoint_shares_of_the_single_process_draw():
    weights = [float(i % 7 + 1) for i in range(200)]
    single = SkillWeightedSampler(weights, num_samples=120, seed=1).epoch_indices()
    ranks = [SkillWeightedSampler(weights, num_samples=60, seed=1, num_replicas=2, rank=r).epoch_indices()
             for r in range(2)]
    interleaved = [i for pair in zip(*ranks, strict=True) for i in pair]
    assert interleaved == single  # together exactly one draw; each position goes to one rank only
    assert ranks[0] != ranks[1]


def test_set_weights_changes_the_next_epoch_only():
    sampler = SkillWeightedSampler([1.0] * 10, num_samples=1000, seed=0)
    iterator = iter(sampler)
    sampler.set_weights([0.0] * 9 + [1.0])
    assert len(set(iterator)) > 1  # the running epoch keeps its draw
    sampler.set_epoch(1)
    assert set(sampler) == {9}


def test_length_grouping_batches_similar_lengths_and_skips_on_resume():
    lengths = [i % 50 + 1 for i in range(400)]
    sampler = SkillWeightedSampler([1.0] * 400, num_samples=400, seed=0)
    grouped = LengthGroupedBatchSampler(sampler, lengths, batch_size=8, group_batches=50)
    batches = list(grouped)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 5 and sorted(i for b in batches for i in b) == sorted(sampler.epoch_indices())
    grouped.resume_at(epoch=0, batches_done=3)
    assert list(grouped) == batches[3:] and list(grouped) == batches


@pytest.fixture(scope="module")
def skillworld_datamodule(tiny_model_dir):
    dm = SFTDataModule(str(tiny_model_dir), train=[SkillWorldSource(n=300, levels=(1,), max_skills=1)],
                       samples_per_epoch=20_000, batch_size=4, weight_floor=0.0)
    dm.setup("fit")
    return dm


def skill_shares(dm, indices):
    counts = Counter(dm.records[dm.train_examples[i]["record"]].skills[0] for i in indices)
    return {s: c / len(indices) for s, c in counts.items()}


def test_sampled_skill_shares_follow_the_profile(skillworld_datamodule):
    dm = skillworld_datamodule
    profile = MissingSkillProfile(histogram={"percentages": 6.0, "gcd_lcm": 3.0, "powers": 1.0})
    dm.set_profile(profile)
    loader = dm.train_dataloader()
    indices = [i for batch in loader.batch_sampler for i in batch]
    shares = skill_shares(dm, indices)
    assert set(shares) == {"percentages", "gcd_lcm", "powers"}
    for skill, share in profile.shares().items():
        assert shares[skill] == pytest.approx(share, abs=0.02)  # 20k draws: 3 sigma < 0.011


def test_mix_ratios_set_each_sources_share(tiny_model_dir):
    dm = SFTDataModule(str(tiny_model_dir), train=[SkillWorldSource(n=100, levels=(1,), max_skills=1),
                                                   SkillWorldSource(split="validation", n=20, levels=(1,))],
                       mix_ratios=[0.7, 0.3], samples_per_epoch=10_000)
    dm.setup("fit")
    indices = [i for batch in dm.train_dataloader().batch_sampler for i in batch]
    second = sum(dm.records[dm.train_examples[i]["record"]].source == "skillworld/validation" for i in indices)
    assert second / len(indices) == pytest.approx(0.3, abs=0.02)


def test_examples_whose_prompt_fills_max_length_are_skipped_with_a_warning(tiny_model_dir):
    from stat_pl.records import ProblemRecord

    long = ProblemRecord("long", "compute the sum " * 60, "1", ("Answer: \\boxed{1}",))
    short = ProblemRecord("short", "what is 2+3", "5", ("Answer: \\boxed{5}",))

    class Rows(SkillWorldSource):
        def load(self):
            return [long, short]

    dm = SFTDataModule(str(tiny_model_dir), train=[Rows()], max_length=48)
    with pytest.warns(UserWarning, match=r"skipped 1 example.*'long'"):
        dm.setup("fit")
    assert [dm.records[e["record"]].id for e in dm.train_examples] == ["short"]
    assert dm.example_weights() == [0.5]  # the skipped record's share is dropped; the sampler renormalises
