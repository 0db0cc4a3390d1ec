"""Does targeting work when there is something to target? Skill-world v2: screen, constructed students, arms.

v1 (``bench/skillworld_effect.py``, bench/README.md) found no effect of STAT-Sel because its students failed
every skill alike: a flat profile gives uniform sampling. v2 builds students that know some skills and not
others, with skills known to be learnable at this budget, and pre-registers what it expects (issue 27).
Its run of 2026-12-06 stopped at Phase 0 by its own rule (5 learnable skills, 6 needed): bench/README.md.

- Student: SmolLM2-135M-Instruct + QLoRA (NF4, r 16), AdamW ``--lr`` with the default cosine schedule,
  batch ``--batch-size``. World: single-skill skill-world problems at level 1 (a wrong answer is that
  skill's failure), the skills with at least ``--min-test`` (45) distinct test problems. Every question set
  has equally many problems per skill, each drawn from that skill's own generator: a training pool
  (``--pool-per-skill``), held-out train-split problems for the screen (``--heldout-per-skill``, after the
  pool in the same stream), profiling questions (``--profile-per-skill``, validation split) and the test set
  (``--test-per-skill``, test split). Splits are disjoint by problem text.
- Metric (primary, every phase): teacher-forced exact match of the answer where it is computed, the value of
  the solution's last step (``skillworld_v2_analysis.step_value_span``): the boxed answer repeats that value,
  so teacher-forcing the box scores copying (the untrained student gets 16 of 24). Also that span's NLL.
- ``phase0`` (jobs ``screen:S``): uniform SFT from the base model over all world skills, each skill's exact
  count per epoch fixed by ``sampling: stratified``; the held-out problems are scored at step 0 and every
  ``--checkpoint-steps`` steps. A skill's slope is the least-squares slope of its accuracy against the
  examples of it seen, over the checkpoints inside ``--window`` (~20 to ~85 examples); it qualifies if it
  reaches ``--min-reach`` there. The ``--keep`` fastest qualifying skills are kept, ranked, and split in two
  partitions (B = ranks 1, 3, 5 and the swap B = 2, 4, 6, so each B has a fast and a slow learner).
  Fewer than ``--keep`` qualifying is the finding: ``phase0`` says so and stops (exit 3).
- ``phase1`` (jobs ``warmup:S``): seed S takes partition S mod 2; SFT from the base model on 90% A / 10% B
  (exact counts) for ``--warmup-steps``, so A is near its plateau and B has the format but not the skill.
  Then the start figures: test metrics per skill, the oracle's Missing-Skill-Profile of the profiling
  questions (greedy answers, ``from_round``: it records the questions asked, so ``rate`` works too), and its
  targeting against the known B (precision, recall, mass on B). ``phase1`` ends by printing the predictions.
- ``predict``: each arm's predicted gain on B and loss on A from the Phase-0 curves (a skill's accuracy read
  off its screen curve at the examples of it seen: warm-up + arm; the online arm simulated epoch by epoch),
  for ``bench/results/skillworld_v2_preregistration.md``.
- ``phase2`` (jobs ``arm:ARM:S``), every arm from seed S's warm-up adapter with the same steps, examples and
  data seed (stratified streams: arms whose counts overlap share those examples): ``uniform`` (even over the
  six skills), ``proportional`` (STAT-Sel, the paper: the start profile's failure counts), ``sharpened``
  (counts ** ``--sharpen-power``), ``online`` (the sharpened weights, re-profiled by the SkillReprofiler with
  the oracle after every epoch, ``--online-combine`` with ``--ema-alpha``). All with ``--weight-floor``.
  ``phase2`` refuses to start until the preregistration file is committed (``--unregistered``: plumbing checks
  only; the report says so).
- ``report``: per seed, the paired difference of the primary metric on B (and on A) between arms; the mean
  with its t-interval (df = seeds - 1), the exact sign-flip test, the nested question bootstrap (secondary),
  the verdict against each pre-registered margin (``--margin-b``, ``--margin-a``, ``--margin-online``; a margin
  is met when the whole 95% t-interval clears it), the realised mixes, the profiles' precision and recall
  against B, and the core-seconds used. ``--results``/skillworld_v2.json, a PNG per comparison, the Markdown
  tables (printed and in skillworld_v2.md).
- ``plan``: every job with its estimated core-seconds (``COSTS``, measured below) and the wall time at
  ``--jobs``; with finished jobs in ``--out``, their measured core-seconds beside.

Every job writes ``<out>/<job>.json`` when it finishes and a rerun skips finished jobs (a job cut off reruns
from its start). Jobs run as ``--jobs`` parallel subprocesses with ``--threads`` torch threads each. The flags
that shape the experiment are written to ``<out>/design.json`` by the first command and every later command
must match them (runner flags, ``--arms`` and ``--results`` may change).

Item 3 of issue 27, a Skill-Map proxy arm: not an arm here, for two reasons read from the code. On single-skill
questions the proxy and the oracle blame the same skill on every difficult question (``SkillMapProxy`` names the
question's one label; ``SkillWorldOracle`` names the skill of the first wrong step, the only step, and falls
back to the label when it cannot read the answer), so a proxy arm is the ``proportional`` arm draw for draw. A
comparison needs 2-step questions, and the skill world makes those only at level 2 (steps = level), with
bigger numbers than any level-1 warm-up trains on, so the proxy and the oracle would both profile a student
who fails the level shift, not its skills. Its cost (``plan`` prices it): one more generation round of ~96
longer answers per seed plus one more arm per seed, ~376 core-s per seed (~0.6 core-h for six), a quarter of
Phase 2 on top of a budget already spent.

The real run (an idle machine, 2 cores; every command resumes where it stopped when rerun)::

    OUT=runs/bench_skillworld_v2
    python bench/skillworld_v2.py plan --out $OUT                    # the jobs and their estimated core-seconds
    python bench/skillworld_v2.py phase0 --out $OUT                  # 1 job; exit 3 = too few skills qualify:
    python bench/skillworld_v2.py report --out $OUT                  #   then this reports Phase 0 alone; stop
    python bench/skillworld_v2.py plan --out $OUT --costs-from $OUT  # re-priced on this machine
    python bench/skillworld_v2.py phase1 --out $OUT                  # 6 warm-ups; prints predictions + a draft
    # review the draft into bench/results/skillworld_v2_preregistration.md; git add + commit it
    python bench/skillworld_v2.py phase2 --out $OUT                  # 24 arm jobs
    python bench/skillworld_v2.py report --out $OUT                  # bench/results/skillworld_v2.{json,md,*.png}

Budget (``plan`` with the defaults above and ``COSTS``, measured 2026-12-06 by the smoke run on 2 cores of an AMD
EPYC, ``get_cpu_capability()`` AVX2, no AVX512-BF16 so ``precision: auto`` is fp32, while another developer's tests
shared the cores): 0.97 core-s per training example, 0.29 per teacher-forced scored question, 0.56 per greedy
answer, ~16 per job besides. Phase 0 0.39 core-h (one job: ~0.4 h of wall time, one core idle; ``--screen-seeds
0 1`` averages two screens in the same wall time for +0.39 core-h), Phase 1 0.71 core-h (~0.36 h), Phase 2 2.76
core-h (~1.44 h): **3.9 core-h, ~2.2 h of wall time at --jobs 2** (training is 2/3 of it: 9,408 examples). v1's
machine trained at 0.7 core-s per example (AVX512, bf16), which would bring it near 3 core-h; the levers, if the
machine is slower: ``--arm-steps-per-epoch 5`` (-0.31 core-h), ``--heldout-per-skill 32`` (-0.06).

The smoke run that checked the plumbing (not a finding; tiny sets, so every number in it is noise)::

    F="--out /tmp/sw2 --results /tmp/sw2/results --jobs 1 --pool-per-skill 16 --heldout-per-skill 2
       --profile-per-skill 4 --test-per-skill 3 --screen-steps 3 --checkpoint-steps 1 --window 0 100
       --min-reach 0 --warmup-steps 2 --arm-epochs 3 --arm-steps-per-epoch 1 --seeds 0"
    python bench/skillworld_v2.py phase0 $F; python bench/skillworld_v2.py phase1 $F
    python bench/skillworld_v2.py phase2 $F --unregistered --jobs 2
    python bench/skillworld_v2.py report $F --unregistered; python bench/skillworld_v2.py plan $F --costs-from /tmp/sw2
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean

import lightning as L
import skillworld_v2_analysis as analysis
import skillworld_v2_report as swv2_report
import torch
from lightning.pytorch.callbacks import Callback
from skillworld_v2_report import PREREGISTRATION, job_file, preregistration, read_job, read_json

from stat_pl.callbacks.skill_reprofiler import SkillReprofiler
from stat_pl.data.sft_datamodule import SFTDataModule
from stat_pl.data.skillworld import SKILLWORLD_SKILLS, SkillWorld
from stat_pl.engines.base import SamplingParams
from stat_pl.engines.hf import HFEngine
from stat_pl.errors import UserError
from stat_pl.evaluation.answer_metrics import score_answers
from stat_pl.grading import grade
from stat_pl.missing_skill_profile import MissingSkillProfile
from stat_pl.models import LoRAConfig, StudentConfig
from stat_pl.modules.sft import SFTModule
from stat_pl.profiling.detectors import GroundTruthDetector
from stat_pl.profiling.oracle import SkillWorldOracle
from stat_pl.profiling.round import profile_round
from stat_pl.records import DataSource, ProblemRecord
from stat_pl.trainer import StatTrainer

MODEL = "offline:smollm2-135m-instruct"
ARMS = ("uniform", "proportional", "sharpened", "online")
COMMANDS = ("plan", "phase0", "phase1", "predict", "phase2", "report")
# Flags that may change between the commands of one experiment; every other flag is part of its design.
RUNNER_FLAGS = (
    "command",
    "jobs",
    "threads",
    "worker",
    "out",
    "results",
    "arms",
    "seeds",
    "unregistered",
    "bootstrap",
    "costs_from",
)
# Core-seconds per unit, measured by the smoke run (`plan --costs-from` its --out; the module docstring's end):
# the rest of a job (model load, data, first step), one training example, one teacher-forced scored question,
# one greedily answered question (batch 24, <= 40 new tokens).
COSTS = {"load": 15.8, "train_example": 0.97, "score_question": 0.29, "generate_question": 0.56}


# ---- the world: equally many problems per skill ---------------------------------------------------------
@functools.cache
def skill_records(skill: str, split: str, n: int) -> tuple[ProblemRecord, ...]:
    """The first ``n`` distinct level-1 problems of ``split`` that use ``skill`` alone."""
    only = {s: float(s == skill) for s in SKILLWORLD_SKILLS}
    return tuple(SkillWorld(seed=0, levels=(1,), max_skills=1, skill_weights=only).records(split, n))


def world_skills(min_test: int) -> list[str]:
    """The skills with at least ``min_test`` distinct level-1 test problems (a test set disjoint from training)."""
    kept = []
    for skill in SKILLWORLD_SKILLS:
        try:
            skill_records(skill, "test", min_test)
        except UserError:
            continue
        kept.append(skill)
    return kept


@dataclass
class SkillSet(DataSource):
    """``per_skill`` problems of every skill from ``split``, after the first ``skip`` of each skill's stream."""

    skills: tuple[str, ...]
    split: str
    per_skill: int
    skip: int = 0

    def load(self) -> list[ProblemRecord]:
        return [r for s in self.skills for r in skill_records(s, self.split, self.skip + self.per_skill)[self.skip :]]


