"""The teacher's prompts, as text files a user can replace from config.

The defaults live in ``stat_pl/teacher/prompts/*.txt``. A template is a :class:`string.Template`:
fields are written ``$question`` (or ``${question}``) and a literal dollar sign ``$$``, so LaTeX braces
such as ``\\boxed{}`` need no escaping. Each template must use its *required* fields and may use only
its *known* ones (table below); a file that breaks this is rejected when loaded, with the file and the
field named, before any teacher call is paid for.

==============================  =====================================  ===========================
template                        required fields                        optional fields
==============================  =====================================  ===========================
label_skills                    question, skills                       subject, max_skills
label_skills_with_solution      question, skills, solution             subject, max_skills
missing_skills                  question, response, skills             subject, max_skills
missing_skills_with_reference   question, response, skills, answer     subject, max_skills
propose_question                skill, examples                        subject
solve                           question
==============================  =====================================  ===========================

``missing_skills`` is the paper's Stage-2 prompt (appendix): the teacher sees the question, the
student's response and the skill list, and no gold answer, since the paper's point is that
profiling needs no ground truth. ``missing_skills_with_reference`` also shows the reference answer;
it is a departure from the paper, used only when ``TeacherProfiler(show_reference_answer=True)``.
Stage 0 follows the same rule: ``label_skills`` shows the question and the subject's skill list, as the
paper's labelling does; ``label_skills_with_solution`` also shows the reference solution, only when
asked (``build_skill_map(include_solution=True)``). ``propose_question`` (STAT-Syn, and Embed-Syn with the
subject as the skill) asks for the paper's question-writing steps, each in its tag: ``<reason>`` (what the
skill involves and how the examples use it), ``<draft>``, then the final ``<question>``, the only part
read (:func:`stat_pl.building.synthesis.final_question`). A replacement file must keep the final
``<question>`` tag.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from string import Template

from stat_pl.errors import UserError
from stat_pl.teacher.base import Message

PROMPTS_DIR = Path(__file__).parent / "prompts"

#: template name -> (required fields, optional fields)
TEMPLATE_FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "label_skills": (frozenset({"question", "skills"}), frozenset({"subject", "max_skills"})),
    "label_skills_with_solution": (frozenset({"question", "skills", "solution"}), frozenset({"subject", "max_skills"})),
    "missing_skills": (frozenset({"question", "response", "skills"}), frozenset({"subject", "max_skills"})),
    "missing_skills_with_reference": (
        frozenset({"question", "response", "skills", "answer"}),
        frozenset({"subject", "max_skills"}),
    ),
    "propose_question": (frozenset({"skill", "examples"}), frozenset({"subject"})),
    "solve": (frozenset({"question"}), frozenset()),
}


class PromptTemplateError(UserError):
    """A template file that cannot be used; the message names the file and the field."""


@dataclass
class PromptTemplates:
    """Paths of the teacher prompts; ``None`` means the packaged default.

    Args:
        label_skills: Stage 0, label a training question with skills of its subject (the paper's inputs:
            the question and the skill list).
        label_skills_with_solution: Stage 0 with the reference solution shown too (an option; see
            ``build_skill_map(include_solution=...)``).
        missing_skills: Stage 2, judge a student response and name its missing skills (the paper's
            prompt: no reference answer).
        missing_skills_with_reference: Stage 2 with the reference answer shown (a departure; see
            ``TeacherProfiler.show_reference_answer``).
        propose_question: STAT-Syn, write a new question for a skill from three examples (reason,
            draft, final ``<question>``).
        solve: solve a question, final answer in ``\\boxed{}``.
    """

    label_skills: str | None = None
    label_skills_with_solution: str | None = None
    missing_skills: str | None = None
    missing_skills_with_reference: str | None = None
    propose_question: str | None = None
    solve: str | None = None
    _loaded: dict[str, Template] = field(default_factory=dict, init=False, repr=False, compare=False)

    def path(self, name: str) -> Path:
        """The file the template ``name`` is read from."""
        if name not in TEMPLATE_FIELDS:
            raise KeyError(f"no prompt template {name!r}; known: {sorted(TEMPLATE_FIELDS)}")
        override = getattr(self, name)
        return Path(override).expanduser() if override is not None else PROMPTS_DIR / f"{name}.txt"

    def validate(self) -> None:
        """Load every template now, so a broken override fails before the first paid call."""
        for f in fields(self):
            if f.init:
                self.load(f.name)

    def load(self, name: str) -> Template:
        """The checked template ``name`` (read once)."""
        if name not in self._loaded:
            self._loaded[name] = _read_checked(self.path(name), *TEMPLATE_FIELDS[name])
        return self._loaded[name]

    def render(self, name: str, **values: object) -> list[Message]:
        """The chat messages (one user turn) of template ``name`` filled with ``values``."""
        template = self.load(name)
        try:
            text = template.substitute({k: str(v) for k, v in values.items()})
        except KeyError as err:
            raise PromptTemplateError(
                f"prompt template {self.path(name)}: field ${err.args[0]} has no value; "
                f"the caller gave {sorted(values)}"
            ) from None
        return [{"role": "user", "content": text}]


def format_skill_list(skills: Sequence[str]) -> str:
    """Skills as a bulleted list, one per line, as the prompts show them."""
    return "\n".join(f"- {s}" for s in skills)


def format_examples(questions: Sequence[str]) -> str:
    """Example questions numbered ``Example 1:`` ... for the propose_question prompt."""
    return "\n\n".join(f"Example {i}:\n{q.strip()}" for i, q in enumerate(questions, start=1))


def _read_checked(path: Path, required: frozenset[str], optional: frozenset[str]) -> Template:
    if not path.is_file():
        raise PromptTemplateError(f"prompt template {path} does not exist")
    template = Template(path.read_text(encoding="utf-8"))
    used: set[str] = set()
    for match in template.pattern.finditer(template.template):
        if match.group("invalid") is not None:
            line = template.template.count("\n", 0, match.start("invalid")) + 1
            raise PromptTemplateError(
                f"prompt template {path}:{line}: a lone '$' is not a field; write $$ for a literal dollar sign"
            )
        name = match.group("named") or match.group("braced")
        if name:
            used.add(name)
    unknown = sorted(used - required - optional)
    if unknown:
        raise PromptTemplateError(
            f"prompt template {path}: unknown field(s) {['$' + u for u in unknown]}; "
            f"this template may use {sorted('$' + f for f in required | optional)}"
        )
    missing = sorted(required - used)
    if missing:
        raise PromptTemplateError(
            f"prompt template {path}: required field(s) {['$' + m for m in missing]} are missing from the text"
        )
    return template
