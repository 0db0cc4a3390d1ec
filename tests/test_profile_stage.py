"""``python -m stat_pl profile`` and ``label-skills`` end to end, against a real loopback teacher server.

What a user relies on: the command line they type works; every difficult question is labelled or
counted unlabelled; the summary agrees with profile.json; a rerun makes no teacher call and generates
nothing; the API key is in no file; the detectors and profilers build from YAML like the offline ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback
from loopback_teacher import Body, LoopbackTeacherServer, prompt_text

from stat_pl.cli import main
from stat_pl.engines.base import Completion, SamplingParams
from stat_pl.evaluation.benchmarks import split_math_test
from stat_pl.evaluation.scoring import SampleSetting, Timing
from stat_pl.evaluation.store import ResultStore, result_key
from stat_pl.profiling.detectors import ConsistencyDetector
from stat_pl.profiling.profile_stage import profile, select_questions
from stat_pl.profiling.proxy import SkillMapProxy
from stat_pl.profiling.reward_models import ProcessRewardDetector
from stat_pl.profiling.teacher_profiler import TeacherProfiler
from stat_pl.records import ProblemRecord, RecordSource, load_records
from stat_pl.teacher import OpenAICompatibleTeacher

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "STAT_PL_PROFILE_TEST_KEY"


def teacher_script(body: Body) -> str:
    """Names the first two skills of the listed subject and one invented skill; no tag for prealgebra."""
    prompt = prompt_text(body)
    if 'Skills of "prealgebra"' in prompt:
        return "I would rather not say."
    listed = re.findall(r"^- (\w+)$", prompt, flags=re.MULTILINE)
    return (
        f"<judge>incorrect</judge><reason>it stops early</reason><skill>{listed[0]}</skill>"
        f"<skill>{listed[1]}</skill><skill>made_up_skill</skill>"
    )


@pytest.fixture
def server():
    with LoopbackTeacherServer(teacher_script) as srv:
        yield srv


@pytest.fixture
def api_key(monkeypatch) -> str:
    key = f"sk-profile-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_ENV, key)
    return key


def run_profile_command(server: LoopbackTeacherServer, out: Path, cache: Path) -> subprocess.CompletedProcess:
    """The command users type (README), plus a small test budget."""
    command = [
        sys.executable,
        "-m",
        "stat_pl",
        "profile",
        "--config",
        "configs/profile_math.yaml",
        f"--teacher.base_url={server.base_url}",
        f"--teacher.api_key_env={KEY_ENV}",
        "--teacher.timeout=10",
        "--num_questions=3",
        f"--output_dir={out}",
        f"--teacher.cache_dir={cache}",
        "--max_new_tokens=8",
    ]
    done = subprocess.run(command, cwd=ROOT, env=os.environ, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow  # about 80 s on 2 busy CPU cores: two processes, SmolLM2 generating
def test_profile_command_end_to_end_then_a_free_rerun(server, api_key, shared_data, smollm2_dir, tmp_path):
    out, cache = tmp_path / "profile", tmp_path / "teacher_cache"
    first = run_profile_command(server, out, cache)
    calls = server.count

    written = json.loads((out / "profile.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    meta = written["meta"]
    difficult = [q for q, hard in meta["difficulty"].items() if hard]
    rows = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert {k: summary[k] for k in meta["counts"]} == meta["counts"]
    assert summary["questions"] == len(meta["difficulty"]) == len(rows) == 3
    assert summary["difficult"] == len(difficult) > 0
    assert set(written["questions"]) == set(difficult) == set(meta["statuses"])  # none dropped
    assert summary["labelled"] + summary["unlabelled"] == summary["difficult"]
    prealgebra = {r["id"] for r in rows if r["subject"] == "prealgebra" and r["difficult"]}
    assert summary["unlabelled"] == len(prealgebra)
    assert all(bool(written["questions"][q]) == (q not in prealgebra) for q in difficult)
    assert summary["unmatched_skill_names"] == summary["labelled"]  # made_up_skill once per labelled answer
    assert summary["teacher_calls"] == calls == summary["labelled"] + 3 * len(prealgebra)  # 3 tries each
    assert sum(written["histogram"].values()) == 2 * summary["labelled"]
    assert (out / "profile.png").stat().st_size > 0 and "| difficult |" in first.stdout
    assert yaml.safe_load((out / "config.yaml").read_text())["teacher"]["init_args"]["base_url"] == server.base_url

    second = run_profile_command(server, out, cache)

    assert server.count == calls  # every teacher answer came from the cache
    rerun = json.loads((out / "summary.json").read_text())
    assert (rerun["teacher_calls"], rerun["responses_generated"], rerun["responses_reused"]) == (0, 0, 3)
    assert json.loads((out / "profile.json").read_text())["questions"] == written["questions"]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(api_key.encode() not in p.read_bytes() for p in files)
    assert all(api_key not in text for text in (first.stdout, first.stderr, second.stdout, second.stderr))


def test_without_a_teacher_the_skill_map_proxy_profiles_and_responses_are_reused(tiny_model_dir, shared_data, tmp_path):
    args = dict(
        questions=RecordSource(path=str(shared_data / "math" / "test.jsonl")),
        student=str(tiny_model_dir),
        profiler=SkillMapProxy(),
        num_questions=4,
        max_new_tokens=4,
        output_dir=str(tmp_path),
    )
    counts = profile(**args)
    again = profile(**args)
    longer = profile(**{**args, "max_new_tokens": 5})

    written = json.loads((tmp_path / "profile.json").read_text())
    records = {r.id: r for r in select_questions(args["questions"], "validation", 0, 1000, 4)}
    assert counts["difficult"] == 4 and counts["teacher_calls"] == 0  # a random tiny model is never right
    assert {q: tuple(s) for q, s in written["questions"].items()} == {i: r.skills for i, r in records.items()}
    asked = Counter(s for r in records.values() for s in r.skills)
    assert written["asked"] == {s: float(c) for s, c in sorted(asked.items())}  # every question asked, per skill
    assert (counts["responses_generated"], again["responses_generated"], longer["responses_generated"]) == (4, 0, 4)
    with pytest.raises(ValueError, match="not both"):
        profile(**args, teacher=OpenAICompatibleTeacher("m", cache_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="set `teacher`"):
        profile(**{**args, "profiler": None})
    with pytest.raises(ValueError, match="set `temperature` above 0"):
        profile(**args, detector=ConsistencyDetector(k=5))


class InterruptedEngine:
    """An Engine double that answers ``chunks`` generate calls, then is interrupted (Ctrl-C)."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.prompts: list[str] = []

    def generate(self, prompts, sampling: SamplingParams) -> list[list[Completion]]:
        if self.chunks == 0:
            raise KeyboardInterrupt
        self.chunks -= 1
        self.prompts += [p[-1]["content"] for p in prompts]
        return [[Completion(f"answer to {p[-1]['content']}", 3, "stop")] * sampling.n for p in prompts]