def question_sets(args: argparse.Namespace, skills: Sequence[str]) -> dict[str, SkillSet]:
    skills = tuple(skills)
    return {
        "pool": SkillSet(skills, "train", args.pool_per_skill),
        "heldout": SkillSet(skills, "train", args.heldout_per_skill, skip=args.pool_per_skill),
        "profiling": SkillSet(skills, "validation", args.profile_per_skill),
        "test": SkillSet(skills, "test", args.test_per_skill),
    }


# ---- measuring ------------------------------------------------------------------------------------------
def score(model: torch.nn.Module, tokenizer, records: Sequence[ProblemRecord]) -> dict[str, list]:
    """Per question: teacher-forced exact match of the last step's value, and that value's mean token NLL; and
    ``cpu``: [core-seconds, questions] of the call."""
    started = cpu_seconds()
    scores = score_answers(model, tokenizer, records, batch_size=16, answer_span=analysis.step_value_span)
    missing = [r.id for r, s in zip(records, scores, strict=True) if s is None]
    if missing:
        raise ValueError(f"no step value to score in {missing[:3]}")
    cpu = [cpu_seconds() - started, len(records)]
    return {"exact": [float(s.exact) for s in scores], "nll": [s.nll for s in scores], "cpu": cpu}


def skill_means(records: Sequence[ProblemRecord], values: Sequence[float]) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for record, value in zip(records, values, strict=True):
        groups.setdefault(record.skills[0], []).append(value)
    return {s: fmean(v) for s, v in groups.items()}


