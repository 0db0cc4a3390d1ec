"""Does targeting work? Uniform SFT vs static vs online STAT-Sel on the skill world, with seeds and intervals.

The experiment (bench/README.md, "skillworld_effect.py", says what it found):

- Student: SmolLM2-135M-Instruct + QLoRA (NF4, r 16). World: single-skill skill-world problems (one skill
  per question, so a wrong answer is that skill's failure), ``--levels`` (default 1). Fixed sets: a training
  pool, ``--validation-questions`` for profiling and a test set of ``--test-per-skill`` questions per skill.
- ``start`` (one per seed): a short uniform warm-up SFT (``--warmup-steps``) teaches the answer format, so
  that "weakest" is a measured weakness rather than "cannot write the format yet". Then the start figures:
  per-question test accuracy (greedy) and NLL of the gold worked solution (teacher-forced), and the oracle's
  Missing-Skill-Profile on the validation questions. The weakest skills of the seed are the top
  ``--weakest`` skills of that profile (largest share of their validation questions blamed on them),
  ties broken by validation NLL, never by name.
- ``arm`` (one per arm and seed), all from the seed's warm-up adapter with identical step and token
  counts: ``uniform`` (no profile), ``static`` (the start profile, every epoch), ``online`` (the start
  profile, then the SkillReprofiler re-profiles after every epoch with the oracle, EMA ``--ema-alpha``).
  End figures as at the start, and the realised share of training examples per skill in each epoch.
- ``focused`` (optional, ``--arms ... focused``): static with the start profile cut to the seed's weakest
  skills, the fix the diagnosis points to when a student misses nearly everything (bench/README.md).
- ``calibrate``: uniform SFT from seed 0's warm-up for ``--calibrate-epochs`` epochs with per-skill
  validation accuracy and NLL after each epoch: the curve that sets the arms' budget.
- ``report``: means over seeds with 95% bootstrap intervals (over seeds and test questions, paired across
  arms), ``bench/results/skillworld_effect.json``, one per-skill PNG per arm, and the Markdown table.

Every job writes ``<out>/<job>.json`` when it finishes, and a rerun skips finished jobs: an interrupted
experiment resumes at job granularity (a job that was cut off reruns from its start). Jobs run as
``--jobs`` parallel subprocesses with ``--threads`` torch threads each.

    python bench/skillworld_effect.py calibrate
    python bench/skillworld_effect.py run --seeds 0 1 2 --epochs 3 --steps-per-epoch 10
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from stat_pl.callbacks.skill_reprofiler import SkillReprofiler
from stat_pl.data.formatting import IGNORE_INDEX, collate, encode_example, prompt_messages
from stat_pl.data.sft_datamodule import SFTDataModule
from stat_pl.data.skillworld import SKILLWORLD_SKILLS, SkillWorldSource
from stat_pl.engines.base import SamplingParams
from stat_pl.engines.hf import HFEngine
from stat_pl.grading import grade
from stat_pl.missing_skill_profile import MissingSkillProfile
from stat_pl.models import LoRAConfig, StudentConfig
from stat_pl.modules.sft import SFTModule
from stat_pl.plots import plot_bars
from stat_pl.profiling.detectors import GroundTruthDetector
from stat_pl.profiling.oracle import SkillWorldOracle
from stat_pl.profiling.round import profile_round
from stat_pl.trainer import StatTrainer

ARMS = ("uniform", "static", "online", "focused")
MODEL = "offline:smollm2-135m-instruct"
RESULTS = Path(__file__).parent / "results"
# Powers has only ~90 distinct problems at levels 1-2 (a small base squared or cubed): too few for a
# 50-question test set disjoint from training, so the experiment's world leaves it out.
LEFT_OUT = ("powers",)
SKILLS = tuple(s for s in SKILLWORLD_SKILLS if s not in LEFT_OUT)


# ---- the fixed question sets --------------------------------------------------------------------
def world(args: argparse.Namespace):
    return functools.partial(
        SkillWorldSource,
        seed=0,
        levels=tuple(args.levels),
        max_skills=1,
        skill_weights=dict.fromkeys(LEFT_OUT, 0.0),
    )


def test_records(args: argparse.Namespace) -> list:
    """The first ``test_per_skill`` test problems of every skill (the same set for every seed and arm)."""
    wanted = args.test_per_skill * len(SKILLS)
    for draw in (2 * wanted, 4 * wanted):  # unit conversions are rare in the test split: few distinct ones
        taken: dict[str, list] = defaultdict(list)
        for record in world(args)("test", draw).load():
            if len(taken[record.skills[0]]) < args.test_per_skill:
                taken[record.skills[0]].append(record)
        short = {s: len(taken[s]) for s in SKILLS if len(taken[s]) < args.test_per_skill}
        if not short:
            break
    else:
        raise ValueError(f"the skill world's test split gave too few questions for {short}; lower --test-per-skill")
    return [r for s in SKILLS for r in taken[s]]


# ---- measuring a model --------------------------------------------------------------------------
def answer_correctness(model, tokenizer, records: Sequence, max_new_tokens: int) -> list[bool]:
    """Greedy answer of every record, graded against its gold answer."""
    completions = HFEngine(model, tokenizer, batch_size=48).generate(
        [prompt_messages(r.problem) for r in records], SamplingParams(max_new_tokens=max_new_tokens)
    )
    return [grade(c.text, r.answer) for r, (c,) in zip(records, completions, strict=True)]


def solution_nll(model, tokenizer, records: Sequence, batch_size: int = 32) -> list[float]:
    """Mean per-token negative log-likelihood of each record's gold worked solution (teacher-forced)."""
    examples = [
        {**encode_example(tokenizer, r.problem, r.solutions[0], 512), "index": i} for i, r in enumerate(records)
    ]
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], pad_token_id=tokenizer.pad_token_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            labels = batch["labels"][:, 1:]
            token_nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
            )
            counted = (labels != IGNORE_INDEX).sum(1)
            out.extend((token_nll.sum(1) / counted).tolist())
    return out


