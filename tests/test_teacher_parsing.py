"""Teacher outputs as teachers really write them, and the profile entries a user should get from them."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from stat_pl.profiling.base import Attempt, Diagnosis
from stat_pl.profiling.teacher_profiler import TeacherProfiler
from stat_pl.records import ProblemRecord
from stat_pl.skills import SkillCatalog
from stat_pl.teacher.base import TeacherAnswer, TeacherFailure, TeacherRequest
from stat_pl.teacher.parsing import SkillMatcher, extract_tags, parse_skill_answer

SKILLS = [
    "solving_equations",
    "factoring_skills",
    "quadratic_equations",
    "circle_geometry_skills",
    "counting_principals",
    "triangle_geometry_skills",
]
MATCHER = SkillMatcher(SKILLS)

# teacher output -> (skills, unmatched names, judged correct)
TABLE = [
    (
        "<judge>incorrect</judge>\n<reason>The sign flips.</reason>\n<skill>solving_equations</skill>",
        ("solving_equations",),
        (),
        False,
    ),
    (
        "Sure, let me look.\n\n**Judgement:** <JUDGE> Incorrect. </Judge>\n< Skill >Factoring Skills</ SKILL >\n"
        "Hope this helps!",
        ("factoring_skills",),
        (),
        False,
    ),
    (
        "<skill>Quadratic Equations</skill><skill>COUNTING-PRINCIPALS</skill>",
        ("quadratic_equations", "counting_principals"),
        (),
        None,
    ),
    (
        "<skill>solvng equatons</skill>\n<skill>quadratic equation</skill>",
        ("solving_equations", "quadratic_equations"),
        (),
        None,
    ),
    ("<skill>circle geometry</skill>", ("circle_geometry_skills",), (), None),
    (
        "<skills>solving equations, factoring; quadratic_equations</skills>",
        ("solving_equations", "factoring_skills", "quadratic_equations"),
        (),
        None,
    ),
    (
        "<skill>\n1. **solving_equations**: the student drops a term\n2. `factoring_skills`\n</skill>",
        ("solving_equations", "factoring_skills"),
        (),
        None,
    ),
    ("```xml\n<judge>incorrect</judge>\n<skill>quadratic_equations</skill>\n```", ("quadratic_equations",), (), False),
    ("&lt;skill&gt;counting principals&lt;/skill&gt;", ("counting_principals",), (), None),
    (
        "<judge>incorrect</judge><skill>solving_equations</skill><skill>triangle_geometry_skills",
        ("solving_equations", "triangle_geometry_skills"),
        (),
        False,
    ),
    (
        "<skill>quantum chromodynamics</skill><skill>solving_equations</skill>",
        ("solving_equations",),
        ("quantum_chromodynamics",),
        None,
    ),
    ("<skill>Linear Algebra</skill>", (), ("linear_algebra",), None),
    ("The student should revise how to solve equations.", (), (), None),
    ("<judge>Correct</judge><reason>Fine.</reason>", (), (), True),
    ("<skill>solving_equations</skill><skill>Solving Equations</skill>", ("solving_equations",), (), None),
]


@pytest.mark.parametrize(("text", "skills", "unmatched", "judged_correct"), TABLE)
def test_skill_answers_are_read_from_messy_teacher_output(text, skills, unmatched, judged_correct):
    answer = parse_skill_answer(text, MATCHER, max_skills=5)

    assert answer.skills == skills
    assert answer.unmatched == unmatched
    assert answer.judged_correct is judged_correct
    assert answer.usable == bool(skills or judged_correct)


def test_a_close_name_is_never_matched_to_a_neighbouring_skill():
    assert MATCHER.match("circle_geometry") == "circle_geometry_skills"
    assert MATCHER.match("triangle geometry") == "triangle_geometry_skills"
    assert MATCHER.match("geometry_skills") is None
    assert MATCHER.match("equations") is None


def test_max_skills_keeps_the_first_named():
    text = "".join(f"<skill>{s}</skill>" for s in SKILLS)
    assert parse_skill_answer(text, MATCHER, max_skills=2).skills == tuple(SKILLS[:2])


def test_an_unclosed_tag_stops_at_the_next_tag_or_paragraph():
    assert extract_tags("<reason>x < 3 is wrong\n<skill>a</skill>", "reason") == ["x < 3 is wrong"]
    assert extract_tags("<reason>first paragraph\n\nsecond", "reason") == ["first paragraph"]


class ScriptedTeacher:
    """A Teacher double: the text for question ``q`` at draw ``seed`` (None = first try) is looked up."""

    def __init__(self, outputs: dict[tuple[str, int | None], str]) -> None:
        self.outputs = outputs
        self.asked: list[TeacherRequest] = []

    def complete(self, messages, n=1, temperature=0.0, max_tokens=1024) -> list[str]:
        raise NotImplementedError("the profiler batches through complete_many")

    def complete_many(self, requests: Sequence[TeacherRequest]) -> list[TeacherAnswer]:
        self.asked.extend(requests)
        answers: list[TeacherAnswer] = []
        for r in requests:
            question = r.messages[-1]["content"].split("Problem:\n")[1].split("\n")[0]
            text = self.outputs.get((question, r.seed))
            answers.append(TeacherFailure("HTTP 503", 3) if text is None else [text])
        return answers

    def stats(self) -> dict[str, int]:
        return {"requests": len(self.asked), "cache_hits": 0}


def test_the_profile_holds_one_entry_per_question():
    catalog = SkillCatalog({"algebra": SKILLS})
    outputs = {
        ("q-clean", None): "<judge>incorrect</judge><skill>Solving Equations</skill>",
        ("q-retry", None): "I think the student needs practice.",
        ("q-retry", 1): "<judge>incorrect</judge><skill>factoring</skill>",
        ("q-never", None): "no tags",
        ("q-never", 1): "<skill>topology</skill>",
        ("q-never", 2): "none",
        ("q-correct", None): "<judge>correct</judge>",
    }
    teacher = ScriptedTeacher(outputs)
    attempts = [
        Attempt(ProblemRecord(id=q, problem=q, answer="0", subject="Algebra"), ("response",))
        for q in ["q-clean", "q-retry", "q-never", "q-correct", "q-failed"]
    ]
    profiler = TeacherProfiler(teacher, catalog, max_attempts=3)

    profile = profiler.diagnose(attempts)

    assert profile == [
        Diagnosis("q-clean", ("solving_equations",), "labelled"),
        Diagnosis("q-retry", ("factoring_skills",), "labelled"),
        Diagnosis("q-never", (), "unlabelled"),
        Diagnosis("q-correct", (), "labelled"),
        Diagnosis("q-failed", (), "unlabelled"),
    ]
    assert [r.seed for r in teacher.asked] == [None] * 5 + [1, 1] + [2]
    assert all(r.temperature == 0.7 for r in teacher.asked if r.seed is not None)
    stats = profiler.stats
    assert stats["unmatched_skills"] == {"topology": 1}
    assert (
        stats["labelled"],
        stats["unlabelled_no_usable_tags"],
        stats["unlabelled_teacher_failures"],
        stats["judged_correct"],
        stats["re_asked"],
    ) == (3, 1, 1, 1, 3)


def test_a_question_whose_subject_is_not_in_the_catalog_is_named_before_any_call():
    teacher = ScriptedTeacher({})
    attempt = Attempt(ProblemRecord(id="q7", problem="?", answer="0", subject="topology"), ("r",))

    with pytest.raises(KeyError, match="q7.*topology"):
        TeacherProfiler(teacher, SkillCatalog({"algebra": SKILLS, "geometry": ["x"]})).diagnose([attempt])
    assert teacher.asked == []