def cpu_seconds() -> float:
    """Core-seconds this process has used so far (user + system, all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---- training -------------------------------------------------------------------------------------------
class SkillCounts(Callback):
    """The realised mix (examples of each skill drawn in each epoch), tokens trained on, the core-seconds of each
    optimizer step (``batches``) and of the whole training loop with its epoch-end callbacks (``train_cpu``: from
    the start of training to its end, so model loading is not counted)."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, int]] = []
        self.tokens = 0
        self.train_cpu = 0.0
        self.batches: list[float] = []
        self._counts: Counter = Counter()
        self._started = 0.0
        self._batch_started = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = cpu_seconds()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._counts = Counter()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict, idx: int) -> None:
        self._batch_started = cpu_seconds()
        data = trainer.datamodule
        self.tokens += int(batch["attention_mask"].sum())
        for index in batch["index"].tolist():
            self._counts.update(data.records[data.train_examples[index]["record"]].skills)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, idx: int) -> None:
        self.batches.append(cpu_seconds() - self._batch_started)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append(dict(sorted(self._counts.items())))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_cpu = cpu_seconds() - self._started

    def seen(self) -> dict[str, int]:
        """Examples of each skill over all epochs so far."""
        return dict(sum((Counter(e) for e in self.epochs), Counter()))