def measure(model, tokenizer, records: Sequence, max_new_tokens: int) -> dict:
    return {
        "correct": answer_correctness(model, tokenizer, records, max_new_tokens),
        "nll": solution_nll(model, tokenizer, records),
    }


# ---- training -----------------------------------------------------------------------------------
class SkillShares(Callback):
    """Counts the skills of the examples each training epoch actually drew (the realised mix)."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self.tokens = 0  # non-padding tokens forwarded in training
        self._counts: Counter = Counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._counts = Counter()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict, batch_idx: int
    ) -> None:
        data = trainer.datamodule
        self.tokens += int(batch["attention_mask"].sum())
        for index in batch["index"].tolist():
            self._counts.update(data.records[data.train_examples[index]["record"]].skills)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = sum(self._counts.values())
        self.epochs.append({s: c / total for s, c in sorted(self._counts.items())})


def fit(
    args: argparse.Namespace,
    seed: int,
    epochs: int,
    steps_per_epoch: int,
    root: Path,
    *,
    init_adapter: str | None = None,
    profile: Path | None = None,
    callbacks: Sequence[Callback] = (),
) -> tuple[SFTModule, SFTDataModule, L.Trainer]:
    """SFT from ``init_adapter`` for ``epochs * steps_per_epoch`` steps, sampling by ``profile`` (None: uniform)."""
    L.seed_everything(seed)
    module = SFTModule(
        StudentConfig(
            model=MODEL,
            quantization="nf4",
            compute_dtype=args.compute_dtype,
            lora=LoRAConfig(),
            init_adapter=init_adapter,
        ),
        optimizer=functools.partial(torch.optim.AdamW, lr=args.lr, weight_decay=0.0),
        adapter_dir=str(root / "adapter"),
    )
    data = SFTDataModule(
        MODEL,
        train=[world(args)("train", args.pool)],
        batch_size=args.batch_size,
        samples_per_epoch=steps_per_epoch * args.batch_size,
        max_length=160,
        weight_floor=args.weight_floor,
        initial_profile=str(profile) if profile else None,
        seed=seed,
        sampling="weighted",
    )
    trainer = StatTrainer(
        accelerator="cpu",
        precision=args.precision,
        max_epochs=epochs,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    trainer.fit(module, data)
    return module, data, trainer


def start_job(args: argparse.Namespace, seed: int, out: Path) -> dict:
    """Warm-up, then the start figures and the start profile of one seed."""
    root = out / f"seed{seed}" / "warmup"
    module, data, _ = fit(args, seed, 1, args.warmup_steps, root)
    test = test_records(args)
    validation = world(args)("validation", args.validation_questions).load()
    model = module.generation_model()
    attempts, difficult, diagnoses = profile_round(
        HFEngine(model, data.tokenizer, batch_size=48),
        validation,
        GroundTruthDetector(),
        SkillWorldOracle(),
        SamplingParams(max_new_tokens=args.max_new_tokens),
    )
    profile = MissingSkillProfile.from_questions({d.question_id: d.skills for d in diagnoses}, epoch=0)
    profile.to_json(root / "start-profile.json")
    skills = [r.skills[0] for r in validation]
    right = [grade(a.responses[0], a.record.answer) for a in attempts]
    validation_nll = skill_means(solution_nll(model, data.tokenizer, validation), skills)
    validation_accuracy = skill_means(right, skills)
    return {
        "test": measure(model, data.tokenizer, test, args.max_new_tokens),
        "profile": profile.to_dict(),
        "round": {
            "epoch": 0,
            "skill_accuracy": validation_accuracy,
            "metrics": {"accuracy": sum(right) / len(right), "difficult": len(difficult)},
            "histogram": profile.histogram,
        },
        "validation": {
            "accuracy": validation_accuracy,
            "nll": validation_nll,
            "missing": {s: profile.histogram.get(s, 0.0) for s in validation_nll},
        },
        "adapter": str(root / "adapter"),
    }


def arm_job(args: argparse.Namespace, arm: str, seed: int, start: dict, out: Path) -> dict:
    """One arm of one seed, from the seed's warm-up adapter; the end figures and the realised skill mix."""
    root = out / f"seed{seed}" / arm
    shares = SkillShares()
    callbacks = [shares]
    reprofiler = None
    if arm == "online":
        reprofiler = SkillReprofiler(
            world(args)("validation", args.validation_questions),
            GroundTruthDetector(),
            SkillWorldOracle(),
            num_questions=args.validation_questions,
            at_fit_start=False,
            combine="ema",
            ema_alpha=args.ema_alpha,
            max_new_tokens=args.max_new_tokens,
            batch_size=48,
            seed=seed,
        )
        reprofiler.load_state_dict({"profile": start["profile"], "history": [start["round"]]})
        callbacks.append(reprofiler)
    profile = out / f"seed{seed}" / "warmup" / "start-profile.json" if arm != "uniform" else None
    if arm == "focused":
        profile = focused_profile(args, start, profile)
    started = time.perf_counter()
    module, data, trainer = fit(
        args,
        seed,
        args.epochs,
        args.steps_per_epoch,
        root,
        init_adapter=start["adapter"],
        profile=profile,
        callbacks=callbacks,
    )
    seconds = time.perf_counter() - started
    return {
        "test": measure(module.generation_model(), data.tokenizer, test_records(args), args.max_new_tokens),
        "skill_shares": shares.epochs,
        "rounds": reprofiler.history if reprofiler else [],
        "steps": trainer.global_step,
        "examples": trainer.global_step * args.batch_size,
        "tokens": shares.tokens,
        "train_seconds": seconds,
    }


