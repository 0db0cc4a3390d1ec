"""SFT formatting and the epoch samplers: masks, skill shares, seeds, ranks, weight replacement, permutations."""

from collections import Counter

import pytest

from stat_pl.data.formatting import IGNORE_INDEX, collate, encode_example, encode_prompt
from stat_pl.data.sampler import (
    EpochPermutationSampler,
    LengthGroupedBatchSampler,
    SkillWeightedSampler,
    resolve_sampling,
)
from stat_pl.data.sft_datamodule import SFTDataModule
from stat_pl.data.skillworld import SkillWorldSource
from stat_pl.missing_skill_profile import MissingSkillProfile
from stat_pl.tokenizer import load_tokenizer


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
    batch = collate(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "index": 0}, {"input_ids": [5], "labels": [5], "index": 1}],
        pad_token_id=0,
        pad_to_multiple_of=4,
    )
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
    ranks = [
        SkillWeightedSampler(weights, num_samples=60, seed=1, num_replicas=2, rank=r).epoch_indices() for r in range(2)
    ]
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
    dm = SFTDataModule(
        str(tiny_model_dir),
        train=[SkillWorldSource(n=300, levels=(1,), max_skills=1)],
        samples_per_epoch=20_000,
        batch_size=4,
        weight_floor=0.0,
    )
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
    dm = SFTDataModule(
        str(tiny_model_dir),
        train=[
            SkillWorldSource(n=100, levels=(1,), max_skills=1),
            SkillWorldSource(split="validation", n=20, levels=(1,)),
        ],
        mix_ratios=[0.7, 0.3],
        samples_per_epoch=10_000,
    )
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


# ---- epochs without replacement (the paper's training on a built set) ----------------------------------


def test_permutation_sees_every_row_exactly_once_per_epoch_in_a_new_seeded_order():
    sampler = EpochPermutationSampler(101, seed=5)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
        assert sorted(epochs[-1]) == list(range(101)) and len(sampler) == 101
    assert epochs[0] != epochs[1] != epochs[2]
    again = EpochPermutationSampler(101, seed=5)
    again.set_epoch(1)
    assert list(again) == epochs[1]  # the same seed replays an epoch
    assert list(EpochPermutationSampler(101, seed=6)) != epochs[0]


def test_permutation_resumes_mid_epoch_from_its_state_with_the_same_batches():
    lengths = [i % 30 + 1 for i in range(90)]
    sampler = EpochPermutationSampler(90, seed=2)
    grouped = LengthGroupedBatchSampler(sampler, lengths, batch_size=4, group_batches=5)
    grouped.resume_at(epoch=1, batches_done=0)
    epoch1 = list(grouped)
    assert sorted(i for b in epoch1 for i in b) == list(range(90))

    restored = EpochPermutationSampler(1, seed=0)
    restored.load_state_dict(sampler.state_dict())
    resumed = LengthGroupedBatchSampler(restored, lengths, batch_size=4, group_batches=5)
    resumed.resume_at(epoch=1, batches_done=7)
    assert list(resumed) == epoch1[7:]
    with pytest.raises(ValueError, match="checkpoint's sampler is 'weighted'.*data.sampling: weighted"):
        restored.load_state_dict(SkillWeightedSampler([1.0] * 3, num_samples=3).state_dict())


