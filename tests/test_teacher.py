"""The teacher against a real OpenAI-compatible server on 127.0.0.1 that misbehaves on cue.

What a user paying per call relies on: every question ends labelled or counted unlabelled; retries
stay within the bound and wait what Retry-After says; a rerun pays nothing; the API key never reaches
a log line, a file, repr() or a pickle; the cache survives concurrent writers and corruption.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import pickle
import re
import threading
import time
import uuid
from pathlib import Path

import openai
import pytest
from jsonargparse import ArgumentParser
from loopback_teacher import Body, Fault, LoopbackTeacherServer, prompt_text

from stat_pl.engines.base import Completion, SamplingParams
from stat_pl.profiling.base import Attempt
from stat_pl.profiling.teacher_profiler import TeacherProfiler, label_skills
from stat_pl.records import ProblemRecord
from stat_pl.skills import SkillCatalog
from stat_pl.teacher import LocalTeacher, OpenAICompatibleTeacher, Teacher, TeacherCache, TeacherRequest
from stat_pl.teacher.cache import CACHE_FILE_NAME
from stat_pl.teacher.templates import PromptTemplateError, PromptTemplates

KEY_ENV = "STAT_PL_TEST_TEACHER_KEY"
MAX_RETRIES = 2
CATALOG = SkillCatalog(
    {
        "algebra": ["solving_equations", "factoring_skills", "quadratic_equations"],
        "geometry": ["circle_geometry_skills", "triangle_properties"],
    }
)

# behaviour -> teacher output by draw (None = the first try, 1, 2 = re-asks)
ANSWERS = {
    "clean": "<judge>incorrect</judge><reason>sign error</reason><skill>solving_equations</skill>",
    "messy": "Sure! Here is my review.\n**<Judge>** Incorrect </JUDGE>\n< SKILL >Factoring Skills</ skill >\n"
    "<skill>quadratic equations",
    "misspelt": "<judge>incorrect</judge><skill>solvng equatons</skill>",
    "outside": "<skill>quantum chromodynamics</skill><skill>solving_equations</skill>",
    "only_outside": "<judge>incorrect</judge><skill>quantum chromodynamics</skill>",
    "no_tags": "The student should practise algebra more.",
    "geometry": "<skill>Circle Geometry</skill><skill>solving_equations</skill>",
}
# behaviour -> fault by how many times the same request arrived before
FAULTS = {
    "err500_once": lambda seen: Fault.error(500) if seen == 0 else None,
    "ratelimit_once": lambda seen: Fault.rate_limit(0.2) if seen == 0 else None,
    "slow_once": lambda seen: Fault.slow(3.0) if seen == 0 else None,
    "truncated_once": lambda seen: Fault.truncated() if seen == 0 else None,
    "err500_always": lambda seen: Fault.error(503),
    "err400": lambda seen: Fault.error(400),
}


def behaviour(body: Body) -> str:
    return re.search(r"\[behaviour:(\w+)\]", prompt_text(body)).group(1)


def script(body: Body) -> str:
    name = behaviour(body)
    if name == "no_tags_once":
        return ANSWERS["no_tags"] if body.get("seed") is None else ANSWERS["clean"]
    return ANSWERS.get(name, ANSWERS["clean"])


def faults(body: Body, seen: int) -> Fault | None:
    plan = FAULTS.get(behaviour(body))
    return plan(seen) if plan else None


def attempts_for(behaviours: list[str]) -> list[Attempt]:
    return [
        Attempt(
            ProblemRecord(
                id=f"q{i}-{b}",
                problem=f"Solve x + {i} = 0. [behaviour:{b}]",
                answer=str(-i),
                subject="geometry" if b == "geometry" else "algebra",
            ),
            responses=(f"x = {i}",),
        )
        for i, b in enumerate(behaviours)
    ]


@pytest.fixture
def server():
    with LoopbackTeacherServer(script, faults) as srv:
        yield srv


@pytest.fixture
def api_key(monkeypatch) -> str:
    key = f"sk-loopback-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_ENV, key)
    return key


def make_teacher(server: LoopbackTeacherServer, cache_dir: Path, **overrides) -> OpenAICompatibleTeacher:
    args = dict(
        model="loopback-teacher",
        base_url=server.base_url,
        api_key_env=KEY_ENV,
        timeout=1.0,
        max_retries=MAX_RETRIES,
        concurrency=8,
        cache_dir=str(cache_dir),
    )
    return OpenAICompatibleTeacher(**{**args, **overrides})


def test_a_faulty_run_labels_or_counts_every_question_within_the_retry_bound(server, api_key, tmp_path):
    behaviours = [*ANSWERS, "no_tags_once", *FAULTS]
    attempts = attempts_for(behaviours)
    profiler = TeacherProfiler(make_teacher(server, tmp_path), CATALOG, max_attempts=3)

    diagnoses = profiler.diagnose(attempts)

    by_behaviour = {b: d for b, d in zip(behaviours, diagnoses, strict=True)}
    assert [d.question_id for d in diagnoses] == [a.record.id for a in attempts]
    unlabelled = {b for b, d in by_behaviour.items() if d.status == "unlabelled"}
    assert unlabelled == {"only_outside", "no_tags", "err500_always", "err400"}
    assert by_behaviour["messy"].skills == ("factoring_skills", "quadratic_equations")
    assert by_behaviour["misspelt"].skills == ("solving_equations",)
    assert by_behaviour["outside"].skills == ("solving_equations",)
    assert by_behaviour["geometry"].skills == ("circle_geometry_skills",)  # solving_equations is not one
    assert all(
        by_behaviour[b].skills == ("solving_equations",)
        for b in ["no_tags_once", "err500_once", "ratelimit_once", "slow_once", "truncated_once"]
    )
    stats = profiler.stats
    assert (stats["questions"], stats["unlabelled"]) == (len(attempts), 4)
    assert stats["unlabelled_teacher_failures"] == 2 and stats["unlabelled_no_usable_tags"] == 2
    assert stats["unmatched_skills"]["quantum_chromodynamics"] == 1 + 3  # outside once, only_outside 3 tries
    assert stats["unmatched_skills"]["solving_equations"] == 1  # named for the geometry question
    assert stats["teacher_calls"] == server.count
    per_request = server.requests_per_key()
    assert max(per_request.values()) == 1 + MAX_RETRIES
    for received in server.received:
        expected = {"err500_always": 1 + MAX_RETRIES, "err400": 1}.get(behaviour(received.body))
        if expected is not None:
            assert per_request[received.key] == expected

    count = server.count
    rerun = TeacherProfiler(make_teacher(server, tmp_path), CATALOG, max_attempts=3).diagnose(attempts)
    assert rerun == diagnoses
    # failures are not answers: only the two failed questions are asked again
    assert server.count - count == (1 + MAX_RETRIES) + 1


def test_a_second_run_makes_no_http_request(server, api_key, tmp_path):
    attempts = attempts_for(["clean", "messy", "no_tags_once", "err500_once", "truncated_once", "no_tags"])
    first = TeacherProfiler(make_teacher(server, tmp_path), CATALOG).diagnose(attempts)
    count = server.count
    profiler = TeacherProfiler(make_teacher(server, tmp_path), CATALOG)

    assert profiler.diagnose(attempts) == first
    assert server.count == count
    assert profiler.stats["teacher_calls"] == 0 and profiler.stats["cache_hits"] > 0


class RecordedSleeps:
    """The ``time`` module as the ``openai`` client sees it, with ``sleep`` recording the delays it is asked for."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def test_retry_after_is_honoured(server, api_key, tmp_path, monkeypatch):
    """The wait before the retry is the server's Retry-After (0.6 s), not the client's own backoff (at most 0.5 s)."""
    server.faults = lambda body, seen: Fault.rate_limit(0.6) if seen == 0 else None
    sleeps = RecordedSleeps()
    monkeypatch.setattr(openai._base_client, "time", sleeps)  # the openai client waits with time.sleep
    teacher = make_teacher(server, tmp_path)

    assert teacher.complete([{"role": "user", "content": "[behaviour:clean]"}])[0] == ANSWERS["clean"]

    assert sleeps.delays == [0.6]
    assert server.count == 2 and teacher.stats()["retries"] == 1