def focused_profile(args: argparse.Namespace, start: dict, profile: Path) -> Path:
    """The start profile cut to the seed's weakest skills: targeting that a nearly flat profile cannot give."""
    questions = Counter(r.skills[0] for r in world(args)("validation", args.validation_questions).load())
    weakest = weakest_skills(start, questions, args.weakest)
    full = MissingSkillProfile.from_json(profile)
    focused = MissingSkillProfile(histogram={s: full.histogram[s] for s in weakest}, meta={"focused_on": weakest})
    return focused.to_json(profile.with_name("focused-profile.json"))


def calibrate_job(args: argparse.Namespace, start: dict, out: Path) -> dict:
    """Uniform SFT from seed 0's warm-up with per-skill validation accuracy and NLL after every epoch."""
    validation = world(args)("validation", args.validation_questions).load()
    skills = [r.skills[0] for r in validation]
    curve: list[dict] = [{"step": 0, "accuracy": start["validation"]["accuracy"], "nll": start["validation"]["nll"]}]

    class Curve(Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            model, tokenizer = pl_module.generation_model(), trainer.datamodule.tokenizer
            correct = answer_correctness(model, tokenizer, validation, args.max_new_tokens)
            curve.append(
                {
                    "step": trainer.global_step,
                    "accuracy": skill_means(correct, skills),
                    "nll": skill_means(solution_nll(model, tokenizer, validation), skills),
                }
            )
            print(f"calibration step {trainer.global_step}: accuracy {sum(correct) / len(correct):.3f}", flush=True)
            (out / "calibrate-partial.json").write_text(json.dumps({"curve": curve}))  # kept if the job is cut off

    fit(
        args,
        0,
        args.calibrate_epochs,
        args.steps_per_epoch,
        out / "calibrate",
        init_adapter=start["adapter"],
        callbacks=[Curve()],
    )
    return {"curve": curve, "steps_per_epoch": args.steps_per_epoch, "batch_size": args.batch_size}


# ---- jobs, run in parallel subprocesses ---------------------------------------------------------
def job_file(out: Path, job: str) -> Path:
    return out / f"{job.replace(':', '-')}.json"


def read_job(out: Path, job: str) -> dict:
    return json.loads(job_file(out, job).read_text())


def worker(args: argparse.Namespace) -> None:
    """Run one job (``start:S``, ``arm:A:S`` or ``calibrate``) in this process and write its JSON."""
    torch.set_num_threads(args.threads)
    kind, *rest = args.worker.split(":")
    started = time.perf_counter()
    if kind == "start":
        row = start_job(args, int(rest[0]), args.out)
    elif kind == "arm":
        row = arm_job(args, rest[0], int(rest[1]), read_job(args.out, f"start:{rest[1]}"), args.out)
    else:
        row = calibrate_job(args, read_job(args.out, "start:0"), args.out)
    row["wall_seconds"] = time.perf_counter() - started
    path = job_file(args.out, args.worker)
    path.with_suffix(".tmp").write_text(json.dumps(row))
    path.with_suffix(".tmp").replace(path)  # a job file exists only once its job has finished


def run_jobs(args: argparse.Namespace, jobs: list[tuple[str, str | None]]) -> None:
    """Run ``(job, needs)`` pairs, ``--jobs`` at a time, each once its ``needs`` job has finished.

    Finished jobs (their JSON exists) are skipped, so a rerun resumes an interrupted experiment.
    """
    options = [a for a in sys.argv[1:] if a not in ("run", "calibrate", "report")]
    pending = [(job, needs) for job, needs in jobs if not job_file(args.out, job).exists()]
    running: dict[str, subprocess.Popen] = {}
    args.out.mkdir(parents=True, exist_ok=True)
    while pending or running:
        for job, process in list(running.items()):
            if process.poll() is not None:
                del running[job]
                if process.returncode != 0:
                    log = job_file(args.out, job).with_suffix(".log")
                    sys.exit(f"job {job} failed (exit {process.returncode}); its log: {log}")
                print(f"done: {job}", flush=True)
        ready = [(j, n) for j, n in pending if n is None or job_file(args.out, n).exists()]
        for job, needs in ready[: args.jobs - len(running)]:
            pending.remove((job, needs))
            log = job_file(args.out, job).with_suffix(".log").open("w")
            command = [sys.executable, __file__, *options, "--worker", job]
            running[job] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            print(f"started: {job}", flush=True)
        time.sleep(2)


# ---- report -------------------------------------------------------------------------------------
def weakest_skills(start: dict, questions: Counter, k: int) -> list[str]:
    """The ``k`` skills the start profile finds most missing: the share of a skill's validation questions
    that the profile blames on it (questions per skill differ), ties broken by the validation NLL of the
    gold solutions, a continuous measure of the same weakness; never by name."""
    validation = start["validation"]
    rate = {s: validation["missing"][s] / questions[s] for s in questions}
    return sorted(rate, key=lambda s: (-rate[s], -validation["nll"][s]))[:k]


def skill_means(correct: Sequence[float], skills: Sequence[str], pick: Sequence[int] | None = None) -> dict:
    """Per-skill mean of per-question values, over the questions ``pick`` (default all)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for i in pick if pick is not None else range(len(correct)):
        groups[skills[i]].append(float(correct[i]))
    return {s: sum(v) / len(v) for s, v in groups.items()}


def group_mean(per_skill: dict[str, float], group: Sequence[str]) -> float:
    return sum(per_skill[s] for s in group) / len(group)


def diagnosis(runs: dict, skills: Sequence[str], seeds: Sequence[int], arms: Sequence[str], weakest: dict) -> dict:
    """Does the sampler shift the mix, and does the profile find the weak skills?

    ``weak_share``: per arm and epoch, the realised share of training examples of the seed's weakest
    skills (mean over seeds). ``profile_precision``: the share of the start profile's weakest skills that
    are also among the weakest on the test set at the start (test accuracy, ties by test NLL); with k
    skills on both sides it is also the recall.
    """
    weak_share = {
        arm: [
            sum(sum(runs[arm][seed]["skill_shares"][e].get(s, 0.0) for s in weakest[seed]) for seed in seeds)
            / len(seeds)
            for e in range(len(runs[arm][seeds[0]]["skill_shares"]))
        ]
        for arm in arms
    }
    precision = {}
    for seed in seeds:
        test = runs["start"][seed]["test"]
        accuracy, nll = skill_means(test["correct"], skills), skill_means(test["nll"], skills)
        truth = sorted(accuracy, key=lambda s: (accuracy[s], -nll[s]))[: len(weakest[seed])]
        precision[seed] = len(set(truth) & set(weakest[seed])) / len(weakest[seed])
    return {"weak_share": weak_share, "profile_precision": precision}


def summary_statistics(
    runs: dict, skills: Sequence[str], seeds: Sequence[int], arms: Sequence[str], weakest: dict, pick=None
) -> dict:
    """Mean over seeds of weak / other accuracy and NLL, start and per arm (``pick``: resampled questions)."""
    table: dict[str, dict[str, float]] = {}
    for name in ["start", *arms]:
        row: dict[str, list[float]] = defaultdict(list)
        for seed in seeds:
            start = runs["start"][seed]
            weak = weakest[seed]
            test = start["test"] if name == "start" else runs[name][seed]["test"]
            for metric in ("correct", "nll"):
                per_skill = skill_means(test[metric], skills, pick)
                others = [s for s in per_skill if s not in weak]
                row[f"{metric}_weak"].append(group_mean(per_skill, weak))
                row[f"{metric}_others"].append(group_mean(per_skill, others))
        table[name] = {k: sum(v) / len(v) for k, v in row.items()}
    return table


def bootstrap(
    runs: dict, skills: Sequence[str], seeds: Sequence[int], arms: Sequence[str], weakest: dict, reps: int
) -> dict:
    """95% percentile intervals: resample seeds, and test questions within each skill, paired across arms."""
    rng = random.Random(0)
    by_skill_index: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(skills):
        by_skill_index[s].append(i)
    draws: dict[str, list[float]] = defaultdict(list)
    for _ in range(reps):
        seed_draw = [rng.choice(seeds) for _ in seeds]
        pick = [rng.choice(idx) for idx in by_skill_index.values() for _ in idx]
        stats = summary_statistics(runs, skills, seed_draw, arms, weakest, pick)
        for name, row in stats.items():
            for key, value in row.items():
                draws[f"{name}.{key}"].append(value)
        for arm in arms:
            for key in stats[arm]:
                draws[f"{arm}-uniform.{key}"].append(stats[arm][key] - stats["uniform"][key])
        if "static" in arms and "online" in arms:
            for key in stats["online"]:
                draws[f"online-static.{key}"].append(stats["online"][key] - stats["static"][key])
    intervals = {}
    for key, values in draws.items():
        values.sort()
        intervals[key] = (values[int(0.025 * reps)], values[int(0.975 * reps) - 1])
    return intervals


def report(args: argparse.Namespace) -> None:
    """The results JSON, a per-skill PNG per arm, the calibration curve and the Markdown tables (printed).

    Arms run on all ``--seeds`` are compared in one table; an arm run on fewer seeds (a later fix, say) gets
    its own table against ``uniform`` on the seeds it has.
    """
    test = test_records(args)
    skills = [r.skills[0] for r in test]
    seeds_of = {arm: [s for s in args.seeds if job_file(args.out, f"arm:{arm}:{s}").exists()] for arm in args.arms}
    if seeds_of.get("uniform") != list(args.seeds):
        raise ValueError(f"report needs the uniform arm for every seed {args.seeds}; {args.out} has {seeds_of}")
    runs: dict = {"start": {s: read_job(args.out, f"start:{s}") for s in args.seeds}}
    for arm, seeds in seeds_of.items():
        runs[arm] = {s: read_job(args.out, f"arm:{arm}:{s}") for s in seeds}
    questions = Counter(r.skills[0] for r in world(args)("validation", args.validation_questions).load())
    weakest = {seed: weakest_skills(runs["start"][seed], questions, args.weakest) for seed in args.seeds}
    complete = [arm for arm in args.arms if seeds_of[arm] == list(args.seeds)]
    groups = [(complete, list(args.seeds))]
    groups += [(["uniform", arm], seeds_of[arm]) for arm in args.arms if arm not in complete and seeds_of[arm]]
    comparisons = []
    for arms, seeds in groups:
        comparisons.append(
            {
                "arms": arms,
                "seeds": seeds,
                "summary": summary_statistics(runs, skills, seeds, arms, weakest),
                "intervals": bootstrap(runs, skills, seeds, arms, weakest, args.bootstrap),
                "diagnosis": diagnosis(runs, skills, seeds, arms, weakest),
            }
        )
    partial = args.out / "calibrate-partial.json"
    calibration = (
        read_job(args.out, "calibrate")
        if job_file(args.out, "calibrate").exists()
        else {**json.loads(partial.read_text()), "cut_off": True}
        if partial.exists()
        else None
    )
    result = {
        "design": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("worker",)},
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
        },
        "test_questions": {s: skills.count(s) for s in SKILLS},
        "interval": "95% percentile bootstrap over seeds and test questions (per skill), paired across arms",
        "comparisons": comparisons,
        "seeds": {seed: _seed_result(runs, seed, weakest[seed], skills) for seed in args.seeds},
        "calibration": calibration,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "skillworld_effect.json").write_text(json.dumps(result, indent=1))
    for arm, seeds in seeds_of.items():
        plot_bars(
            {
                "start (after warm-up)": _seed_mean([result["seeds"][s]["start"]["accuracy"] for s in seeds]),
                f"{arm}, end": _seed_mean([result["seeds"][s][arm]["accuracy"] for s in seeds]),
            },
            RESULTS / f"skillworld_effect_{arm}.png",
            f"skill world, {arm}: test accuracy per skill (mean of {len(seeds)} seeds)",
            "accuracy (%)",
            rows=list(SKILLS),
            scale=100,
            value_range=(0, 100),
        )
    if calibration:
        plot_calibration(calibration["curve"], RESULTS / "skillworld_effect_calibration.png")
    for comparison in comparisons:
        print(f"\nseeds {comparison['seeds']}:")
        print(markdown_table(comparison["summary"], comparison["intervals"], comparison["arms"]))
        print("diagnosis:", json.dumps(comparison["diagnosis"]))


def _seed_result(runs: dict, seed: int, weakest: list[str], skills: Sequence[str]) -> dict:
    """Everything one seed measured: the weakest set, the start, and each arm's end, mix and cost."""
    arms = {
        arm: {
            **_per_skill(by_seed[seed]["test"], skills),
            **{k: by_seed[seed][k] for k in ("skill_shares", "steps", "examples", "tokens", "train_seconds")},
            "profile_rounds": by_seed[seed]["rounds"],
            "wall_seconds": by_seed[seed]["wall_seconds"],
        }
        for arm, by_seed in runs.items()
        if arm != "start" and seed in by_seed
    }
    start = runs["start"][seed]
    return {"weakest": weakest, "validation": start["validation"], "start": _per_skill(start["test"], skills), **arms}


def plot_calibration(curve: list[dict], path: Path) -> None:
    """Per-skill validation accuracy against optimizer steps, one line per skill (the calibration curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    steps = [point["step"] for point in curve]
    for skill in SKILLS:
        axes.plot(steps, [100 * point["accuracy"].get(skill, 0.0) for point in curve], marker="o", label=skill)
    axes.set(
        xlabel="optimizer steps after the warm-up", ylabel="validation accuracy (%)", title="calibration: uniform SFT"
    )
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _per_skill(test: dict, skills: Sequence[str]) -> dict:
    return {"accuracy": skill_means(test["correct"], skills), "nll": skill_means(test["nll"], skills)}


def _seed_mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {s: sum(r[s] for r in rows) / len(rows) for s in rows[0]}


def markdown_table(point: dict, intervals: dict, arms: Sequence[str]) -> str:
    """Accuracy in points, NLL in nats per solution token; each a mean with its 95% interval."""

    def cell(name: str, key: str, scale: float) -> str:
        low, high = intervals[f"{name}.{key}"]
        digits = 1 if scale == 100 else 3
        return f"{scale * point_value(name, key):.{digits}f} [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"

    def point_value(name: str, key: str) -> float:
        if "-" in name:
            a, b = name.split("-")
            return point[a][key] - point[b][key]
        return point[name][key]

    names = ["start", *arms, *(f"{a}-uniform" for a in arms if a != "uniform")]
    if "static" in arms and "online" in arms:
        names.append("online-static")
    lines = [
        "| arm | accuracy, weakest (%) | accuracy, others (%) | NLL, weakest | NLL, others |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        lines.append(
            f"| {name} | {cell(name, 'correct_weak', 100)} | {cell(name, 'correct_others', 100)} | "
            f"{cell(name, 'nll_weak', 1)} | {cell(name, 'nll_others', 1)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["calibrate", "run", "report"], nargs="?", default="run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=["uniform", "static", "online"])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2], help="skill-world levels")
    parser.add_argument("--pool", type=int, default=3000, help="training problems")
    parser.add_argument("--validation-questions", type=int, default=192, help="profiling questions")
    parser.add_argument("--test-per-skill", type=int, default=50)
    parser.add_argument("--weakest", type=int, default=3, help="how many skills count as the weakest")
    parser.add_argument("--warmup-steps", type=int, default=16, help="uniform warm-up steps before the start")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per arm (online re-profiles after each)")
    parser.add_argument("--calibrate-epochs", type=int, default=3, help="uniform epochs of the calibration curve")
    parser.add_argument("--steps-per-epoch", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-floor", type=float, default=0.1)
    parser.add_argument("--ema-alpha", type=float, default=0.7)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--precision", default="auto", help="Lightning precision ('auto': the hardware decides)")
    parser.add_argument("--compute-dtype", default="auto", help="NF4 compute dtype")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--jobs", type=int, default=2, help="parallel job processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_skillworld_effect"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    elif args.command == "calibrate":
        run_jobs(args, [("start:0", None), ("calibrate", "start:0")])
    elif args.command == "run":
        starts = [(f"start:{s}", None) for s in args.seeds]
        arms = [(f"arm:{a}:{s}", f"start:{s}") for s in args.seeds for a in args.arms]
        run_jobs(args, [*starts, *arms, ("calibrate", "start:0")])
        report(args)
    else:
        report(args)


if __name__ == "__main__":
    main()