def write_profile(histogram: dict[str, float], path: Path) -> Path:
    """A hand-made profile (uniform, or the warm-up's 90/10 mix) as a file the data module reads."""
    return MissingSkillProfile(histogram=histogram, meta={"made_by": "skillworld_v2"}).to_json(path)


def fit(
    args: argparse.Namespace,
    root: Path,
    skills: Sequence[str],
    *,
    seed: int,
    data_seed: int,
    epochs: int,
    steps_per_epoch: int,
    profile: Path,
    weighting: str = "proportional",
    floor: float = 0.0,
    init_adapter: str | None = None,
    callbacks: Sequence[Callback] = (),
) -> tuple[SFTModule, SFTDataModule, SkillCounts]:
    """SFT on the pool of ``skills`` for ``epochs * steps_per_epoch`` steps, each epoch's skill counts exact
    (``sampling: stratified``) by ``profile`` with ``weighting`` and ``floor``."""
    L.seed_everything(seed)
    module = SFTModule(
        StudentConfig(model=MODEL, quantization="nf4", lora=LoRAConfig(), init_adapter=init_adapter),
        optimizer=functools.partial(torch.optim.AdamW, lr=args.lr, weight_decay=0.0),
        adapter_dir=str(root / "adapter"),
        seed=seed,
    )
    data = SFTDataModule(
        MODEL,
        train=[question_sets(args, skills)["pool"]],
        batch_size=args.batch_size,
        samples_per_epoch=steps_per_epoch * args.batch_size,
        max_length=160,
        seed=seed,
        data_seed=data_seed,
        sampling="stratified",
        initial_profile=str(profile),
        weighting=weighting,
        weight_power=args.sharpen_power,
        weight_floor=floor,
    )
    counts = SkillCounts()
    trainer = StatTrainer(
        accelerator="cpu",
        max_epochs=epochs,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[counts, *callbacks],
    )
    trainer.fit(module, data)
    return module, data, counts


# ---- Phase 0: the screen --------------------------------------------------------------------------------
class HeldOutCurve(Callback):
    """Scores the held-out problems at the start and after every epoch, with the examples of each skill seen so
    far (from fit's :class:`SkillCounts`, which runs first); a partial file survives a cut-off job."""

    def __init__(self, records: Sequence[ProblemRecord], partial: Path) -> None:
        self.records, self.partial = records, partial
        self.points: list[dict] = []
        self.score_calls: list[list[float]] = []

    def _score(self, trainer: L.Trainer, pl_module: SFTModule) -> None:
        (counts,) = (c for c in trainer.callbacks if isinstance(c, SkillCounts))
        scored = score(pl_module.generation_model(), trainer.datamodule.tokenizer, self.records)
        self.score_calls.append(scored["cpu"])
        self.points.append(
            {
                "step": trainer.global_step,
                "examples": counts.seen(),
                "exact": skill_means(self.records, scored["exact"]),
                "nll": skill_means(self.records, scored["nll"]),
            }
        )
        print(f"screen step {trainer.global_step}: exact {fmean(scored['exact']):.3f}", flush=True)
        self.partial.write_text(json.dumps({"curve": self.points}))

    def on_train_start(self, trainer: L.Trainer, pl_module: SFTModule) -> None:
        self._score(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: SFTModule) -> None:
        self._score(trainer, pl_module)


def screen_job(args: argparse.Namespace, seed: int) -> dict:
    """Uniform SFT from the base model over every world skill, the held-out curve per skill."""
    skills = read_json(args.out / "world.json")["skills"]
    root = args.out / f"screen{seed}"
    root.mkdir(parents=True, exist_ok=True)
    heldout = question_sets(args, skills)["heldout"].load()
    curve = HeldOutCurve(heldout, root / "curve-partial.json")
    _, _, counts = fit(
        args,
        root,
        skills,
        seed=seed,
        data_seed=100 + seed,
        epochs=args.screen_steps // args.checkpoint_steps,
        steps_per_epoch=args.checkpoint_steps,
        profile=write_profile(dict.fromkeys(skills, 1.0), root / "uniform-profile.json"),
        callbacks=[curve],
    )
    return {
        "curve": [{**p, "examples": {s: p["examples"].get(s, 0) for s in skills}} for p in curve.points],
        "skills": skills,
        "mix": counts.epochs,
        "examples": sum(counts.seen().values()),
        "tokens": counts.tokens,
        "cpu": {"batches": counts.batches, "score": curve.score_calls},
    }


def skill_curves(screen: dict) -> dict[str, list[tuple[float, float]]]:
    """(examples of the skill seen, held-out exact match) per checkpoint, per skill."""
    return {s: [(p["examples"][s], p["exact"][s]) for p in screen["curve"]] for s in screen["skills"]}


