"""PromptDataModule: GRPO's questions, skill-weighted like SFT's examples, one prompt per record.

A batch is one rollout batch: ``batch_size`` prompts (token ids of the chat-formatted question) with
their gold answers; the GRPO module samples a group of completions for each. The sampler deals whole
prompts round-robin across ranks, so DDP ranks draw disjoint whole groups. Sources, mixing,
``set_profile`` (the RolloutProfiler's and SkillReprofiler's door) and the sampler state are the
shared :class:`~stat_pl.data.base.SkillWeightedDataModule`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch.utilities import rank_zero_warn

from stat_pl.data.base import SkillWeightedDataModule
from stat_pl.data.formatting import encode_prompt
from stat_pl.errors import UserError
from stat_pl.records import DataSource, ProblemRecord


class PromptDataModule(SkillWeightedDataModule):
    """Prompts with gold answers for GRPO.

    ``batch_size`` is the number of prompts (groups) per rollout batch and device. The other arguments
    (sources, mixing, sampling, profile) are :class:`~stat_pl.data.base.SkillWeightedDataModule`'s.

    Args:
        max_prompt_length: prompts longer than this many tokens are skipped with a warning.
        prompt_suffix: appended to every question (e.g. "Put the final answer in \\boxed{}.").
        skip_unanswered: skip records without a gold answer (with a warning) instead of failing on the first
            (MATH train has two such rows).
    """

    def __init__(
        self,
        tokenizer: str,
        train: list[DataSource],
        max_prompt_length: int = 512,
        prompt_suffix: str = "",
        skip_unanswered: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(tokenizer, train, **kwargs)
        self.max_prompt_length = max_prompt_length
        self.prompt_suffix = prompt_suffix
        self.skip_unanswered = skip_unanswered

    def _encode(self, records: Sequence[ProblemRecord]) -> list[dict]:
        examples, too_long, unanswered = [], [], []
        for i, record in enumerate(records):
            if not record.answer.strip():
                if not self.skip_unanswered:
                    raise UserError(
                        f"record {record.id!r} (source {record.source!r}) has an empty field 'answer': "
                        "GRPO's reward needs a gold answer; fill it in, drop the row, or set "
                        "data.skip_unanswered: true"
                    )
                unanswered.append(record.id)
                continue
            ids = encode_prompt(self.tokenizer, record.problem + self.prompt_suffix, self.system_prompt)
            if len(ids) > self.max_prompt_length:
                too_long.append(record.id)
                continue
            examples.append({"input_ids": ids, "record": i})
        if unanswered:
            rank_zero_warn(
                f"PromptDataModule: skipped {len(unanswered)} record(s) without a gold answer: {unanswered[:3]}"
            )
        if too_long:
            rank_zero_warn(
                f"PromptDataModule: skipped {len(too_long)} prompt(s) longer than max_prompt_length="
                f"{self.max_prompt_length} tokens, e.g. {too_long[:3]}; raise it to keep them"
            )
        return examples

    def collate(self, examples: Sequence[dict]) -> dict:
        """Prompt ids (unpadded lists: the engine and the module pad them), gold answers, and where they came from."""
        records = [self.records[e["record"]] for e in examples]
        return {
            "prompt_ids": [list(e["input_ids"]) for e in examples],
            "answers": [r.answer for r in records],
            "record": torch.tensor([e["record"] for e in examples], dtype=torch.long),
            "index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
        }
