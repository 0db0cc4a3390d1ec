"""The SkillReprofiler on a tiny model: rounds change the sampler's weights, files appear, one-shot, resume."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from stat_pl.callbacks.skill_reprofiler import SkillReprofiler
from stat_pl.data.sft_datamodule import SFTDataModule
from stat_pl.data.skillworld import SKILLWORLD_SKILLS, SkillWorldSource
from stat_pl.engines.base import Completion, SamplingParams
from stat_pl.models import StudentConfig
from stat_pl.modules.sft import SFTModule
from stat_pl.profiling.base import Attempt, Diagnosis
from stat_pl.profiling.detectors import GroundTruthDetector
from stat_pl.profiling.oracle import SkillWorldOracle
from stat_pl.profiling.proxy import SkillMapProxy
from stat_pl.profiling.round import profile_round
from stat_pl.records import ProblemRecord


class RoundRobinProfiler:
    """Names a different skill each round, so consecutive profiles differ (tests the callback, not a profiler)."""

    def __init__(self) -> None:
        self.calls = 0

    def diagnose(self, attempts):
        skill = SKILLWORLD_SKILLS[self.calls % len(SKILLWORLD_SKILLS)]
        self.calls += 1
        return [Diagnosis(a.record.id, (skill,)) for a in attempts]


class WeightsPerEpoch(L.Callback):
    """Records the weights the sampler draws each epoch with."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.weights.append(trainer.datamodule._batch_sampler.sampler.weights.clone())


def make_run(tiny_model_dir: Path, root: Path, profiler=None, max_epochs: int = 2, **reprofiler):
    module = SFTModule(StudentConfig(str(tiny_model_dir), quantization="none", lora=None))
    data = SFTDataModule(
        str(tiny_model_dir),
        train=[SkillWorldSource(n=60, levels=(1,))],
        batch_size=2,
        samples_per_epoch=6,
        max_length=96,
    )
    callback = SkillReprofiler(
        SkillWorldSource(split="validation", n=30, levels=(1,)),
        GroundTruthDetector(),
        profiler or SkillWorldOracle(),
        num_questions=6,
        max_new_tokens=6,
        **reprofiler,
    )
    weights = WeightsPerEpoch()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[callback, weights, L.pytorch.callbacks.ModelCheckpoint(save_last=True)],
    )
    return trainer, module, data, callback, weights


def test_each_round_sets_the_weights_its_profile_gives_and_writes_files(tiny_model_dir, tmp_path):
    trainer, module, data, callback, weights = make_run(tiny_model_dir, tmp_path, RoundRobinProfiler())
    trainer.fit(module, data)
    assert [r["epoch"] for r in callback.history] == [0, 1, 2]
    for epoch in (0, 1, 2):
        assert all((tmp_path / f"profile-epoch{epoch}.{ext}").is_file() for ext in ("json", "png"))
    assert (tmp_path / "skill-accuracy.png").is_file()
    # epoch 0 trained on round 0's profile (one skill), epoch 1 on round 1's (another skill)
    for epoch, skill in enumerate(SKILLWORLD_SKILLS[:2]):
        drawn = weights.weights[epoch]
        favoured = {
            data.records[e["record"]].skills[0]
            for e, w in zip(data.train_examples, drawn, strict=True)
            if w > drawn.min() * 2
        }
        assert favoured == {skill}
    assert weights.weights[0].tolist() != weights.weights[1].tolist()
    assert data.profile.histogram == {SKILLWORLD_SKILLS[2]: 6.0}


def test_one_shot_profiles_once_and_never_changes_the_weights(tiny_model_dir, tmp_path):
    trainer, module, data, callback, weights = make_run(
        tiny_model_dir, tmp_path, RoundRobinProfiler(), one_shot=True, max_epochs=3
    )
    trainer.fit(module, data)
    assert len(callback.history) == 1 and not (tmp_path / "profile-epoch1.json").exists()
    assert all(w.tolist() == weights.weights[0].tolist() for w in weights.weights)
    uniform = torch.full_like(weights.weights[0], 1 / len(weights.weights[0]))
    assert not torch.allclose(weights.weights[0], uniform)


def test_oracle_round_on_garbage_falls_back_to_labels(tiny_model_dir, tmp_path):
    trainer, module, data, callback, _ = make_run(tiny_model_dir, tmp_path, max_epochs=1)
    trainer.fit(module, data)
    profile = callback.history[0]
    assert profile["metrics"]["accuracy"] == 0.0 and profile["metrics"]["difficult"] == 6
    assert sum(profile["histogram"].values()) >= 6  # each unreadable question names its labelled skills


