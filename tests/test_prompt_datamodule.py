"""PromptDataModule: gold answers required, chat prompts + suffix, long prompts skipped, profile-weighted, sharded;
the paper's GRPO config draws MATH train uniformly, its STAT-weighted overlay by the profile."""

import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from stat_pl.cli import run_lightning
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


PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper"


def paper_prompt_data(
    tmp_path: Path, model_dir: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch, *overlays: str, rows: int
) -> PromptDataModule:
    """The data module ``python -m stat_pl fit`` builds from the paper's GRPO config (+ ``overlays``), run from a
    checkout beside ../shared, on the first ``rows`` MATH training questions and the tiny model's tokenizer."""
    work = tmp_path / "repo"
    work.mkdir()
    (tmp_path / "shared").symlink_to(shared_data.parent)  # the config's ../shared/data paths
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "argv", ["stat_pl"])
    math = work / "math_train.jsonl"
    math.write_text("\n".join((shared_data / "math" / "train.jsonl").read_text().splitlines()[:rows]) + "\n")
    configs = ["grpo_qlora_llama32_3b.yaml", *overlays]
    cli = run_lightning(
        [
            *(a for c in configs for a in ("--config", str(PAPER / c))),
            "--trainer.accelerator=cpu",
            f"--model.init_args.student.model={model_dir}",
            f"--data.init_args.train=[{{class_path: stat_pl.records.RecordSource, init_args: {{path: {math}}}}}]",
            "--data.init_args.batch_size=8",
            "--data.init_args.num_workers=0",
            "--data.init_args.max_prompt_length=8192",  # the tiny tokenizer spends many more tokens than Llama's
        ],
        run=False,
    )
    return cli.datamodule


def drawn_records(dm: PromptDataModule, epoch: int) -> list[int]:
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0, current_epoch=epoch)
    return [i for batch in dm.train_dataloader() for i in batch["record"].tolist()]


def test_the_paper_grpo_config_goes_through_math_train_uniformly(tmp_path, tiny_model_dir, shared_data, monkeypatch):
    """The paper runs GRPO "on the same MATH training set": no profile, every question once per epoch, reshuffled."""
    dm = paper_prompt_data(tmp_path, tiny_model_dir, shared_data, monkeypatch, rows=40)
    dm.setup("fit")
    assert dm.profile is None
    epochs = [drawn_records(dm, epoch) for epoch in (0, 1)]
    for drawn in epochs:
        assert sorted(drawn) == list(range(len(dm.records))) == list(range(40))
    assert epochs[0] != epochs[1]


def test_the_stat_weighted_overlay_draws_grpo_prompts_by_the_profile(
    tmp_path, tiny_model_dir, shared_data, monkeypatch
):
    """Beyond the paper: grpo_stat_weighted_prompts.yaml reads stage 1's profile and draws its skills' questions."""
    dm = paper_prompt_data(
        tmp_path, tiny_model_dir, shared_data, monkeypatch, "grpo_stat_weighted_prompts.yaml", rows=200
    )
    ((skill, count),) = Counter(s for r in dm.sources[0].load() for s in r.skills).most_common(1)
    MissingSkillProfile.from_questions({"math/test/1": (skill,)}).to_json("runs/paper/profile/profile.json")
    dm.setup("fit")
    drawn = drawn_records(dm, 0)
    share = sum(skill in dm.records[i].skills for i in drawn) / len(drawn)
    assert dm.profile.histogram == {skill: 1.0} and len(drawn) == len(dm.records) == 200
    assert share > 0.5 > count / 200 and len(set(drawn)) < len(drawn)  # the profile's skill, drawn with replacement
