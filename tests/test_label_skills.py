"""``label-skills`` (Stage 0, the Skill-Map) against a real loopback teacher server, on tiny data.

What a user relies on: the teacher sees the question and the skill list, and the reference solution
only when asked; at most ``max_skills`` skills are kept; the before/after report counts exactly what
the records say; nothing is dropped (an unreadable answer is counted unlabelled); a rerun, or a rerun
after the process was killed, pays for no answer twice.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml
from loopback_teacher import Body, Fault, LoopbackTeacherServer, prompt_text

from stat_pl.cli import stage_parser
from stat_pl.errors import UserError
from stat_pl.profiling.label_stage import build_skill_map
from stat_pl.records import RecordSource, load_records
from stat_pl.teacher import OpenAICompatibleTeacher

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "STAT_PL_LABEL_TEST_KEY"
SKILLS = {
    "algebra": [
        "absolute_value",
        "exponents",
        "factoring",
        "functions",
        "inequalities",
        "linear_equations",
        "quadratics",
    ],
    "geometry": ["area", "circles", "triangles"],
}


def listed_skills(prompt: str) -> list[str]:
    return re.findall(r"^- (\w+)$", prompt, flags=re.MULTILINE)


def teacher_script(body: Body) -> str:
    """What the teacher answers, by the ``[answer:...]`` marker in the question."""
    prompt = prompt_text(body)
    kind = re.search(r"\[answer:(\w+)\]", prompt).group(1)
    listed = listed_skills(prompt)
    if kind == "six":  # one more than max_skills: the first five are kept
        return "".join(f"<skill>{s}</skill>" for s in listed[:6])
    if kind == "two":
        return f"<skill>{listed[-2]}</skill><skill>{listed[-1]}</skill>"
    if kind == "outside":
        return "<skill>quantum_chromodynamics</skill>"
    if kind == "judge":  # a Stage-2 verdict is no label
        return "<judge>correct</judge>"
    return "I cannot tell which skills this needs."


@pytest.fixture
def server():
    with LoopbackTeacherServer(teacher_script, faults=lambda body, seen: _fail_marked(body)) as srv:
        yield srv


def _fail_marked(body: Body) -> Fault | None:
    return Fault.error(503) if "[answer:fail]" in prompt_text(body) else None


@pytest.fixture(autouse=True)
def api_key(monkeypatch) -> str:
    key = f"sk-label-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_ENV, key)
    return key


@pytest.fixture
def catalog(tmp_path: Path) -> str:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"MATH": SKILLS}))
    return str(path)


def make_teacher(server: LoopbackTeacherServer, cache_dir: Path, **overrides) -> OpenAICompatibleTeacher:
    args = dict(
        model="loopback-teacher",
        base_url=server.base_url,
        api_key_env=KEY_ENV,
        timeout=10.0,
        max_retries=0,
        concurrency=4,
        cache_dir=str(cache_dir),
    )
    return OpenAICompatibleTeacher(**{**args, **overrides})


def write_rows(path: Path, rows: list[tuple[str, str, list[str]]]) -> RecordSource:
    """(subject, answer marker, input skills) per row; every row has a reference solution."""
    lines = [
        json.dumps(
            {
                "id": f"q{i}",
                "problem": f"Question {i}. [answer:{marker}]",
                "solution": f"SOLUTION-{i}: so the answer is $\\boxed{{{i}}}$.",
                "subject": subject,
                "skills": skills,
            }
        )
        for i, (subject, marker, skills) in enumerate(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return RecordSource(path=str(path))


def test_the_prompt_shows_question_and_skill_list_and_the_solution_only_when_asked(server, catalog, tmp_path):
    records = write_rows(tmp_path / "rows.jsonl", [("geometry", "two", [])])

    build_skill_map(records, make_teacher(server, tmp_path / "cache"), catalog, output_dir=str(tmp_path / "a"))
    paper_prompt = prompt_text(server.received[-1].body)
    assert "Question 0. [answer:two]" in paper_prompt and listed_skills(paper_prompt) == SKILLS["geometry"]
    assert "SOLUTION-0" not in paper_prompt and "solution" not in paper_prompt.lower()

    build_skill_map(
        records,
        make_teacher(server, tmp_path / "cache"),
        catalog,
        output_dir=str(tmp_path / "b"),
        include_solution=True,
    )
    assert "Reference solution:\nSOLUTION-0: so the answer is" in prompt_text(server.received[-1].body)

    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"id": "no-sol", "problem": "[answer:two]", "answer": "1", "subject": "algebra"}))
    with pytest.raises(UserError, match="no-sol.*has no solution.*include_solution"):
        build_skill_map(
            RecordSource(path=str(bare)),
            make_teacher(server, tmp_path / "cache"),
            catalog,
            output_dir=str(tmp_path / "c"),
            include_solution=True,
        )


ROWS = [
    ("algebra", "six", ["exponents"]),  # relabelled with 5 of the 6 skills named
    ("algebra", "two", []),
    ("geometry", "silent", ["area"]),  # no usable answer: keeps its input label
    ("geometry", "two", []),
    ("algebra", "judge", ["factoring"]),  # a verdict, no skills: keeps its input label
]


def test_relabel_reports_skills_per_question_and_questions_per_skill_before_and_after(
    server, catalog, tmp_path, capsys
):
    out = tmp_path / "labels"
    summary = build_skill_map(
        write_rows(tmp_path / "rows.jsonl", ROWS),
        make_teacher(server, tmp_path / "cache"),
        catalog,
        output_dir=str(out),
        relabel=True,
    )

    labelled = [r.skills for r in load_records(str(out / "records.jsonl"))]
    assert labelled == [
        ("absolute_value", "exponents", "factoring", "functions", "inequalities"),
        ("linear_equations", "quadratics"),
        ("area",),
        ("circles", "triangles"),
        ("factoring",),
    ]
    assert (summary["asked"], summary["labelled"], summary["unlabelled"], summary["kept_existing_labels"]) == (
        5,
        3,
        2,
        0,
    )
    assert summary["teacher_calls"] == server.count == 3 + 2 * 3  # silent and judge asked 3 times each
    written = json.loads((out / "summary.json").read_text())
    before, after = written["before"], written["after"]
    assert before["skills_per_question"] == {"0": 2, "1": 3, "2": 0, "3": 0, "4": 0, "5": 0}
    assert after["skills_per_question"] == {"0": 0, "1": 2, "2": 2, "3": 0, "4": 0, "5": 1}
    assert (before["mean_skills_per_question"], after["mean_skills_per_question"]) == (0.6, 2.2)
    assert (summary["with_skills_before"], summary["with_skills_after"]) == (3, 5)
    # 10 catalog skills; before: area, exponents, factoring once each
    assert [before[f"questions_per_skill_{k}"] for k in ("min", "median", "max")] == [0, 0, 1]
    assert (before["skills_without_questions"], after["skills_without_questions"]) == (7, 0)
    assert [after[f"questions_per_skill_{k}"] for k in ("min", "median", "max")] == [1, 1, 2]
    assert after["questions_per_skill"]["factoring"] == 2 and len(after["questions_per_skill"]) == 10
    assert list(after["fewest_questions"]) == [
        "absolute_value",
        "area",
        "circles",
        "exponents",
        "functions",
        "inequalities",
        "linear_equations",
        "quadratics",
        "triangles",
        "factoring",
    ]
    markdown = (out / "summary.md").read_text()
    assert "| 0 | 2 | 0 |" in markdown and "| 5 | 0 | 1 |" in markdown and "| mean | 0.6 | 2.2 |" in markdown
    assert "| skills without questions | 7 | 0 |" in markdown and "| factoring | 1 | 2 |" in markdown
    assert "| mean | 0.6 | 2.2 |" in capsys.readouterr().out
    assert all((out / png).stat().st_size > 0 for png in ("skills_per_question.png", "questions_per_skill.png"))
    skill_map = json.loads((out / "skill_map.json").read_text())
    assert skill_map["factoring"] == ["q0", "q4"] and skill_map["area"] == ["q2"]


def test_without_relabel_only_questions_without_skills_are_asked(server, catalog, tmp_path):
    summary = build_skill_map(
        write_rows(tmp_path / "rows.jsonl", ROWS),
        make_teacher(server, tmp_path / "cache"),
        catalog,
        output_dir=str(tmp_path / "labels"),
    )

    labelled = [r.skills for r in load_records(str(tmp_path / "labels" / "records.jsonl"))]
    assert labelled == [
        ("exponents",),
        ("linear_equations", "quadratics"),
        ("area",),
        ("circles", "triangles"),
        ("factoring",),
    ]
    assert (summary["asked"], summary["kept_existing_labels"], summary["teacher_calls"]) == (2, 3, 2)


def test_unreadable_answers_and_failed_requests_are_counted_unlabelled_and_nothing_is_dropped(
    server, catalog, tmp_path
):
    rows = [("algebra", "silent", []), ("algebra", "outside", []), ("algebra", "fail", []), ("geometry", "two", [])]

    summary = build_skill_map(
        write_rows(tmp_path / "rows.jsonl", rows),
        make_teacher(server, tmp_path / "cache"),
        catalog,
        output_dir=str(tmp_path / "labels"),
        max_attempts=2,
    )

    written = load_records(str(tmp_path / "labels" / "records.jsonl"))
    assert [r.id for r in written] == ["q0", "q1", "q2", "q3"]
    assert [r.skills for r in written] == [(), (), (), ("circles", "triangles")]
    assert (summary["labelled"], summary["unlabelled"]) == (1, 3)
    assert summary["unmatched_skill_names"] == 2 and summary["unmatched_skills"] == {"quantum_chromodynamics": 2}
    assert summary["after"]["skills_per_question"]["0"] == 3


def test_a_rerun_makes_no_teacher_call_and_writes_the_same_files(server, catalog, tmp_path):
    records = write_rows(tmp_path / "rows.jsonl", ROWS)
    first = build_skill_map(
        records, make_teacher(server, tmp_path / "cache"), catalog, output_dir=str(tmp_path / "a"), relabel=True
    )
    calls = server.count

    again = build_skill_map(
        records, make_teacher(server, tmp_path / "cache"), catalog, output_dir=str(tmp_path / "b"), relabel=True
    )

    assert server.count == calls and again["teacher_calls"] == 0 and again["cache_hits"] == first["teacher_calls"]
    for name in ("records.jsonl", "skill_map.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert {k: v for k, v in again.items() if k not in ("teacher_calls", "cache_hits")} == {
        k: v for k, v in first.items() if k not in ("teacher_calls", "cache_hits")
    }


def test_a_killed_run_resumes_and_asks_no_answered_question_again(catalog, tmp_path):
    """``python -m stat_pl label-skills`` is killed (SIGKILL) while its 4th question is in flight; the rerun
    asks that question and the two never sent, and none of the three already answered."""
    release = threading.Event()
    arrivals = []

    def stall_the_fourth(body: Body, seen: int) -> None:
        arrivals.append(prompt_text(body))
        if len(arrivals) == 4:
            release.wait(60)

    rows = [("algebra", "two", []) for _ in range(6)]
    records = write_rows(tmp_path / "rows.jsonl", rows)
    with LoopbackTeacherServer(teacher_script, faults=stall_the_fourth) as server:
        config = tmp_path / "label.yaml"
        teacher = make_teacher(server, tmp_path / "cache", concurrency=1, timeout=120.0)
        config.write_text(
            yaml.safe_dump(
                {
                    "records": {"path": records.path},
                    "teacher": {
                        "class_path": "stat_pl.teacher.OpenAICompatibleTeacher",
                        "init_args": {
                            "model": teacher.model,
                            "base_url": server.base_url,
                            "api_key_env": KEY_ENV,
                            "timeout": 120,
                            "max_retries": 0,
                            "concurrency": 1,
                            "cache_dir": str(tmp_path / "cache"),
                        },
                    },
                    "catalog": catalog,
                    "output_dir": str(tmp_path / "killed"),
                }
            )
        )
        command = [sys.executable, "-m", "stat_pl", "label-skills", "--config", str(config)]
        process = subprocess.Popen(command, cwd=ROOT, env=os.environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 300
            while server.count < 4 and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert server.count == 4, f"the run did not reach its 4th question: {process.stderr.read()!r}"
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
            release.set()
        assert not (tmp_path / "killed" / "records.jsonl").exists()

        summary = build_skill_map(records, teacher, catalog, output_dir=str(tmp_path / "resumed"))

        asked = [prompt_text(r.body) for r in server.received]
        assert [asked.count(f"{p}") for p in asked[:3]] == [1, 1, 1]  # answered before the kill: never again
        assert asked.count(asked[3]) == 2  # in flight when killed: asked again
        assert len(asked) == 4 + 3 and summary["teacher_calls"] == 3 and summary["cache_hits"] == 3
        assert summary["labelled"] == 6


def test_the_paper_config_labels_every_question_from_the_hub_without_the_solution():
    parser = stage_parser("label-skills")
    config = parser.parse_args(["--config", str(ROOT / "configs" / "paper" / "label_skills_math.yaml")])

    assert (config.relabel, config.include_solution, config.max_skills) == (True, False, 5)
    assert config.records.init_args.path == "DigitalLearningGmbH/MATH-lighteval"
    assert config.records.init_args.split == "train"
    assert config.output_dir == "runs/paper/label"
