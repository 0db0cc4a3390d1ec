"""What the SFT and GRPO data modules share: sources and their mixing, the skill-weighted sampler, live retargeting.

A concrete module (``SFTDataModule``, ``PromptDataModule``) says only how a record becomes training
examples (:meth:`SkillWeightedDataModule._encode`) and how examples become a batch
(:meth:`SkillWeightedDataModule.collate`). Everything else lives here once: loading and mixing the
``train`` sources, the per-example STAT-Sel weights, :meth:`set_profile` (the callbacks' one door
into the data), :meth:`add_synthetic` (live STAT-Syn rows), and the sampler position and profile in
the checkpoint, so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import lightning as L
from torch.utils.data import DataLoader

from stat_pl.data.sampler import (
    LengthGroupedBatchSampler,
    Sampling,
    StratifiedSampler,
    Stratum,
    epoch_sampler,
    resolve_sampling,
)
from stat_pl.data.synthetic_source import SyntheticSource, synthetic_records
from stat_pl.errors import UserError
from stat_pl.missing_skill_profile import MissingSkillProfile, Weighting, check_floor, check_weighting
from stat_pl.records import DataSource, ProblemRecord
from stat_pl.skills import SkillCatalog, SkillMap
from stat_pl.tokenizer import load_tokenizer

if TYPE_CHECKING:
    from stat_pl.records import BuiltRow

#: The stratum of a source's records that have no skill label (``sampling: stratified``).
NO_SKILL = "(no skill)"


class SkillWeightedDataModule(L.LightningDataModule):
    """Training examples from mixed sources, in seeded permutations or drawn by a :class:`SkillWeightedSampler`.

    Args:
        tokenizer: Hub name or local path of the tokenizer (the CLI links it to the model's).
        train: the training sources.
        mix_ratios: each source's share of every epoch's draws (e.g. ``[0.7, 0.3]`` real vs synthetic);
            default: proportional to the sources' sizes.
        batch_size: examples per batch and device (SFT: a micro-batch; GRPO: the prompts of a rollout batch).
        samples_per_epoch: examples drawn per epoch across all devices; default: the pool size.
        group_by_length: batch examples of similar length (the paper's group-by-length).
        seed: seeds the draws and the batch order unless ``data_seed`` is set (the CLI links it to
            ``seed_everything``).
        data_seed: seeds the draws and the batch order instead of ``seed``, so that runs sharing
            ``seed_everything`` draw independent data: a warm-up and the arms trained on from it would
            otherwise replay the warm-up's first epoch. Default: ``seed``.
        weight_floor: the uniform share mixed into profile weights so no example is never drawn.
        weighting: how the profile's histogram becomes each skill's share of the targeted draws
            (:meth:`MissingSkillProfile.skill_mix`): ``proportional`` (the paper: failure counts), ``rate``
            (failures divided by the questions asked with the skill; needs a profile that records them) or
            ``power`` (failure counts to the power ``weight_power``, which sharpens for ``weight_power > 1``).
        weight_power: the exponent of ``weighting: power``.
        initial_profile: a ``profile.json`` to sample by from the first epoch (static STAT-Sel).
        catalog: a skill catalog JSON; when set, every profile's skills must be in it.
        system_prompt: an optional system turn before the problem.
        num_workers: DataLoader worker processes.
        sampling: ``permutation`` (every row once per epoch, the paper's training on a built set),
            ``weighted`` (profile-weighted draws with replacement, the online loop), ``stratified`` (the
            same targeting with each skill's count per epoch exact, every skill drawing from its own seeded
            stream: :meth:`skill_strata`) or ``auto`` (weighted when ``initial_profile``, ``mix_ratios``,
            ``samples_per_epoch`` or a ``SyntheticSource`` is given, else permutation;
            :func:`stat_pl.data.sampler.resolve_sampling`).
    """

    def __init__(
        self,
        tokenizer: str,
        train: list[DataSource],
        mix_ratios: list[float] | None = None,
        batch_size: int = 2,
        samples_per_epoch: int | None = None,
        group_by_length: bool = True,
        seed: int = 0,
        data_seed: int | None = None,
        weight_floor: float = 0.05,
        weighting: Weighting = "proportional",
        weight_power: float = 2.0,
        initial_profile: str | None = None,
        catalog: str | None = None,
        system_prompt: str | None = None,
        num_workers: int = 0,
        sampling: Sampling = "auto",
    ) -> None:
        super().__init__()
        if mix_ratios is not None and (len(mix_ratios) != len(train) or min(mix_ratios) < 0 or sum(mix_ratios) <= 0):
            raise UserError(
                f"data.mix_ratios {mix_ratios} must be non-negative, not all zero, one per train source ({len(train)})"
            )
        self.tokenizer_name = tokenizer
        self.sources = train
        self.mix_ratios = mix_ratios
        self.batch_size = batch_size
        self.samples_per_epoch = samples_per_epoch
        self.group_by_length = group_by_length
        self.seed = seed
        self.data_seed = seed if data_seed is None else data_seed
        check_floor(weight_floor)
        check_weighting(weighting, weight_power)
        self.weight_floor = weight_floor
        self.weighting = weighting
        self.weight_power = weight_power
        self.initial_profile = initial_profile
        self.catalog = SkillCatalog.from_json(catalog) if catalog else None
        self.system_prompt = system_prompt
        self.num_workers = num_workers
        self.sampling = resolve_sampling(
            sampling,
            initial_profile=initial_profile is not None,
            mix_ratios=mix_ratios is not None,
            samples_per_epoch=samples_per_epoch is not None,
            online_source=any(isinstance(s, SyntheticSource) for s in train),
        )
        self.profile: MissingSkillProfile | None = None
        self.records: list[ProblemRecord] = []
        self._batch_sampler: LengthGroupedBatchSampler | None = None
        self._resume_state: dict | None = None
        self._synthetic_at_checkpoint: int | None = None

    # ---- what a concrete module says -------------------------------------------------------------
    @abstractmethod
    def _encode(self, records: Sequence[ProblemRecord]) -> list[dict]:
        """Examples of ``records``: dicts with ``input_ids`` (its length groups batches) and ``record``,
        the position of its record in ``records``."""

    @abstractmethod
    def collate(self, examples: Sequence[dict]) -> dict:
        """One batch from its examples."""

    # ---- setup -----------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.records:
            return
        self.source_records = [source.load() for source in self.sources]
        self.records = [r for records in self.source_records for r in records]
        self.tokenizer = load_tokenizer(self.tokenizer_name)
        self.skill_map = SkillMap.from_records(self.records)
        self.train_examples = self._indexed(self._encode(self.records))
        self._check_every_source_trains()
        if self.initial_profile and self.profile is None:
            self.profile = MissingSkillProfile.from_json(self.initial_profile, self.catalog)
        if self._synthetic_at_checkpoint is not None:
            self._keep_synthetic(self._synthetic_at_checkpoint)

    def _check_every_source_trains(self) -> None:
        """Each ``train`` source gives at least one example (a :class:`SyntheticSource` may start empty).

        An empty file, or one whose rows ``_encode`` all skipped, is named here; past this point the
        sampler could only say that its weights are empty.
        """
        trained = {e["record"] for e in self.train_examples}
        start = 0
        for i, (source, records) in enumerate(zip(self.sources, self.source_records, strict=True)):
            rows = range(start, start + len(records))
            start += len(records)
            if isinstance(source, SyntheticSource) or not trained.isdisjoint(rows):
                continue
            where = f"data.train[{i}] ({getattr(source, 'path', source)})"
            if not records:
                raise UserError(f"{where} has no rows; give it a file with rows or drop it from data.train")
            raise UserError(
                f"{where}: all {len(records)} rows were skipped (a warning above says why); "
                "raise the length limit or fix the rows"
            )
        if not self.train_examples:
            raise UserError(
                "data.train gives no rows to train on (a SyntheticSource is empty until the run adds rows); "
                "add a source with rows"
            )

    @staticmethod
    def _indexed(examples: list[dict], first_record: int = 0, first_index: int = 0) -> list[dict]:
        """Number the examples (``index``) and shift their ``record`` positions into the whole pool."""
        return [{**e, "record": e["record"] + first_record, "index": first_index + k} for k, e in enumerate(examples)]

    # ---- weights ---------------------------------------------------------------------------------
    def example_weights(self) -> list[float]:
        """Per-example sampling weights: the profile's STAT-Sel weights within each source, times its ratio."""
        ratios = self.mix_ratios or [len(r) for r in self.source_records]
        record_weights: list[float] = []
        for records, ratio in zip(self.source_records, ratios, strict=True):
            if not records:
                continue
            within = (
                self.profile.to_weights(records, self.skill_map, self.weight_floor, self.weighting, self.weight_power)
                if self.profile
                else [1.0 / len(records)] * len(records)
            )
            record_weights.extend(ratio / sum(ratios) * w for w in within)
        examples_of = Counter(e["record"] for e in self.train_examples)
        return [record_weights[e["record"]] / examples_of[e["record"]] for e in self.train_examples]

    def skill_strata(self) -> dict[str, Stratum]:
        """The strata of ``sampling: stratified``: per source and skill, the examples linked to the skill and
        its share of every epoch, keyed ``train[<source>]/<skill>``.

        A source's share (``mix_ratios``) is split as the weighted mode splits it: ``1 - weight_floor`` by
        the profile's skill mix (:meth:`MissingSkillProfile.skill_mix`), ``weight_floor`` (all of it without
        a profile) by the pool's own mix, where each record's equal part goes evenly to its skills (a
        record without skills to ``train[<source>]/(no skill)``). A stratum draws uniformly over its
        examples, so where every record has one skill and one example each example is expected as often
        as under ``weighted``; a record with several skills is reached through each of its skills.
        """
        ratios = self.mix_ratios or [len(r) for r in self.source_records]
        examples_of: dict[int, list[int]] = defaultdict(list)
        for example in self.train_examples:
            examples_of[example["record"]].append(example["index"])
        strata: dict[str, Stratum] = {}
        first = 0
        for i, (records, ratio) in enumerate(zip(self.source_records, ratios, strict=True)):
            positions = range(first, first + len(records))
            first += len(records)
            skills_of = {p: tuple(dict.fromkeys(self.skill_map.skills_of(self.records[p].id))) for p in positions}
            skills_of = {p: skills or (NO_SKILL,) for p, skills in skills_of.items()}
            shares = self._source_skill_shares(records, skills_of)
            for skill, share in shares.items():
                members = tuple(e for p in positions if skill in skills_of[p] for e in examples_of[p])
                strata[f"train[{i}]/{skill}"] = Stratum(members, ratio / sum(ratios) * share)
        return strata

    def _source_skill_shares(
        self, records: Sequence[ProblemRecord], skills_of: dict[int, tuple[str, ...]]
    ) -> dict[str, float]:
        """Each skill's share of one source's draws: the profile's mix and the floor's share of the pool mix."""
        mix = self.profile.skill_mix(records, self.skill_map, self.weighting, self.weight_power) if self.profile else {}
        floor = self.weight_floor if mix else 1.0
        shares: Counter[str] = Counter({skill: (1 - floor) * share for skill, share in mix.items()})
        for skills in skills_of.values():
            for skill in skills:
                shares[skill] += floor / len(records) / len(skills)
        return dict(shares)

    def set_profile(self, profile: MissingSkillProfile) -> None:
        """Sample the next epochs by ``profile`` (STAT-Sel weights); the epoch in progress is unaffected."""
        if self.catalog is not None:
            profile.validate(self.catalog)
        self.profile = profile
        if self._batch_sampler is not None:
            self._retarget_sampler()

    def _retarget_sampler(self, resize: bool = False) -> None:
        """Hand the sampler the weights (or strata) of the profile and pool as they are now, from its next epoch."""
        sampler = self._batch_sampler.sampler
        if isinstance(sampler, StratifiedSampler):
            sampler.set_strata(self.skill_strata())
        else:
            sampler.set_weights(self.example_weights(), resize=resize)

    # ---- live synthetic data ---------------------------------------------------------------------
    def add_synthetic(self, rows: Sequence[ProblemRecord | BuiltRow]) -> list[ProblemRecord]:
        """Train on ``rows`` (e.g. from :func:`stat_pl.building.synthesize_for_profile`) from the next epoch on.

        Needs a :class:`SyntheticSource` as the last ``train`` source. The rows are appended to its file
        (by global rank 0; every rank calls this with the same rows), encoded, and given sampling
        weights that the sampler uses from its next epoch; the epoch in progress keeps its draw. The
        file and the row count in the checkpoint make a resumed run train on exactly the same rows.
        """
        source = self._synthetic_source()
        records = synthetic_records(rows, source.path)
        if self.trainer is None or self.trainer.is_global_zero:
            source.append(rows)
        examples = self._indexed(self._encode(records), len(self.records), len(self.train_examples))
        self.source_records[-1].extend(records)
        self.records.extend(records)
        self.train_examples.extend(examples)
        self.skill_map = SkillMap.from_records(self.records)
        if self._batch_sampler is not None:
            self._batch_sampler.lengths.extend(len(e["input_ids"]) for e in examples)
            self._retarget_sampler(resize=True)
        return records

    def real_records(self) -> list[ProblemRecord]:
        """The training pool without the synthetic rows: what live STAT-Syn draws its example questions from."""
        real = (
            self.source_records[:-1]
            if self.sources and isinstance(self.sources[-1], SyntheticSource)
            else (self.source_records)
        )
        return [r for records in real for r in records]

    def synthetic_rows(self) -> list[ProblemRecord]:
        """The synthetic rows trained on so far; needs a :class:`SyntheticSource` as the last ``train`` source."""
        self._synthetic_source()
        return list(self.source_records[-1])

    def _synthetic_source(self) -> SyntheticSource:
        if not self.sources or not isinstance(self.sources[-1], SyntheticSource):
            raise UserError(
                "add_synthetic needs a stat_pl.data.synthetic_source.SyntheticSource as the last "
                f"entry of data.train (with its share in data.mix_ratios); got {self.sources}"
            )
        return self.sources[-1]

    def _keep_synthetic(self, count: int) -> None:
        """Cut the synthetic rows back to the ``count`` the checkpoint knew (later ones are made again)."""
        source, loaded = self._synthetic_source(), self.source_records[-1]
        if len(loaded) < count:
            raise UserError(
                f"{source.path} holds {len(loaded)} synthetic rows but the checkpoint was taken "
                f"with {count}: the file was changed or replaced since"
            )
        extra = len(loaded) - count
        if extra:
            del loaded[count:]
            del self.records[len(self.records) - extra :]
            kept = sum(e["record"] < len(self.records) for e in self.train_examples)  # examples are in record order
            del self.train_examples[kept:]
            self.skill_map = SkillMap.from_records(self.records)
            if self.trainer is None or self.trainer.is_global_zero:
                source.truncate(count)
        self._synthetic_at_checkpoint = None

    # ---- loaders ---------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        self._batch_sampler = self._make_batch_sampler()
        if self._resume_state is not None:
            self._batch_sampler.sampler.load_state_dict(self._resume_state["sampler"])
            self._batch_sampler.resume_at(self._resume_state["epoch"], self._resume_state["batches_done"])
            self._resume_state = None
        return self._loader(self.train_examples, self._batch_sampler)

    def _make_batch_sampler(self) -> LengthGroupedBatchSampler:
        """This rank's batches: the epoch's permutation, skill-weighted or stratified draw, dealt round-robin across
        ranks."""
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        sampler = epoch_sampler(
            self.sampling,
            self.skill_strata if self.sampling == "stratified" else self.example_weights,
            len(self.train_examples),
            self.samples_per_epoch,
            self.data_seed,
            world,
            rank,
        )
        lengths = [len(e["input_ids"]) for e in self.train_examples]
        epoch_source = (lambda: self.trainer.current_epoch) if self.trainer else None
        return LengthGroupedBatchSampler(
            sampler, lengths, self.batch_size, self.group_by_length, epoch_source=epoch_source
        )

    def _loader(self, examples: list[dict], batch_sampler) -> DataLoader:
        return DataLoader(examples, batch_sampler=batch_sampler, num_workers=self.num_workers, collate_fn=self.collate)

    # ---- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The profile in force and the sampler position, so a resumed run draws what an uninterrupted one would."""
        state: dict = {"profile": self.profile.to_dict() if self.profile else None, "sampler": None, "batches_done": 0}
        if self._batch_sampler is not None:
            state["sampler"] = self._batch_sampler.sampler.state_dict()
            state["epoch"], state["batches_done"] = self._position()
        if self.records and isinstance(self.sources[-1], SyntheticSource):
            state["synthetic_rows"] = len(self.source_records[-1])
        return state

    def _position(self) -> tuple[int, int]:
        """(epoch, batches of it already trained on) to resume from; an epoch that ended resumes at the next."""
        epoch = self.trainer.current_epoch
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return (epoch, done) if done < len(self._batch_sampler) else (epoch + 1, 0)

    def load_state_dict(self, state: dict) -> None:
        if state.get("profile") is not None:
            self.profile = MissingSkillProfile(**state["profile"])
        if state.get("sampler") is not None:
            self._resume_state = {
                "sampler": state["sampler"],
                "epoch": state["epoch"],
                "batches_done": state["batches_done"],
            }
        if state.get("synthetic_rows") is not None:
            self._synthetic_at_checkpoint = state["synthetic_rows"]
            if self.records:  # Lightning restores after setup
                self._keep_synthetic(state["synthetic_rows"])