def test_the_api_key_reaches_no_log_no_file_no_repr(server, api_key, tmp_path, caplog):
    for name in ["", "openai", "httpx", "httpx2", "httpcore", "httpcore2", "stat_pl"]:
        caplog.set_level(logging.DEBUG, logger=name)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    teacher = make_teacher(server, tmp_path / "cache")
    profiler = TeacherProfiler(teacher, CATALOG)

    diagnoses = profiler.diagnose(attempts_for(["clean", "err500_once", "err400", "slow_once"]))
    (out_dir / "diagnoses.txt").write_text(repr(diagnoses) + repr(profiler.stats) + repr(teacher))
    pickled = pickle.dumps(teacher)

    assert {r.authorization for r in server.received} == {f"Bearer {api_key}"}  # the key was used
    assert "Retrying" in caplog.text or "retry" in caplog.text  # retries were logged...
    assert api_key not in caplog.text  # ...without the key
    assert all(api_key not in str(r.args) for r in caplog.records)
    assert api_key not in repr(teacher) and api_key.encode() not in pickled
    assert pickle.loads(pickled).complete([{"role": "user", "content": "[behaviour:clean]"}])
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == CACHE_FILE_NAME for p in files)
    assert all(api_key.encode() not in p.read_bytes() for p in files)


