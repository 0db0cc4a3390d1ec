"""The stratified sampler: exact skill mixes per epoch, a seeded stream per skill, shared draws across arms, resume."""

from collections import Counter

import pytest

from stat_pl.data.sampler import (
    LengthGroupedBatchSampler,
    SkillWeightedSampler,
    StratifiedSampler,
    Stratum,
    exact_counts,
    resolve_sampling,
)
from stat_pl.data.sft_datamodule import SFTDataModule
from stat_pl.data.skillworld import SkillWorldSource
from stat_pl.missing_skill_profile import MissingSkillProfile


def strata(**shares: float) -> dict[str, Stratum]:
    """Stratum ``k``-th of the keyword arguments holds rows 10k .. 10k + 9."""
    return {key: Stratum(tuple(range(10 * k, 10 * k + 10)), share) for k, (key, share) in enumerate(shares.items())}


def by_stratum(indices: list[int]) -> dict[int, list[int]]:
    """Rows drawn per stratum of :func:`strata` (stratum k holds rows 10k .. 10k + 9)."""
    groups: dict[int, list[int]] = {}
    for i in indices:
        groups.setdefault(i // 10, []).append(i)
    return groups


def test_counts_split_the_total_exactly_by_largest_remainder():
    assert exact_counts({"a": 0.5, "b": 0.3, "c": 0.2}, 7) == {"a": 4, "b": 2, "c": 1}  # 3.5, 2.1, 1.4
    assert exact_counts({"a": 1.0, "b": 1.0}, 3) == {"a": 2, "b": 1}  # a tie goes to the first key
    assert exact_counts({"a": 3.0, "b": 1.0}, 40) == {"a": 30, "b": 10}  # shares need not sum to 1


def test_every_epoch_realises_the_mix_exactly_without_repeats_inside_a_stratum():
    sampler = StratifiedSampler(strata(a=0.5, b=0.3, c=0.2), num_samples=20, seed=4)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        drawn = by_stratum(list(sampler))
        assert {k: len(v) for k, v in drawn.items()} == {0: 10, 1: 6, 2: 4}
        assert all(len(set(rows)) == len(rows) for rows in drawn.values())  # 10 rows each: no row twice
        epochs.append(list(sampler))
    assert epochs[0] != epochs[1] != epochs[2]
    again = StratifiedSampler(strata(a=0.5, b=0.3, c=0.2), num_samples=20, seed=4)
    again.set_epoch(1)
    assert list(again) == epochs[1]  # the same seed replays an epoch
    assert list(StratifiedSampler(strata(a=0.5, b=0.3, c=0.2), num_samples=20, seed=5)) != epochs[0]


def test_two_arms_with_overlapping_counts_share_their_draws():
    # arm A: 10 draws of a, 10 of b; arm B: 16 of a (more than its 10 rows: a second pass), 4 of b
    arm_a = by_stratum(list(StratifiedSampler(strata(a=0.5, b=0.5), num_samples=20, seed=1)))
    arm_b = by_stratum(list(StratifiedSampler(strata(a=0.8, b=0.2), num_samples=20, seed=1)))
    assert (len(arm_a[0]), len(arm_b[0]), len(arm_a[1]), len(arm_b[1])) == (10, 16, 10, 4)
    assert not Counter(arm_a[0]) - Counter(arm_b[0])  # A's 10 draws of a are among B's 16
    assert not Counter(arm_b[1]) - Counter(arm_a[1])  # B's 4 draws of b are among A's 10
    sampler = StratifiedSampler(strata(a=0.8, b=0.2), num_samples=20, seed=1)
    assert sampler.stream("a", 16)[:10] == StratifiedSampler(strata(a=0.5, b=0.5), 20, seed=1).stream("a", 10)
    other_seed = by_stratum(list(StratifiedSampler(strata(a=0.5, b=0.5), num_samples=20, seed=2)))
    assert sorted(other_seed[0]) == sorted(arm_a[0])  # 10 of 10 rows: the same set, in another order
    assert sampler.stream("b", 4) != StratifiedSampler(strata(a=0.8, b=0.2), 20, seed=2).stream("b", 4)


def test_two_ranks_deal_one_global_draw_with_the_exact_mix():
    single = StratifiedSampler(strata(a=0.25, b=0.75), num_samples=16, seed=3).epoch_indices()
    ranks = [
        StratifiedSampler(strata(a=0.25, b=0.75), 8, seed=3, num_replicas=2, rank=r).epoch_indices() for r in (0, 1)
    ]
    assert [i for pair in zip(*ranks, strict=True) for i in pair] == single
    assert {k: len(v) for k, v in by_stratum(single).items()} == {0: 4, 1: 12}


def test_a_stratified_epoch_resumes_mid_epoch_and_new_strata_wait_for_the_next_epoch():
    lengths = [i % 7 + 1 for i in range(30)]
    sampler = StratifiedSampler(strata(a=0.2, b=0.3, c=0.5), num_samples=24, seed=2)
    grouped = LengthGroupedBatchSampler(sampler, lengths, batch_size=4, group_batches=3)
    grouped.resume_at(epoch=1, batches_done=0)
    epoch1 = list(grouped)

    restored = StratifiedSampler(strata(a=1.0), num_samples=24, seed=0)
    restored.load_state_dict(sampler.state_dict())
    resumed = LengthGroupedBatchSampler(restored, lengths, batch_size=4, group_batches=3)
    resumed.resume_at(epoch=1, batches_done=4)
    assert list(resumed) == epoch1[4:]

    running = iter(sampler)
    sampler.set_strata(strata(a=1.0, b=0.0, c=0.0))
    assert {k: len(v) for k, v in by_stratum(list(running)).items()} == {0: 5, 1: 7, 2: 12}  # the epoch's draw
    assert set(by_stratum(list(sampler))) == {0}
    with pytest.raises(ValueError, match="checkpoint's sampler is 'weighted'.*data.sampling: weighted"):
        restored.load_state_dict(SkillWeightedSampler([1.0], num_samples=1).state_dict())
    with pytest.raises(ValueError, match="no stratum has both a member and a positive share"):
        StratifiedSampler({"a": Stratum((), 1.0), "b": Stratum((1,), 0.0)}, num_samples=4)
    with pytest.raises(ValueError, match="finite and non-negative"):
        StratifiedSampler({"a": Stratum((1,), -1.0)}, num_samples=4)


def test_stratified_is_asked_for_by_name():
    plain = dict(initial_profile=True, mix_ratios=True, samples_per_epoch=True, online_source=True)
    assert resolve_sampling("stratified", **plain) == "stratified"
    assert resolve_sampling("auto", **plain) == "weighted"
    with pytest.raises(
        ValueError, match="data.sampling must be one of 'auto', 'permutation', 'weighted', 'stratified'"
    ):
        resolve_sampling("exact", **plain)


# ---- the data module ---------------------------------------------------------------------------------------------


def arm(tiny_model_dir, profile: MissingSkillProfile | None, floor: float = 0.0, seed: int = 0) -> SFTDataModule:
    dm = SFTDataModule(
        str(tiny_model_dir),
        train=[SkillWorldSource(n=120, levels=(1,), max_skills=1)],
        samples_per_epoch=40,
        batch_size=4,
        weight_floor=floor,
        sampling="stratified",
        seed=seed,
    )
    dm.setup("fit")
    if profile is not None:
        dm.set_profile(profile)
    return dm


def drawn_by_skill(dm: SFTDataModule) -> dict[str, list[int]]:
    indices = [i for batch in dm.train_dataloader().batch_sampler for i in batch]
    groups: dict[str, list[int]] = {}
    for i in indices:
        groups.setdefault(dm.records[dm.train_examples[i]["record"]].skills[0], []).append(i)
    return groups


def test_the_datamodule_realises_the_profiles_mix_exactly(tiny_model_dir):
    dm = arm(tiny_model_dir, MissingSkillProfile(histogram={"percentages": 3.0, "gcd_lcm": 1.0}))
    assert {s: len(v) for s, v in drawn_by_skill(dm).items()} == {"percentages": 30, "gcd_lcm": 10}
    assert dm._batch_sampler.sampler.epoch_counts() == {"train[0]/gcd_lcm": 10, "train[0]/percentages": 30}
    dm.set_profile(MissingSkillProfile(histogram={"gcd_lcm": 1.0}))  # a callback's new profile: next epoch
    assert dm._batch_sampler.sampler.epoch_counts() == {"train[0]/gcd_lcm": 40}


def test_without_a_profile_the_mix_is_the_pools_and_the_floor_keeps_its_share(tiny_model_dir):
    uniform = arm(tiny_model_dir, None)
    pool = Counter(r.skills[0] for r in uniform.records)
    expected = exact_counts({f"train[0]/{s}": c for s, c in pool.items()}, 40)
    assert uniform._batch_sampler is None and uniform.skill_strata().keys() == expected.keys()
    assert {f"train[0]/{s}": len(v) for s, v in drawn_by_skill(uniform).items()} == {
        k: c for k, c in expected.items() if c
    }
    floored = arm(tiny_model_dir, MissingSkillProfile(histogram={"gcd_lcm": 1.0}), floor=0.5)
    shares = {k: s.share for k, s in floored.skill_strata().items()}
    assert shares == pytest.approx({f"train[0]/{s}": 0.5 * c / 120 + 0.5 * (s == "gcd_lcm") for s, c in pool.items()})


def test_a_uniform_and_a_targeted_arm_share_the_examples_they_both_draw(tiny_model_dir):
    uniform = drawn_by_skill(arm(tiny_model_dir, None))
    targeted = drawn_by_skill(arm(tiny_model_dir, MissingSkillProfile(histogram={"percentages": 1.0}), floor=0.5))
    assert len(targeted["percentages"]) > len(uniform["percentages"])
    for skill in uniform:
        small, large = sorted([uniform[skill], targeted.get(skill, [])], key=len)
        assert not Counter(small) - Counter(large), skill  # the arm with fewer draws of a skill drew a subset
    other_seed = drawn_by_skill(arm(tiny_model_dir, None, seed=1))
    assert any(Counter(other_seed[s]) != Counter(uniform[s]) for s in uniform)


def test_a_checkpointed_stratified_datamodule_resumes_mid_epoch_with_the_same_batches(tiny_model_dir):
    profile = MissingSkillProfile(histogram={"percentages": 3.0, "gcd_lcm": 1.0})
    dm = arm(tiny_model_dir, profile)
    batch_sampler = dm.train_dataloader().batch_sampler
    batch_sampler.resume_at(epoch=1, batches_done=0)
    epoch1 = list(batch_sampler)
    state = {"profile": profile.to_dict(), "sampler": batch_sampler.sampler.state_dict(), "epoch": 1}

    resumed = arm(tiny_model_dir, None)
    resumed.load_state_dict({**state, "batches_done": 3})
    assert list(resumed.train_dataloader().batch_sampler) == epoch1[3:]
    weighted = SFTDataModule(str(tiny_model_dir), train=[SkillWorldSource(n=120, levels=(1,))], sampling="weighted")
    weighted.setup("fit")
    weighted.load_state_dict({**state, "batches_done": 3})
    with pytest.raises(ValueError, match="checkpoint's sampler is 'stratified'.*resume with data.sampling: stratified"):
        weighted.train_dataloader()