def select(args: argparse.Namespace) -> dict:
    """The selection rule over the screens' mean curve; writes ``selection.json``."""
    screens = [read_json(job_file(args.out, f"screen:{s}")) for s in args.screen_seeds]
    curves = analysis.mean_curves([skill_curves(s) for s in screens])
    table = analysis.screen_table(curves, tuple(args.window), args.min_reach)
    kept = analysis.select_skills(table, args.keep)
    enough = len(kept) == args.keep
    selection = {
        "curves": curves,
        "table": table,
        "selected": kept if enough else [],
        "qualified": [s for s, row in table.items() if row["qualifies"]],
        "enough": enough,
        "window": list(args.window),
        "min_reach": args.min_reach,
        "partitions": [{"A": a, "B": b} for a, b in analysis.partitions(kept)] if enough else [],
    }
    (args.out / "selection.json").write_text(json.dumps(selection, indent=1))
    print(screen_markdown(table, kept))
    return selection


def screen_markdown(table: dict, kept: Sequence[str]) -> str:
    lines = ["| skill | slope (points / 100 examples) | reach (%) | qualifies | kept |", "|---|---|---|---|---|"]
    for skill, row in sorted(table.items(), key=lambda kv: -math.inf if kv[1]["slope"] is None else -kv[1]["slope"]):
        slope = "n/a" if row["slope"] is None else f"{100 * 100 * row['slope']:.1f}"
        rank = kept.index(skill) + 1 if skill in kept else ""
        lines.append(f"| {skill} | {slope} | {100 * row['reach']:.0f} | {row['qualifies']} | {rank} |")
    return "\n".join(lines)


# ---- Phase 1: the constructed students ------------------------------------------------------------------
def partition_of(args: argparse.Namespace, seed: int) -> tuple[list[str], list[str]]:
    part = read_json(args.out / "selection.json")["partitions"][seed % 2]
    return part["A"], part["B"]


def warmup_job(args: argparse.Namespace, seed: int) -> dict:
    """90% A / 10% B from the base model, then the start figures and the oracle's start profile."""
    known, weak = partition_of(args, seed)
    skills = known + weak
    root = args.out / f"seed{seed}" / "warmup"
    histogram = {**{s: 0.9 / len(known) for s in known}, **{s: 0.1 / len(weak) for s in weak}}
    module, data, counts = fit(
        args,
        root,
        skills,
        seed=seed,
        data_seed=1000 + seed,
        epochs=1,
        steps_per_epoch=args.warmup_steps,
        profile=write_profile(histogram, root / "warmup-profile.json"),
    )
    sets = question_sets(args, skills)
    started = cpu_seconds()
    model, tokenizer = module.generation_model(), data.tokenizer
    profiling = sets["profiling"].load()
    attempts, difficult, diagnoses = profile_round(
        HFEngine(model, tokenizer, batch_size=48),
        profiling,
        GroundTruthDetector(),
        SkillWorldOracle(),
        SamplingParams(max_new_tokens=args.max_new_tokens),
    )
    generate_cpu = cpu_seconds() - started
    profile = MissingSkillProfile.from_round(profiling, {d.question_id: d.skills for d in diagnoses}, epoch=0)
    profile.to_json(root / "start-profile.json")
    right = [float(grade(a.responses[0], a.record.answer)) for a in attempts]
    test = sets["test"].load()
    scored = score(model, tokenizer, test)
    return {
        "known": known,
        "weak": weak,
        "adapter": str(root / "adapter"),
        "profile": profile.to_dict(),
        "targeting": targeting(profile, data.records, skills, weak, args),
        "round": {
            "epoch": 0,
            "skill_accuracy": skill_means(profiling, right),
            "metrics": {"accuracy": fmean(right), "difficult": len(difficult)},
            "histogram": profile.histogram,
        },
        "test": scored,
        "test_skills": [r.skills[0] for r in test],
        "test_exact": skill_means(test, scored["exact"]),
        "mix": counts.epochs,
        "seen": counts.seen(),
        "examples": sum(counts.seen().values()),
        "tokens": counts.tokens,
        "cpu": {"batches": counts.batches, "generate": [generate_cpu, len(profiling)], "score": [scored["cpu"]]},
    }


def targeting(
    profile: MissingSkillProfile, pool: Sequence[ProblemRecord], skills: Sequence[str], weak: Sequence[str], args
) -> dict[str, dict]:
    """The profile's mix under each weighting an arm uses, and its precision, recall and mass against B."""
    out = {}
    for name, weighting in (("proportional", "proportional"), ("sharpened", "power")):
        mix = profile.skill_mix(pool, weighting=weighting, power=args.sharpen_power)
        out[name] = {"mix": mix, **analysis.profile_vs_truth(mix, weak, skills)}
    return out