def test_a_missing_key_variable_is_named_and_a_cached_run_needs_none(server, api_key, tmp_path, monkeypatch):
    messages = [{"role": "user", "content": "[behaviour:clean]"}]
    make_teacher(server, tmp_path).complete(messages)
    monkeypatch.delenv(KEY_ENV)

    assert make_teacher(server, tmp_path).complete(messages) == [ANSWERS["clean"]]
    with pytest.raises(Exception, match=KEY_ENV):
        make_teacher(server, tmp_path).complete([{"role": "user", "content": "[behaviour:messy]"}])


def _ask_all(teacher: OpenAICompatibleTeacher, requests: list[TeacherRequest]) -> None:
    teacher.complete_many(requests)


def test_a_killed_run_keeps_every_answer_it_received(server, api_key, tmp_path):
    server.faults = lambda body, seen: Fault.slow(30) if "slow" in prompt_text(body) and seen == 0 else None
    requests = [
        TeacherRequest(({"role": "user", "content": f"[behaviour:clean] {kind} {i}"},))
        for i in range(4)
        for kind in ("fast", "slow")
    ]
    teacher = make_teacher(server, tmp_path, timeout=60)
    run = multiprocessing.get_context("fork").Process(target=_ask_all, args=(teacher, requests))
    run.start()
    deadline = time.monotonic() + 20
    while (server.count < 8 or len(TeacherCache(tmp_path)) < 4) and time.monotonic() < deadline:
        time.sleep(0.05)
    run.kill()  # mid-run: the four slow requests have arrived and are still in flight
    run.join()
    count = server.count

    answers = make_teacher(server, tmp_path).complete_many(requests)

    assert all(a == [ANSWERS["clean"]] for a in answers)
    assert server.count - count == 4  # only the unanswered ones were paid for again


def _put_rows(cache_dir: str, prefix: str, count: int) -> None:
    cache = TeacherCache(cache_dir)
    for i in range(count):
        cache.put(f"{prefix}-{i}", [f"{prefix} answer {i}"])


def test_concurrent_writers_lose_nothing(tmp_path):
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_put_rows, args=(str(tmp_path), f"process{p}", 150)) for p in range(2)]
    shared = TeacherCache(tmp_path)
    threads = [
        threading.Thread(
            target=lambda t=t: [shared.put(f"thread{t}-{i}", [f"thread{t} answer {i}"]) for i in range(60)]
        )
        for t in range(6)
    ]
    for worker in [*processes, *threads]:
        worker.start()
    for worker in [*processes, *threads]:
        worker.join(timeout=60)

    assert [p.exitcode for p in processes] == [0, 0]
    fresh = TeacherCache(tmp_path)
    assert len(fresh) == 2 * 150 + 6 * 60
    assert fresh.get("process1-149") == ["process1 answer 149"]
    assert fresh.get("thread5-59") == ["thread5 answer 59"]


def test_a_corrupt_cache_file_is_set_aside_and_a_fresh_one_started(tmp_path, caplog):
    path = tmp_path / CACHE_FILE_NAME
    garbage = b"this is not an SQLite database " * 200
    path.write_bytes(garbage)

    cache = TeacherCache(tmp_path)
    cache.put("k", ["answer"])

    assert str(path) in caplog.text and "corrupt" in caplog.text
    (aside,) = tmp_path.glob(f"{CACHE_FILE_NAME}.corrupt-*")
    assert aside.read_bytes() == garbage
    assert TeacherCache(tmp_path).get("k") == ["answer"]


