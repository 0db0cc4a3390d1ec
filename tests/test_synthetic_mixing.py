"""Live mixing in ``fit``: real data re-weighted by the profile plus synthetic rows added during the run.

What a user relies on: the sampled shares of real vs synthetic follow ``mix_ratios``; rows added
mid-run are trained on only from the next epoch on; and a resumed run trains on exactly the batches
an uninterrupted one would, synthetic rows included (they live in the run directory's JSONL file and
the checkpoint says how many of them it knew).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from batch_recorder import BatchRecorder
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from stat_pl.data.sft_datamodule import SFTDataModule
from stat_pl.data.skillworld import SkillWorldSource
from stat_pl.data.synthetic_source import SyntheticSource
from stat_pl.models import LoRAConfig, StudentConfig
from stat_pl.modules.sft import SFTModule
from stat_pl.records import ProblemRecord, RecordSource, load_records

REAL = 100


def synthetic_rows(n: int = 20) -> list[ProblemRecord]:
    return [
        ProblemRecord(
            f"stat_syn/{i}",
            f"what is {i} + {i}",
            str(2 * i),
            (f"Answer: \\boxed{{{2 * i}}}",),
            skills=("powers",),
            source="stat_syn",
        )
        for i in range(n)
    ]


def datamodule(tokenizer: Path, path: Path, **overrides) -> SFTDataModule:
    args = dict(
        train=[SkillWorldSource(n=REAL, levels=(1,), max_skills=1), SyntheticSource(str(path))],
        mix_ratios=[0.7, 0.3],
        samples_per_epoch=10_000,
        batch_size=4,
        max_length=128,
    )
    return SFTDataModule(str(tokenizer), **{**args, **overrides})


def is_synthetic(dm: SFTDataModule, index: int) -> bool:
    return dm.records[dm.train_examples[index]["record"]].source == "stat_syn"


def test_sampled_shares_of_real_and_synthetic_follow_the_mix_ratios(tiny_model_dir, tmp_path):
    dm = datamodule(tiny_model_dir, tmp_path / "synthetic.jsonl")
    dm.setup("fit")
    dm.add_synthetic(synthetic_rows())

    indices = [i for batch in dm.train_dataloader().batch_sampler for i in batch]
    share = sum(is_synthetic(dm, i) for i in indices) / len(indices)
    assert share == pytest.approx(0.3, abs=0.02)  # 10k draws: 3 sigma < 0.014
    assert [r.id for r in load_records(RecordSource(str(tmp_path / "synthetic.jsonl")))] == [
        r.id for r in synthetic_rows()
    ]


def test_rows_added_mid_epoch_are_drawn_from_the_next_epoch_on(tiny_model_dir, tmp_path):
    dm = datamodule(tiny_model_dir, tmp_path / "synthetic.jsonl", samples_per_epoch=2_000)
    dm.setup("fit")
    loader = dm.train_dataloader()
    epoch = iter(loader.batch_sampler)
    before = [next(epoch) for _ in range(10)]

    dm.add_synthetic(synthetic_rows())
    rest = list(epoch)
    loader.batch_sampler.set_epoch(1)
    next_epoch = [i for batch in loader.batch_sampler for i in batch]

    assert not any(is_synthetic(dm, i) for batch in before + rest for i in batch)
    assert len(before) + len(rest) == 2_000 // 4
    assert sum(is_synthetic(dm, i) for i in next_epoch) / len(next_epoch) == pytest.approx(0.3, abs=0.05)
    batch = next(b for b in loader if any(is_synthetic(dm, i) for i in b["index"].tolist()))
    assert batch["input_ids"].shape[0] == 4  # the loader serves the new examples


class AddSyntheticAfterFirstEpoch(Callback):
    """Stands in for the SkillReprofiler's synthesis: adds rows at the end of epoch 0."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 0:
            trainer.datamodule.add_synthetic(synthetic_rows())