# ---- Phase 2: the arms ----------------------------------------------------------------------------------
def arm_job(args: argparse.Namespace, arm: str, seed: int) -> dict:
    """One arm of one seed from the seed's warm-up adapter: the end figures, the realised mix, the profiles."""
    start = read_job(args.out, f"warmup:{seed}")
    known, weak = start["known"], start["weak"]
    skills = known + weak
    root = args.out / f"seed{seed}" / arm
    start_profile = args.out / f"seed{seed}" / "warmup" / "start-profile.json"
    callbacks: list[Callback] = []
    reprofiler = None
    if arm == "online":
        reprofiler = SkillReprofiler(
            question_sets(args, skills)["profiling"],
            GroundTruthDetector(),
            SkillWorldOracle(),
            num_questions=len(skills) * args.profile_per_skill,
            at_fit_start=False,
            combine=args.online_combine,
            ema_alpha=args.ema_alpha,
            max_new_tokens=args.max_new_tokens,
            engine="hf",
            batch_size=48,
            seed=seed,
        )
        reprofiler.load_state_dict({"profile": start["profile"], "history": [start["round"]]})
        callbacks.append(reprofiler)
    uniform = arm == "uniform"
    weighting = "power" if arm in ("sharpened", "online") else "proportional"
    module, data, counts = fit(
        args,
        root,
        skills,
        seed=seed,
        data_seed=2000 + seed,
        epochs=args.arm_epochs,
        steps_per_epoch=args.arm_steps_per_epoch,
        profile=write_profile(dict.fromkeys(skills, 1.0), root / "uniform-profile.json") if uniform else start_profile,
        weighting=weighting,
        floor=0.0 if uniform else args.weight_floor,
        init_adapter=start["adapter"],
        callbacks=callbacks,
    )
    test = question_sets(args, skills)["test"].load()
    scored = score(module.generation_model(), data.tokenizer, test)
    rounds = reprofiler.history[1:] if reprofiler else []  # history[0] is the warm-up's round
    # the profile each epoch sampled by: the start profile, then (online) the rounds after epochs 1 .. E-1
    used = [] if uniform else [start["profile"]["histogram"], *(r["histogram"] for r in rounds[: args.arm_epochs - 1])]
    targeting_per_epoch = []
    for histogram in used:
        mix = MissingSkillProfile(histogram=histogram).skill_mix(data.records, None, weighting, args.sharpen_power)
        targeting_per_epoch.append({"mix": mix, **analysis.profile_vs_truth(mix, weak, skills)})
    return {
        "known": known,
        "weak": weak,
        "test": scored,
        "test_skills": [r.skills[0] for r in test],
        "test_exact": skill_means(test, scored["exact"]),
        "mix": counts.epochs,
        "targeting": targeting_per_epoch,
        "rounds": rounds,
        "steps": args.arm_epochs * args.arm_steps_per_epoch,
        "examples": sum(counts.seen().values()),
        "tokens": counts.tokens,
        "cpu": {
            "batches": counts.batches,
            # the re-profiling rounds run inside the training loop, between its batches
            "generate": [counts.train_cpu - sum(counts.batches), len(rounds) * len(skills) * args.profile_per_skill],
            "score": [scored["cpu"]],
        },
    }


# ---- jobs, run in parallel subprocesses -----------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    """Run one job (``screen:S``, ``warmup:S`` or ``arm:ARM:S``) in this process and write its JSON."""
    torch.set_num_threads(args.threads)
    kind, *rest = args.worker.split(":")
    started = time.perf_counter()
    if kind == "screen":
        row = screen_job(args, int(rest[0]))
    elif kind == "warmup":
        row = warmup_job(args, int(rest[0]))
    else:
        row = arm_job(args, rest[0], int(rest[1]))
    row["wall_seconds"] = time.perf_counter() - started
    row["cpu"]["total"] = cpu_seconds()
    row["machine"] = machine()
    path = job_file(args.out, args.worker)
    path.with_suffix(".tmp").write_text(json.dumps(row))
    path.with_suffix(".tmp").replace(path)  # a job file exists only once its job has finished


def run_jobs(args: argparse.Namespace, jobs: Sequence[str]) -> None:
    """Run ``jobs``, ``--jobs`` at a time; finished jobs (their JSON exists) are skipped, so a rerun resumes."""
    options = [a for a in sys.argv[1:] if a not in COMMANDS]
    pending = [job for job in jobs if not job_file(args.out, job).exists()]
    running: dict[str, subprocess.Popen] = {}
    while pending or running:
        for job, process in list(running.items()):
            if process.poll() is not None:
                del running[job]
                if process.returncode != 0:
                    log = job_file(args.out, job).with_suffix(".log")
                    sys.exit(f"job {job} failed (exit {process.returncode}); its log: {log}")
                print(f"done: {job}", flush=True)
        while pending and len(running) < args.jobs:
            job = pending.pop(0)
            log = job_file(args.out, job).with_suffix(".log").open("w")
            command = [sys.executable, __file__, args.command, *options, "--worker", job]
            running[job] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            print(f"started: {job}", flush=True)
        time.sleep(2)


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def check_design(args: argparse.Namespace) -> None:
    """The experiment's flags are those of its first command (``<out>/design.json``); later commands must match."""
    design = json.loads(json.dumps({k: v for k, v in vars(args).items() if k not in RUNNER_FLAGS}, default=str))
    path = args.out / "design.json"
    if not path.exists():
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(design, indent=1))
        return
    first = read_json(path)
    changed = {k: {"first": first.get(k), "now": v} for k, v in design.items() if first.get(k) != v}
    if changed:
        raise SystemExit(
            f"{path} was written with other flags: {changed}; rerun with the flags of the first command, or give a "
            "new --out"
        )


