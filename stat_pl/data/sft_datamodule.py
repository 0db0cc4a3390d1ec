"""SFTDataModule: mixed sources, chat formatting, skill-weighted sampling, length-grouped batches.

The SkillReprofiler callback retargets training through one public method, :meth:`set_profile`; the
profile in force is part of the checkpoint, so a resumed run samples by the latest profile. Synthetic
rows made during the run reach it through :meth:`add_synthetic`. Both, the sources, their mixing and
the sampler live in :class:`~stat_pl.data.base.SkillWeightedDataModule`, shared with GRPO's
``PromptDataModule``.
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from stat_pl.data.base import SkillWeightedDataModule
from stat_pl.data.formatting import IGNORE_INDEX, collate, encode_example
from stat_pl.errors import UserError
from stat_pl.records import DataSource, ProblemRecord


class SFTDataModule(SkillWeightedDataModule):
    """Supervised fine-tuning data: every solution of the sources is one example, permuted or skill-weighted.

    Every record of ``train`` needs at least one solution, and each solution is one example.
    ``batch_size`` is the micro-batch size per device (accumulation is the Trainer's). The other
    arguments (sources, mixing, sampling, profile) are :class:`~stat_pl.data.base.SkillWeightedDataModule`'s.

    Args:
        val: optional source for the validation loss.
        max_length: examples are cut to this many tokens.
    """

    def __init__(
        self, tokenizer: str, train: list[DataSource], val: DataSource | None = None, max_length: int = 1024, **kwargs
    ) -> None:
        super().__init__(tokenizer, train, **kwargs)
        self.val_source = val
        self.max_length = max_length

    def setup(self, stage: str | None = None) -> None:
        if self.records:
            return
        super().setup(stage)
        self.val_examples = self._indexed(self._encode(self.val_source.load())) if self.val_source else []

    def _encode(self, records: Sequence[ProblemRecord]) -> list[dict]:
        """One example per solution; a prompt that fills ``max_length`` leaves nothing to learn and is skipped.

        Such an example has no answer token, and a micro-batch made only of them (length grouping puts
        them together) has a NaN loss that poisons the adapter; they are counted and named in a warning.
        """
        examples, too_long = [], []
        for i, record in enumerate(records):
            if not record.solutions:
                raise UserError(f"record {record.id!r} (source {record.source!r}) has no solution to train on")
            for solution in record.solutions:
                example = encode_example(self.tokenizer, record.problem, solution, self.max_length, self.system_prompt)
                if all(label == IGNORE_INDEX for label in example["labels"]):
                    too_long.append(record.id)
                    continue
                examples.append({**example, "record": i})
        if too_long:
            rank_zero_warn(
                f"SFTDataModule: skipped {len(too_long)} example(s) whose prompt fills max_length="
                f"{self.max_length} (no answer token to learn), e.g. {too_long[:3]}; raise max_length "
                "to keep them"
            )
        return examples

    def collate(self, examples: Sequence[dict]) -> dict:
        return collate(examples, pad_token_id=self.tokenizer.pad_token_id)

    def val_dataloader(self) -> DataLoader:
        order = sorted(range(len(self.val_examples)), key=lambda i: -len(self.val_examples[i]["input_ids"]))
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return self._loader(self.val_examples, batches)
