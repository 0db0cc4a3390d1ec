"""PromptDataModule: gold answers required, chat prompts + suffix, long prompts skipped, profile-weighted, sharded."""

from types import SimpleNamespace

import pytest

from stat_pl.data.prompt_datamodule import PromptDataModule
from stat_pl.data.skillworld import SkillWorldSource
from stat_pl.missing_skill_profile import MissingSkillProfile
from stat_pl.records import DataSource, ProblemRecord


class Rows(DataSource):
    def __init__(self, rows: list[ProblemRecord]) -> None:
        self.rows = rows

    def load(self) -> list[ProblemRecord]:
        return self.rows


def test_a_record_without_gold_answer_is_named(tiny_model_dir):
    dm = PromptDataModule(
        str(tiny_model_dir),
        train=[Rows([ProblemRecord("q1", "1+1", "2", source="mine"), ProblemRecord("q2", "2+2", " ", source="mine")])],
    )
    with pytest.raises(ValueError, match="record 'q2' \\(source 'mine'\\) has an empty field 'answer'"):
        dm.setup()


def test_prompts_are_chat_formatted_with_the_suffix_and_long_ones_skipped(tiny_model_dir):
    rows = [ProblemRecord("short", "1+1", "2"), ProblemRecord("long", "what is the sum " * 40, "3")]
    dm = PromptDataModule(
        str(tiny_model_dir), train=[Rows(rows)], prompt_suffix=" Answer: boxed", max_prompt_length=40, batch_size=1
    )
    with pytest.warns(UserWarning, match="skipped 1 prompt.*'long'"):
        dm.setup()
    (batch,) = list(dm.train_dataloader())
    text = dm.tokenizer.decode(batch["prompt_ids"][0])
    assert text.startswith("<|im_start|>user\n1+1 Answer: boxed<|im_end|>") and text.endswith("assistant\n")
    assert batch["answers"] == ["2"] and batch["record"].tolist() == [0]


def test_set_profile_reweights_the_next_epoch(tiny_model_dir):
    dm = PromptDataModule(
        str(tiny_model_dir),
        train=[SkillWorldSource(n=200, levels=(1,), max_skills=1)],
        batch_size=4,
        samples_per_epoch=400,
    )
    dm.setup()
    skill = dm.records[0].skills[0]
    dm.train_dataloader()
    dm.set_profile(MissingSkillProfile.from_questions({"q": (skill,)}))
    drawn = [i for batch in dm.train_dataloader() for i in batch["record"].tolist()]
    share = sum(skill in dm.records[i].skills for i in drawn) / len(drawn)
    natural = sum(skill in r.skills for r in dm.records) / len(dm.records)
    assert share > 2 * natural


def test_ddp_ranks_draw_disjoint_whole_groups(tiny_model_dir):
    shares = []
    for rank in (0, 1):
        dm = PromptDataModule(
            str(tiny_model_dir), train=[SkillWorldSource(n=500, levels=(1,))], batch_size=3, samples_per_epoch=12
        )
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank, current_epoch=0)
        dm.setup()
        shares.append([b["index"].tolist() for b in dm.train_dataloader()])
    assert [len(b) for b in shares[0]] == [len(b) for b in shares[1]] == [3, 3]  # same number of groups per step
    flat = [set(i for b in s for i in b) for s in shares]
    assert not flat[0] & flat[1]