# ---- the commands ---------------------------------------------------------------------------------------
def phase0(args: argparse.Namespace) -> None:
    """The screen, then the selection rule; exits 3 with the finding when too few skills qualify."""
    world = args.out / "world.json"
    if not world.exists():
        world.write_text(json.dumps({"skills": world_skills(args.min_test), "min_test": args.min_test}))
    run_jobs(args, [f"screen:{s}" for s in args.screen_seeds])
    selection = select(args)
    if not selection["enough"]:
        print(
            f"\nPhase 0 finding: {len(selection['qualified'])} skill(s) qualify "
            f"({', '.join(selection['qualified']) or 'none'}), fewer than the {args.keep} the design needs (slope over "
            f"{args.window[0]:g}-{args.window[1]:g} examples of the skill, reach >= {100 * args.min_reach:.0f}%). "
            "That is the result: report it and stop; phase1 will not run.",
            flush=True,
        )
        sys.exit(3)
    print(f"\nkept, fastest first: {selection['selected']}\npartitions (seed mod 2): {selection['partitions']}")


def phase1(args: argparse.Namespace) -> None:
    """The warm-ups of every seed, then the predictions for the preregistration."""
    selection = args.out / "selection.json"
    if not selection.exists() or not read_json(selection)["enough"]:
        raise SystemExit(f"{selection}: no selection of {args.keep} skills; phase0 makes it (or found too few)")
    run_jobs(args, [f"warmup:{s}" for s in args.seeds])
    swv2_report.predict(args)


def phase2(args: argparse.Namespace) -> None:
    """The arms of every seed, once the preregistration is committed."""
    missing = [s for s in args.seeds if not job_file(args.out, f"warmup:{s}").exists()]
    if missing:
        raise SystemExit(f"phase2 needs the warm-ups of seeds {missing}; run phase1 first")
    if not args.unregistered and preregistration(args.results)["commit"] is None:
        raise SystemExit(
            f"commit {args.results / PREREGISTRATION} (the predictions of `predict`, the primary metric, the test and "
            "the margins) before phase2; --unregistered is for plumbing checks only"
        )
    run_jobs(args, [f"arm:{a}:{s}" for s in args.seeds for a in args.arms])