@pytest.mark.parametrize("rows", [100, 101])
def test_two_rank_permutation_shards_are_disjoint_and_cover_every_row(rows):
    ranks = [EpochPermutationSampler(rows, seed=3, num_replicas=2, rank=r) for r in range(2)]
    for epoch in range(2):
        for r in ranks:
            r.set_epoch(epoch)
        shards = [list(r) for r in ranks]
        assert len(shards[0]) == len(shards[1]) == len(ranks[0]) == -(-rows // 2)  # equal steps on every rank
        assert set(shards[0]) | set(shards[1]) == set(range(rows))
        overlap = Counter(shards[0] + shards[1])
        assert sum(c - 1 for c in overlap.values()) == rows % 2  # disjoint; an odd pool pads with one row
        single = EpochPermutationSampler(rows, seed=3)
        single.set_epoch(epoch)
        assert [i for pair in zip(*shards, strict=True) for i in pair][:rows] == list(single)  # one permutation


def test_permutation_follows_a_grown_pool_but_refuses_weights():
    sampler = EpochPermutationSampler(10)
    sampler.set_weights([1.0] * 12, resize=True)
    assert sorted(sampler) == list(range(12))
    with pytest.raises(ValueError, match="takes no sampling weights; set data.sampling: weighted"):
        sampler.set_weights([1.0] * 12)


def test_a_built_set_defaults_to_permutation_and_the_weighted_cases_to_weighted():
    plain = dict(initial_profile=False, mix_ratios=False, samples_per_epoch=False, online_source=False)
    assert resolve_sampling("auto", **plain) == "permutation"  # the paper: 3 epochs over the built set
    for asks in ["initial_profile", "mix_ratios", "samples_per_epoch", "online_source"]:
        assert resolve_sampling("auto", **{**plain, asks: True}) == "weighted"
    assert resolve_sampling("weighted", **plain) == "weighted"
    with pytest.raises(ValueError, match="cannot use initial_profile; drop them or set data.sampling: weighted"):
        resolve_sampling("permutation", **{**plain, "initial_profile": True})
    with pytest.raises(ValueError, match="one of 'auto', 'permutation', 'weighted', 'stratified'"):
        resolve_sampling("shuffled", **plain)


def test_the_datamodule_goes_through_a_fixed_set_once_per_epoch_by_default(tiny_model_dir):
    dm = SFTDataModule(str(tiny_model_dir), train=[SkillWorldSource(n=30, levels=(1,))], batch_size=4)
    dm.setup("fit")
    assert dm.sampling == "permutation"
    indices = [i for batch in dm.train_dataloader().batch_sampler for i in batch]
    assert sorted(indices) == list(range(len(dm.train_examples)))
    with pytest.raises(ValueError, match="set data.sampling: weighted"):
        dm.set_profile(MissingSkillProfile(histogram={"powers": 1.0}))
    weighted = SFTDataModule(str(tiny_model_dir), train=[SkillWorldSource(n=30, levels=(1,))], sampling="weighted")
    assert weighted.sampling == "weighted"


def test_the_datamodule_weights_examples_by_its_weighting(skillworld_datamodule):
    dm = skillworld_datamodule
    profile = MissingSkillProfile(
        histogram={"percentages": 4.0, "gcd_lcm": 2.0}, asked={"percentages": 8, "gcd_lcm": 2}
    )
    dm.profile = profile
    try:
        for weighting in ("proportional", "rate", "power"):
            dm.weighting = weighting
            expected = profile.to_weights(dm.records, dm.skill_map, floor=0.0, weighting=weighting, power=2.0)
            assert dm.example_weights() == pytest.approx(expected)  # one example per skill-world record
        share = sum(
            w for w, e in zip(dm.example_weights(), dm.train_examples, strict=True) if _skill(dm, e) == "gcd_lcm"
        )
        assert share == pytest.approx(0.2)  # power 2: 4**2 : 2**2
    finally:
        dm.profile, dm.weighting = None, "proportional"


def _skill(dm, example):
    return dm.records[example["record"]].skills[0]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"weighting": "counts"}, "weighting must be one of proportional, rate, power, got 'counts'"),
        ({"weighting": "power", "weight_power": -1.0}, "weight_power must be positive"),
        ({"weight_floor": 2.0}, r"weight_floor must be in \[0, 1\]"),
    ],
)
def test_bad_weighting_settings_are_named_before_any_data_loads(tiny_model_dir, setting, message):
    with pytest.raises(ValueError, match=message):
        SFTDataModule(str(tiny_model_dir), train=[SkillWorldSource(n=4)], **setting)


def test_a_data_seed_of_its_own_draws_other_data_than_a_run_with_the_same_seed(tiny_model_dir):
    def first_epoch(**seeds) -> list[list[int]]:
        dm = SFTDataModule(
            str(tiny_model_dir), train=[SkillWorldSource(n=40, levels=(1,))], samples_per_epoch=16, **seeds
        )
        dm.setup("fit")
        return list(dm.train_dataloader().batch_sampler)

    warmup = first_epoch(seed=0)
    assert first_epoch(seed=0, data_seed=0) == warmup  # the default: the data seed is the run's seed
    assert first_epoch(seed=0, data_seed=1) != warmup  # an arm from the warm-up, with a data seed of its own
    assert first_epoch(seed=5, data_seed=1) == first_epoch(seed=0, data_seed=1)