class CountingEngine:
    """An Engine double: answers ``"<prompt> #k"`` and counts its generate calls."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[SamplingParams] = []
        self.fail_on = fail_on

    def generate(self, prompts, sampling: SamplingParams) -> list[list[Completion]]:
        self.calls.append(sampling)
        if self.fail_on and any(self.fail_on in p[-1]["content"] for p in prompts):
            raise RuntimeError("out of memory")
        return [[Completion(f"{p[-1]['content']} #{k}", 3, "stop") for k in range(sampling.n)] for p in prompts]


def test_local_teacher_batches_by_sampling_and_caches(tmp_path):
    engine = CountingEngine()
    teacher: Teacher = LocalTeacher(engine, model="tiny", cache_dir=str(tmp_path))
    requests = [
        TeacherRequest(({"role": "user", "content": q},), n=n, temperature=t)
        for q, n, t in [("a", 1, 0.0), ("b", 1, 0.0), ("c", 2, 0.7), ("a", 1, 0.0)]
    ]

    answers = teacher.complete_many(requests)

    assert answers == [["a #0"], ["b #0"], ["c #0", "c #1"], ["a #0"]]
    assert len(engine.calls) == 2  # one batch per sampling setting; the duplicate asked once
    again = LocalTeacher(CountingEngine(fail_on="a"), model="tiny", cache_dir=str(tmp_path))
    assert again.complete_many(requests) == answers and again.engine.calls == []


def test_local_teacher_reports_engine_errors_per_request(tmp_path):
    teacher = LocalTeacher(CountingEngine(fail_on="bad"), model="tiny", cache_dir=str(tmp_path))
    requests = [
        TeacherRequest(({"role": "user", "content": "bad"},)),
        TeacherRequest(({"role": "user", "content": "good"},), temperature=0.5),
    ]

    failed, answered = teacher.complete_many(requests)

    assert "out of memory" in failed.reason and answered == ["good #0"]


def test_label_skills_labels_each_question_of_its_subject(server, api_key, tmp_path):
    records = [
        ProblemRecord(id="r1", problem="[behaviour:messy]", answer="1", subject="algebra"),
        ProblemRecord(id="r2", problem="[behaviour:no_tags]", answer="2", subject="algebra"),
        ProblemRecord(
            id="r3", problem="[behaviour:clean]", answer="3", subject="algebra", skills=("quadratic_equations",)
        ),
    ]

    labelled, stats = label_skills(records, make_teacher(server, tmp_path), CATALOG, max_attempts=2)

    assert [r.skills for r in labelled] == [("factoring_skills", "quadratic_equations"), (), ("quadratic_equations",)]
    assert (stats["labelled"], stats["unlabelled"], stats["kept_existing_labels"]) == (1, 1, 1)
    assert 'Skills of "algebra"' in prompt_text(server.received[0].body)


def test_stage2_shows_the_teacher_no_gold_answer_unless_asked(server, api_key, tmp_path):
    """The paper's Stage-2 prompt has question, response and skills only; the reference answer is opt-in."""
    gold = "GOLD-ANSWER-17"
    record = ProblemRecord(id="g1", problem="Solve x + 17 = 0. [behaviour:clean]", answer=gold, subject="algebra")
    attempt = Attempt(record, responses=("x = 17",))

    default = TeacherProfiler(make_teacher(server, tmp_path), CATALOG)
    assert not default.show_reference_answer
    default.diagnose([attempt])
    paper_prompt = prompt_text(server.received[-1].body)
    assert "Solve x + 17 = 0." in paper_prompt and "x = 17" in paper_prompt and "solving_equations" in paper_prompt
    assert gold not in paper_prompt and "Reference answer" not in paper_prompt

    TeacherProfiler(make_teacher(server, tmp_path), CATALOG, show_reference_answer=True).diagnose([attempt])
    assert f"Reference answer: {gold}" in prompt_text(server.received[-1].body)
    with pytest.raises(ValueError, match="g2 has no answer.*show_reference_answer"):
        TeacherProfiler(make_teacher(server, tmp_path), CATALOG, show_reference_answer=True).diagnose(
            [
                Attempt(
                    ProblemRecord(id="g2", problem="[behaviour:clean]", answer="", subject="algebra"), responses=("x",)
                )
            ]
        )


def test_template_overrides_are_checked_by_name(tmp_path):
    broken = tmp_path / "missing.txt"
    broken.write_text("Review this: $response with skills $skills and $studnet")

    with pytest.raises(PromptTemplateError, match=r"missing\.txt.*\$studnet"):
        PromptTemplates(missing_skills=str(broken)).validate()
    broken.write_text("Review this: $response with skills $skills")
    with pytest.raises(PromptTemplateError, match=r"missing\.txt.*\$question"):
        PromptTemplates(missing_skills=str(broken)).load("missing_skills")
    with pytest.raises(PromptTemplateError, match=r"solve\.txt.*\$question"):
        PromptTemplates().render("solve")
    assert "\\boxed{}" in PromptTemplates().render("solve", question="1+1?")[0]["content"]


def test_the_teacher_is_built_from_config_and_command_line(tmp_path):
    parser = ArgumentParser()
    parser.add_argument("--teacher", type=Teacher)
    config = {
        "class_path": "stat_pl.teacher.OpenAICompatibleTeacher",
        "init_args": {"model": "m", "cache_dir": str(tmp_path)},
    }
    args = parser.parse_args(
        [
            f"--teacher={json.dumps(config)}",
            "--teacher.base_url=http://h:8000/v1",
            "--teacher.api_key_env=MY_KEY",
            "--teacher.timeout=10",
        ]
    )

    teacher = parser.instantiate(args).teacher

    assert isinstance(teacher, OpenAICompatibleTeacher)
    assert (teacher.base_url, teacher.api_key_env, teacher.timeout) == ("http://h:8000/v1", "MY_KEY", 10.0)