def plan(args: argparse.Namespace) -> None:
    """Every job with its estimated core-seconds from ``COSTS``, and the wall time at ``--jobs`` one-thread jobs."""
    world = args.out / "world.json"
    k = len(read_json(world)["skills"]) if world.exists() else len(world_skills(args.min_test))
    six = args.keep
    measured = swv2_report.measured_costs(args.costs_from) if args.costs_from else {}
    c = {k: v if math.isfinite(v) else COSTS[k] for k, v in {**COSTS, **measured}.items()}  # unmeasured: COSTS
    batch = args.batch_size
    checkpoints = args.screen_steps // args.checkpoint_steps + 1
    phases: dict[str, list[tuple[str, float]]] = {"phase0": [], "phase1": [], "phase2": []}
    for s in args.screen_seeds:
        train = args.screen_steps * batch * c["train_example"]
        scoring = checkpoints * k * args.heldout_per_skill * c["score_question"]
        phases["phase0"].append((f"screen:{s}", c["load"] + train + scoring))
    for s in args.seeds:
        train = args.warmup_steps * batch * c["train_example"]
        rest = six * (args.profile_per_skill * c["generate_question"] + args.test_per_skill * c["score_question"])
        phases["phase1"].append((f"warmup:{s}", c["load"] + train + rest))
    arm_train = args.arm_epochs * args.arm_steps_per_epoch * batch * c["train_example"]
    rounds = args.arm_epochs * six * args.profile_per_skill * c["generate_question"]
    for s in args.seeds:
        for a in args.arms:
            cost = (
                c["load"]
                + arm_train
                + six * args.test_per_skill * c["score_question"]
                + (rounds if a == "online" else 0)
            )
            phases["phase2"].append((f"arm:{a}:{s}", cost))
    source = args.costs_from or "COSTS"
    print(f"core-s per unit ({source}): { {k: round(v, 3) for k, v in c.items()} }")
    print(f"{k} world skills; {args.jobs} jobs x {args.threads} thread(s)")
    print("| job | estimated core-s | measured core-s |\n|---|---|---|")
    for jobs in phases.values():
        for job, cost in jobs:
            done = job_file(args.out, job)
            measured = f"{read_json(done)['cpu']['total']:.0f}" if done.exists() else ""
            print(f"| {job} | {cost:.0f} | {measured} |")
    total = sum(cost for jobs in phases.values() for _, cost in jobs)
    wall = sum(swv2_report.list_schedule([cost for _, cost in jobs], args.jobs) for jobs in phases.values())
    for name, jobs in phases.items():
        wall_h = swv2_report.list_schedule([cost for _, cost in jobs], args.jobs) / 3600
        print(f"{name}: {sum(cost for _, cost in jobs) / 3600:.2f} core-h, wall ~ {wall_h:.2f} h")
    print(f"total: {total:.0f} core-s = {total / 3600:.2f} core-h; wall at {args.jobs} jobs ~ {wall / 3600:.2f} h")
    proxy = six * args.profile_per_skill * 1.5 * c["generate_question"] + c["load"] + arm_train
    print(f"(not run) a proxy arm with its 2-step profiling round: ~{proxy:.0f} core-s per seed")


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
    elif args.command == "plan":
        plan(args)
    else:
        check_design(args)
        commands = {
            "phase0": phase0,
            "phase1": phase1,
            "predict": swv2_report.predict,
            "phase2": phase2,
            "report": swv2_report.report,
        }
        commands[args.command](args)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_skillworld_v2"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results", help="report folder")
    parser.add_argument("--jobs", type=int, default=2, help="parallel job processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--costs-from", type=Path, help="plan: measure the costs from the finished jobs of this --out")
    world = parser.add_argument_group("world")
    world.add_argument("--min-test", type=int, default=45, help="distinct level-1 test problems a skill needs")
    world.add_argument("--test-per-skill", type=int, default=45)
    world.add_argument("--pool-per-skill", type=int, default=250)
    world.add_argument("--heldout-per-skill", type=int, default=48, help="Phase-0 scoring (train split, not pooled)")
    world.add_argument("--profile-per-skill", type=int, default=16, help="profiling questions (validation split)")
    training = parser.add_argument_group("training")
    training.add_argument("--batch-size", type=int, default=16)
    training.add_argument("--lr", type=float, default=1e-3)
    training.add_argument("--max-new-tokens", type=int, default=40, help="greedy answers of the profiling rounds")
    screen = parser.add_argument_group("phase 0")
    screen.add_argument("--screen-seeds", type=int, nargs="+", default=[0])
    screen.add_argument("--screen-steps", type=int, default=48)
    screen.add_argument("--checkpoint-steps", type=int, default=12)
    screen.add_argument("--window", type=float, nargs=2, default=[15.0, 95.0], help="examples of the skill seen")
    screen.add_argument("--min-reach", type=float, default=0.40)
    screen.add_argument("--keep", type=int, default=6)
    students = parser.add_argument_group("phases 1-2")
    students.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5], help="partition: seed mod 2")
    students.add_argument("--warmup-steps", type=int, default=18)
    students.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    students.add_argument("--arm-epochs", type=int, default=3, help="the online arm re-profiles after each")
    students.add_argument("--arm-steps-per-epoch", type=int, default=6)
    students.add_argument("--weight-floor", type=float, default=0.1)
    students.add_argument("--sharpen-power", type=float, default=2.0)
    students.add_argument("--online-combine", choices=["ema", "replace"], default="ema")
    students.add_argument("--ema-alpha", type=float, default=0.9)
    students.add_argument("--unregistered", action="store_true", help="phase2 without a preregistration (smoke)")
    verdicts = parser.add_argument_group("report")
    verdicts.add_argument("--margin-b", type=float, default=8.0, help="STAT-Sel - uniform on B, points")
    verdicts.add_argument("--margin-a", type=float, default=-4.0, help="STAT-Sel - uniform on A, points")
    verdicts.add_argument("--margin-online", type=float, default=-3.0, help="online - static on B, points")
    verdicts.add_argument("--bootstrap", type=int, default=2000, help="nested bootstrap resamples")
    args = parser.parse_args(argv)
    if args.online_combine == "ema" and args.ema_alpha < 0.9:
        parser.error("--ema-alpha must be >= 0.9 (issue 27), or use --online-combine replace")
    if args.arm_epochs < 3 and "online" in args.arms:
        parser.error("the online arm needs --arm-epochs >= 3: two rounds that change the mix, one that records it")
    if args.screen_steps % args.checkpoint_steps:
        parser.error("--screen-steps must be a multiple of --checkpoint-steps")
    return args


if __name__ == "__main__":
    main()