def test_resume_restores_the_latest_profile_and_weights(tiny_model_dir, tmp_path):
    trainer, module, data, callback, _ = make_run(tiny_model_dir, tmp_path, RoundRobinProfiler())
    trainer.fit(module, data)
    latest = data.profile.histogram
    trainer, module, data, callback, weights = make_run(
        tiny_model_dir, tmp_path / "resumed", RoundRobinProfiler(), max_epochs=3
    )
    trainer.fit(module, data, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    assert [r["epoch"] for r in callback.history] == [0, 1, 2, 3]  # no new fit-start round
    assert len(weights.weights) == 1
    expected = torch.tensor(SFTDataModule.example_weights(_with_profile(data, latest)), dtype=torch.float64)
    assert torch.allclose(weights.weights[0], expected)


def _with_profile(data: SFTDataModule, histogram: dict):
    from stat_pl.missing_skill_profile import MissingSkillProfile

    data.profile = MissingSkillProfile(histogram=histogram)
    return data


@pytest.mark.parametrize("combine", ["bogus"])
def test_bad_combine_is_rejected(combine):
    with pytest.raises(ValueError, match="combine must be"):
        SkillReprofiler(SkillWorldSource(), GroundTruthDetector(), SkillWorldOracle(), combine=combine)


def test_rounds_synthesise_new_questions_into_the_synthetic_source(tiny_model_dir, tmp_path, monkeypatch):
    import re

    from loopback_teacher import LoopbackTeacherServer, prompt_text

    from stat_pl.data.synthetic_source import SyntheticSource
    from stat_pl.teacher import OpenAICompatibleTeacher

    def script(body) -> list[str]:
        text = prompt_text(body)
        if text.startswith("Solve the following"):
            n = int(re.search(r"double (\d+)", text).group(1))
            return [f"Twice {n} is \\boxed{{{2 * n}}}"] * body.get("n", 1)
        skill = re.search(r'use the skill "([^"]+)"', text).group(1)
        proposed.append(skill)
        return [f"<question>For {skill}, double {len(proposed) * 10 + i}.</question>" for i in range(body.get("n", 1))]

    proposed: list[str] = []

    monkeypatch.setenv("STAT_PL_TEST_KEY", "sk-test")
    with LoopbackTeacherServer(script) as server:
        teacher = OpenAICompatibleTeacher(
            model="loop",
            base_url=server.base_url,
            api_key_env="STAT_PL_TEST_KEY",
            cache_dir=str(tmp_path / "cache"),
            max_retries=0,
        )
        module = SFTModule(StudentConfig(str(tiny_model_dir), quantization="none"))
        data = SFTDataModule(
            str(tiny_model_dir),
            batch_size=2,
            samples_per_epoch=6,
            max_length=96,
            train=[SkillWorldSource(n=60, levels=(1,)), SyntheticSource(str(tmp_path / "syn.jsonl"))],
            mix_ratios=[0.7, 0.3],
        )
        callback = SkillReprofiler(
            SkillWorldSource(split="validation", n=30, levels=(1,)),
            GroundTruthDetector(),
            RoundRobinProfiler(),
            num_questions=4,
            max_new_tokens=4,
            teacher=teacher,
            synthesize_per_round=2,
        )
        trainer = L.Trainer(
            accelerator="cpu",
            max_epochs=1,
            default_root_dir=tmp_path,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[callback],
        )
        trainer.fit(module, data)
    added = [r["metrics"]["synthetic_added"] for r in callback.history]
    synthetic = SyntheticSource(str(tmp_path / "syn.jsonl")).load()
    assert added == [2, 2] and len(synthetic) == 4 and len({r.problem for r in synthetic}) == 4
    assert {r.skills for r in synthetic} == {(SKILLWORLD_SKILLS[0],), (SKILLWORLD_SKILLS[1],)}
    assert all(r.answer == str(2 * int(re.search(r"double (\d+)", r.problem).group(1))) for r in synthetic)
    assert [r.id for r in data.source_records[-1]] == [r.id for r in synthetic]


class AnswerKey:
    """An Engine that answers each question with a fixed text (the gold answer for some): scripted, in-process."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    def generate(self, prompts, sampling):
        return [[Completion(self.answers[p[-1]["content"]], 3, "stop")] * sampling.n for p in prompts]


def test_profile_round_answers_judges_and_diagnoses():
    questions = [
        ProblemRecord("a", "1+1?", "2", skills=("addition",)),
        ProblemRecord("b", "2*3?", "6", skills=("mult",)),
        ProblemRecord("c", "9-1?", "8"),
    ]
    engine = AnswerKey({"1+1?": "\\boxed{2}", "2*3?": "\\boxed{5}", "9-1?": "no idea"})
    attempts, difficult, diagnoses = profile_round(
        engine, questions, GroundTruthDetector(), SkillMapProxy(), SamplingParams(max_new_tokens=4)
    )
    assert [a.responses for a in attempts] == [("\\boxed{2}",), ("\\boxed{5}",), ("no idea",)]
    assert [a.record.id for a in difficult] == ["b", "c"]
    assert diagnoses == [Diagnosis("b", ("mult",)), Diagnosis("c", (), status="unlabelled")]
    with pytest.raises(ValueError, match="judges 1 response.*sampling.n is 3"):
        profile_round(engine, questions, GroundTruthDetector(), SkillMapProxy(), SamplingParams(n=3))


def test_round_accuracy_per_skill_averages_every_response():
    from stat_pl.callbacks.skill_reprofiler import _accuracy

    attempts = [
        Attempt(ProblemRecord("a", "p", "2", skills=("x", "y")), ("\\boxed{2}", "\\boxed{3}")),
        Attempt(ProblemRecord("b", "p", "4", skills=("x",)), ("\\boxed{4}", "\\boxed{4}")),
    ]
    accuracy, per_skill = _accuracy(attempts)
    assert accuracy == 0.75 and per_skill == {"x": 0.75, "y": 0.5}


def test_a_module_without_generation_model_is_named():
    from stat_pl.engines.live import live_engine

    with pytest.raises(TypeError, match="SkillReprofiler generates with .* LightningModule has no generation_model"):
        live_engine(L.LightningModule(), tokenizer=None, batch_size=1, caller="SkillReprofiler")


def test_the_reprofiler_refuses_a_permutation_sampler_before_any_round(tiny_model_dir, tmp_path):
    """Re-weighting needs weighted drawing; a fixed set iterated once per epoch would silently ignore it."""
    trainer, module, _, callback, _ = make_run(tiny_model_dir, tmp_path)
    data = SFTDataModule(str(tiny_model_dir), train=[SkillWorldSource(n=20, levels=(1,))], batch_size=2, max_length=96)
    assert data.sampling == "permutation"
    with pytest.raises(ValueError, match="set data.sampling: weighted"):
        trainer.fit(module, datamodule=data)
    assert callback.history == []


def test_live_synthesis_is_guarded_against_every_registry_benchmark(shared_data):
    from stat_pl.evaluation.benchmarks import BENCHMARKS

    paths = {"gsm8k": str(shared_data / "eval" / "gsm8k.jsonl")}
    callback = SkillReprofiler(
        SkillWorldSource(split="validation", n=4, levels=(1,)),
        GroundTruthDetector(),
        SkillWorldOracle(),
        contamination_benchmarks=["all"],
        benchmark_paths=paths,
    )
    names = {source.name for source in callback.contamination}
    assert names | {"math_d", "math_validation"} == set(BENCHMARKS)  # MATH-D and MATH-Val are MATH's questions
    assert next(s for s in callback.contamination if s.name == "gsm8k").path == paths["gsm8k"]


def test_rounds_report_answer_metrics_per_skill_and_record_the_questions_asked(tiny_model_dir, tmp_path):
    from stat_pl.evaluation.answer_metrics import answer_breakdowns, answer_summary, score_answers

    trainer, module, data, callback, _ = make_run(tiny_model_dir, tmp_path, max_epochs=1, answer_metrics=True)
    trainer.fit(module, data)
    subset = callback._validation_subset()
    scores = score_answers(module.generation_model(), data.tokenizer, subset, batch_size=callback.batch_size)
    last = callback.history[-1]  # profiled after the only epoch: the model as it is now
    skills = answer_breakdowns(subset, scores)["skill"]
    assert last["answer_exact"] == {s: row["answer_exact"] for s, row in skills.items()}
    assert last["answer_nll"] == pytest.approx({s: row["answer_nll"] for s, row in skills.items()})
    assert set(last["answer_nll"]) == {s for r in subset for s in r.skills}  # every skill-world solution is boxed
    summary = answer_summary(scores)
    assert last["metrics"]["answer_nll"] == pytest.approx(summary["answer_nll"]) and summary["unscored"] == 0
    on_disk = json.loads((tmp_path / "reprofile-history.json").read_text())
    assert on_disk[-1]["answer_exact"] == last["answer_exact"]
    blamed = data.profile.questions
    assert data.profile.asked == {
        s: float(sum(s in r.skills or s in blamed.get(r.id, ()) for r in subset))
        for s in {s for r in subset for s in (*r.skills, *blamed.get(r.id, ()))}
    }


def test_the_writer_logs_answer_metrics_per_skill(tmp_path):
    from stat_pl.callbacks.reprofile_writer import ReprofileWriter
    from stat_pl.missing_skill_profile import MissingSkillProfile

    class Recorder:
        def __init__(self) -> None:
            self.metrics: dict = {}

        def log_metrics(self, metrics, step) -> None:
            self.metrics.update(metrics)

    round_ = {
        "epoch": 1,
        "skill_accuracy": {"a": 0.5},
        "metrics": {"accuracy": 0.5, "answer_exact": 0.25, "answer_nll": 1.5},
        "answer_exact": {"a": 0.25},
        "answer_nll": {"a": 1.5},
    }
    logger = Recorder()
    ReprofileWriter().write(tmp_path, MissingSkillProfile(histogram={"a": 1.0}), [round_], [logger], step=3)
    assert {k: v for k, v in logger.metrics.items() if "answer" in k} == {
        "reprofile/answer_exact": 0.25,
        "reprofile/answer_nll": 1.5,
        "reprofile/answer_exact/a": 0.25,
        "reprofile/answer_nll/a": 1.5,
    }