def test_an_interrupted_generation_resumes_with_the_missing_questions_only(tmp_path):
    records = [ProblemRecord(id=f"q{i}", problem=f"question {i}", answer="1") for i in range(5)]
    setting = SampleSetting(n=1, temperature=0.0, max_new_tokens=4, top_p=1.0, seed=0, system_prompt=None)
    path = tmp_path / "generations.jsonl"

    def generate(store: ResultStore, engine: InterruptedEngine) -> int:
        return store.generate_missing(
            "student", "profile", records, setting, lambda: engine, chunk_size=2, timing=Timing(), progress=False
        )

    with pytest.raises(KeyboardInterrupt):
        generate(ResultStore(path), InterruptedEngine(chunks=2))

    resumed, engine = ResultStore(path), InterruptedEngine(chunks=1)
    assert len(resumed) == 4  # the two finished chunks were kept
    assert generate(resumed, engine) == 1
    last = resumed.get(result_key("student", "profile", records[4], setting))
    assert engine.prompts == ["question 4"] and last.responses == ["answer to question 4"]
    other = dataclasses.replace(setting, max_new_tokens=5)
    assert ResultStore(path).get(result_key("student", "profile", records[0], other)) is None


def test_validation_questions_are_split_math_tests_and_evaluation_is_disjoint(shared_data):
    source = RecordSource(path=str(shared_data / "math" / "test.jsonl"))
    validation, evaluation = split_math_test(load_records(source), seed=3)

    assert [r.id for r in select_questions(source, "validation", 3, 1000, 20)] == [r.id for r in validation[:20]]
    picked = {r.id for r in select_questions(source, "evaluation", 3, 1000, None)}
    assert picked == {r.id for r in evaluation} and not picked & {r.id for r in validation}


