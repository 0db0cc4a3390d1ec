"""BenchmarkEvaluator: benchmark accuracy of the live model inside ``fit`` and ``test``.

At the end of every ``every_n_epochs``-th training epoch the callback generates with the weights being
trained (through :class:`~stat_pl.engines.hf.HFEngine`, which restores train mode and the RNG state
afterwards) on the first ``subset_size`` questions of each benchmark, and logs
``bench_subset/<benchmark>/<metric>`` through the trainer's logger, so the curve of benchmark accuracy
sits next to the loss. In ``trainer.test`` it evaluates every question and logs
``bench/<benchmark>/<metric>``. Generation, grading and metrics are those of ``python -m stat_pl
evaluate`` (:mod:`stat_pl.evaluation.scoring`), so the numbers mean the same thing.

Under DDP each rank answers its own share of the questions and the logged metrics are averaged
across ranks (``sync_dist``; shares differ in size by at most one question).
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback

from stat_pl.errors import UserError
from stat_pl.evaluation.benchmarks import BenchmarkSpec, load_benchmark
from stat_pl.evaluation.scoring import EvalSettings, QuestionResult, SampleSetting, Timing, generate_and_grade, score
from stat_pl.fsdp import is_fsdp
from stat_pl.records import ProblemRecord


class BenchmarkEvaluator(Callback):
    """Log benchmark metrics of the live model: a subset at epoch ends, the full set on ``test``.

    Args:
        benchmarks: what to evaluate, as in the ``evaluate`` stage's config.
        subset_size: questions per benchmark at epoch ends (the first ones; MATH's are shuffled).
        every_n_epochs: evaluate after every n-th training epoch; 0 evaluates only on ``test``.
        temperature, sample_temperature, max_new_tokens, top_p: sampling, as in ``evaluate``
            (:class:`~stat_pl.evaluation.scoring.EvalSettings`; shorter responses by default here).
        batch_size: sequences decoded together.
        tokenizer: the tokenizer's name or path; default the DataModule's ``tokenizer`` or the
            LightningModule's ``model`` hyperparameter.
        system_prompt: an optional system turn (keep it the same as in training).
        seed: the sampling seed.
    """

    def __init__(
        self,
        benchmarks: list[BenchmarkSpec],
        subset_size: int = 16,
        every_n_epochs: int = 1,
        temperature: float = EvalSettings.temperature,
        sample_temperature: float = EvalSettings.sample_temperature,
        max_new_tokens: int = 256,
        top_p: float = EvalSettings.top_p,
        batch_size: int = 16,
        tokenizer: str | None = None,
        system_prompt: str | None = EvalSettings.system_prompt,
        seed: int = EvalSettings.seed,
    ) -> None:
        if subset_size < 1:
            raise UserError(f"BenchmarkEvaluator.subset_size must be >= 1, got {subset_size}")
        self.benchmarks = list(benchmarks)
        self.subset_size = subset_size
        self.every_n_epochs = every_n_epochs
        self.settings = EvalSettings(
            temperature=temperature,
            sample_temperature=sample_temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            system_prompt=system_prompt,
            seed=seed,
            progress=False,
        )
        self.tokenizer_name = tokenizer
        self._tokenizer = None
        self._questions: dict[str, list[ProblemRecord]] | None = None
        self.last_metrics: dict[str, float] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if is_fsdp(trainer):
            raise UserError(
                "BenchmarkEvaluator generates with the live model, which FSDP shards over the ranks (each rank would "
                "decode a different share in lockstep with the others); under trainer.strategy QLoRAFSDPStrategy run "
                "`python -m stat_pl evaluate` on the saved adapter instead (docs/fsdp.md)"
            )
        if self._questions is None:
            self._questions = {spec.name: load_benchmark(spec) for spec in self.benchmarks}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.evaluate(trainer, pl_module, prefix="bench_subset", limit=self.subset_size)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.evaluate(trainer, pl_module, prefix="bench", limit=None)

    def evaluate(
        self, trainer: L.Trainer, pl_module: L.LightningModule, prefix: str, limit: int | None
    ) -> dict[str, float]:
        """Generate, grade, log ``<prefix>/<benchmark>/<metric>`` and return the logged values."""
        engine = self._engine(trainer, pl_module)
        rank, world = trainer.global_rank, trainer.world_size
        values = {}
        for spec in self.benchmarks:
            shard = self._questions[spec.name][:limit][rank::world]
            for setting, metrics in self.settings.sample_settings(spec).items():
                for metric, value in score(self._answer(engine, shard, setting), metrics).items():
                    values[f"{prefix}/{spec.name}/{metric}"] = value
        for name, value in values.items():
            pl_module.log(name, value, on_epoch=True, batch_size=1, sync_dist=True)
        self.last_metrics = values
        return values

    def _answer(self, engine, records: list[ProblemRecord], setting: SampleSetting) -> list[QuestionResult]:
        results: list[QuestionResult] = []
        generate_and_grade(
            engine,
            records,
            setting,
            max(1, self.settings.batch_size // setting.n),
            lambda _chunk, graded: results.extend(graded),
            Timing(),
            self.settings.grading_timeout_s,
        )
        return results

    def _engine(self, trainer: L.Trainer, pl_module: L.LightningModule):
        from stat_pl.engines.live import live_engine
        from stat_pl.tokenizer import load_tokenizer

        if self._tokenizer is None:
            name = (
                self.tokenizer_name
                or getattr(trainer.datamodule, "tokenizer_name", None)
                or getattr(getattr(pl_module, "student", None), "model", None)
                or pl_module.hparams.get("model")
            )
            if name is None:
                raise UserError("BenchmarkEvaluator: no tokenizer; pass `tokenizer:` (the model's name or path)")
            self._tokenizer = load_tokenizer(name)
        return live_engine(
            pl_module, self._tokenizer, self.settings.batch_size, progress=False, caller="BenchmarkEvaluator"
        )