def fit(tmp_path: Path, tokenizer: Path, record: Path, ckpt_path: str | None = None) -> SFTDataModule:
    dm = datamodule(
        tokenizer, tmp_path / "run" / "synthetic.jsonl", samples_per_epoch=16, batch_size=2, mix_ratios=[0.5, 0.5]
    )
    module = SFTModule(
        StudentConfig(str(tokenizer), quantization="none", lora=LoRAConfig(r=4, alpha=8, dropout=0.0)),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
    )
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        use_distributed_sampler=False,
        default_root_dir=tmp_path / "run",
        num_sanity_val_steps=0,
        callbacks=[AddSyntheticAfterFirstEpoch(), BatchRecorder(str(record)), checkpoints],
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=False)  # hparams hold a LoRAConfig
    return dm


def recorded(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, tmp_path_factory) -> tuple[Path, SFTDataModule, list[dict]]:
    """Two uninterrupted epochs; synthetic rows added at the end of epoch 0; a checkpoint every 2 steps."""
    tmp_path = tmp_path_factory.mktemp("full_run")
    dm = fit(tmp_path, tiny_model_dir, tmp_path / "full.jsonl")
    return tmp_path, dm, recorded(tmp_path / "full.jsonl")


def test_synthetic_rows_survive_a_resume_with_the_same_batches(full_run, tiny_model_dir):
    tmp_path, full, rows = full_run
    synthetic = [any(is_synthetic(full, i) for i in row["index"]) for row in rows]
    assert len(rows) == 16 and not any(synthetic[:8]) and any(synthetic[8:])

    # a checkpoint taken before the rows were added: the file is cut back to what it knew, the rows are
    # added again at the end of epoch 0 (not twice), and every batch after the checkpoint is the same
    fit(tmp_path, tiny_model_dir, tmp_path / "after_4.jsonl", str(tmp_path / "ckpt/epoch=0-step=4.ckpt"))
    assert recorded(tmp_path / "after_4.jsonl") == rows[4:]
    assert [r.id for r in SyntheticSource(str(tmp_path / "run" / "synthetic.jsonl")).load()] == [
        r.id for r in synthetic_rows()
    ]

    # a checkpoint taken after: the rows are read back from the file, with the same sampling weights
    resumed = fit(tmp_path, tiny_model_dir, tmp_path / "after_10.jsonl", str(tmp_path / "ckpt/epoch=1-step=10.ckpt"))
    assert [r.id for r in resumed.records] == [r.id for r in full.records]
    assert [e["input_ids"] for e in resumed.train_examples] == [e["input_ids"] for e in full.train_examples]
    assert {row["weights"] for row in recorded(tmp_path / "after_10.jsonl")} == {rows[10]["weights"]}


def test_a_mid_epoch_resume_after_the_first_epoch_replays_the_same_batches(full_run, tiny_model_dir):
    tmp_path, _, rows = full_run
    fit(tmp_path, tiny_model_dir, tmp_path / "after_12.jsonl", str(tmp_path / "ckpt/epoch=1-step=12.ckpt"))
    assert recorded(tmp_path / "after_12.jsonl") == rows[12:]


def test_a_checkpoint_that_knew_more_rows_than_the_file_holds_is_refused(tiny_model_dir, tmp_path):
    dm = datamodule(tiny_model_dir, tmp_path / "synthetic.jsonl")
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"synthetic\.jsonl holds 0 synthetic rows but the checkpoint .* with 5"):
        dm.load_state_dict({"profile": None, "sampler": None, "batches_done": 0, "synthetic_rows": 5})


def test_add_synthetic_without_a_synthetic_source_says_how_to_configure_one(tiny_model_dir):
    dm = SFTDataModule(str(tiny_model_dir), train=[SkillWorldSource(n=10, levels=(1,))])
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"needs a stat_pl\.data\.synthetic_source\.SyntheticSource as the last"):
        dm.add_synthetic(synthetic_rows(1))