def few_training_rows(shared_data: Path, path: Path) -> Path:
    """One row each: algebra and geometry without skills, prealgebra without, number theory with its skills."""
    rows, wanted = [], {"algebra": False, "geometry": False, "prealgebra": False, "number_theory": True}
    for line in (shared_data / "math" / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        keep = wanted.get(row["subject"])
        if keep is not None and (row["skills"] or not keep):
            rows.append({**row, "skills": row["skills"] if keep else []})
            del wanted[row["subject"]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_label_skills_command_labels_rows_and_a_rerun_is_free(server, api_key, shared_data, tmp_path):
    out = tmp_path / "labels"
    argv = [
        "label-skills",
        "--config",
        str(ROOT / "configs" / "label_skills.yaml"),
        f"--records.path={few_training_rows(shared_data, tmp_path / 'rows.jsonl')}",
        f"--teacher.base_url={server.base_url}",
        f"--teacher.api_key_env={KEY_ENV}",
        f"--teacher.cache_dir={tmp_path / 'cache'}",
        f"--catalog={shared_data / 'skills' / 'catalog.json'}",
        f"--output_dir={out}",
    ]
    main(argv)
    calls = server.count

    labelled = {r.subject: r for r in load_records(str(out / "records.jsonl"))}
    summary = json.loads((out / "summary.json").read_text())
    skill_map = json.loads((out / "skill_map.json").read_text())
    assert len(labelled) == summary["records"] == 4
    assert len(labelled["algebra"].skills) == len(labelled["geometry"].skills) == 2  # made_up_skill is dropped
    assert labelled["prealgebra"].skills == () and labelled["number_theory"].skills  # kept as it was
    assert (summary["labelled"], summary["unlabelled"], summary["kept_existing_labels"]) == (2, 1, 1)
    assert summary["unmatched_skill_names"] == 2
    assert (summary["with_skills_before"], summary["with_skills_after"]) == (1, 3)
    assert summary["after"]["skills_per_question"]["2"] == 2  # algebra and geometry, now with two each
    assert "### Skills per question" in (out / "summary.md").read_text()
    assert {q for ids in skill_map.values() for q in ids} == {r.id for r in labelled.values() if r.skills}
    assert calls == summary["teacher_calls"] == 2 + 3  # prealgebra asked 3 times in all

    main(argv)

    assert server.count == calls and json.loads((out / "summary.json").read_text())["teacher_calls"] == 0
    assert all(api_key.encode() not in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def test_llm_teacher_and_reward_models_build_from_yaml_like_the_offline_parts(tmp_path):
    """The SkillReprofiler callback takes the PRM detector and the LLM teacher's profiler from YAML."""
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"MATH": {"algebra": ["factoring_skills", "polynomial_skills"]}}))
    parser = ArgumentParser()
    parser.add_argument("--callback", type=Callback)
    config = f"""
callback:
  class_path: stat_pl.callbacks.skill_reprofiler.SkillReprofiler
  init_args:
    questions: {{class_path: stat_pl.records.RecordSource, init_args: {{path: {catalog}}}}}
    detector:
      class_path: stat_pl.profiling.reward_models.ProcessRewardDetector
      init_args:
        scorer: {{model: RLHFlow/Llama3.1-8B-PRM-Mistral-Data, quantization: nf4}}
        tau1: 0.8
        tau2: 0.6
        samples_per_question: 2
    profiler:
      class_path: stat_pl.profiling.teacher_profiler.TeacherProfiler
      init_args:
        teacher:
          class_path: stat_pl.teacher.OpenAICompatibleTeacher
          init_args: {{model: gpt-4o-mini, api_key_env: MY_KEY, cache_dir: {tmp_path}}}
        catalog: {catalog}
        max_skills: 2
"""
    callback = parser.instantiate(parser.parse_string(config)).callback

    detector, profiler = callback.detector, callback.profiler
    assert isinstance(detector, ProcessRewardDetector) and detector.scorer._module is None  # loaded when first used
    assert (detector.tau1, detector.tau2, detector.scorer.quantization) == (0.8, 0.6, "nf4")
    assert callback.sampling.n == 2  # the callback samples what the detector needs
    assert isinstance(profiler, TeacherProfiler) and profiler.asking.max_skills == 2
    assert profiler.teacher.api_key_env == "MY_KEY"


def test_two_ranks_answer_their_shares_and_rank_zero_writes_the_one_rank_profile(tiny_model_dir, shared_data, tmp_path):
    """``--devices 2`` (Lightning Fabric, 2 gloo CPU processes): each rank generates half of the 7 questions into the
    one store, rank 0 judges all 7, and the profile, difficulty and responses are those of the 1-rank run."""
    written = {}
    for devices in (1, 2):
        out = tmp_path / f"ranks{devices}"
        command = [
            *("profile", "--questions.path", str(shared_data / "math" / "test.jsonl")),
            *("--student", str(tiny_model_dir), "--profiler", "stat_pl.profiling.proxy.SkillMapProxy"),
            *("--num_questions", "7", "--max_new_tokens", "6", "--batch_size", "2", "--output_dir", str(out)),
            *("--accelerator", "cpu", "--devices", str(devices)),
        ]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        done = subprocess.run(
            [sys.executable, "-m", "stat_pl", *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["responses_generated"] == 7 and summary["questions"] == 7
        if devices == 2:
            assert sorted(summary["responses_generated_per_rank"]) == [3, 4]
        rows = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
        profile_json = json.loads((out / "profile.json").read_text())
        written[devices] = (profile_json["histogram"], profile_json["meta"]["difficulty"], rows)
    assert written[1] == written[2]
    assert len(written[2][2]) == 7
