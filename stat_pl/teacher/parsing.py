"""Reading the teacher's answers: tags out of messy text, skill names onto the subject's catalog.

Teachers do not write clean XML. :func:`extract_tags` accepts any case and spacing in tags
(``< Skill >``, ``</ SKILL>``), a plural tag (``<skills>``), HTML-escaped tags (``&lt;skill&gt;``),
prose and markdown around them, and an unclosed tag (it runs to the next tag, else to the next blank
line or the end of the text).

Skills: the prompts ask for one skill per ``<skill>`` tag; a tag holding a list separated by commas,
semicolons or new lines is read as several skills. Each name is cleaned of markdown, bullets and
quotes, and matched to the subject's skills in :class:`SkillMatcher`'s order: exact, then
:func:`~stat_pl.skills.normalize_skill` (case, spaces, hyphens, underscores, and a trailing "skill(s)"
word, which ends many Didolkar et al. names), then the closest name by ``difflib`` ratio if it is at
least ``threshold`` (default :data:`DEFAULT_MATCH_THRESHOLD` = 0.85: above every ratio between two
skills of one MATH subject, at most 0.83, so a near-miss never lands on a neighbour). Names that match
nothing are returned as ``unmatched``, for the caller to count; they are never added to a catalog.
"""

from __future__ import annotations

import difflib
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

from stat_pl.errors import UserError
from stat_pl.skills import normalize_skill

DEFAULT_MATCH_THRESHOLD = 0.85

_ANY_TAG = re.compile(r"<\s*/?\s*[A-Za-z][\w-]*\s*/?\s*>")
_LIST_SEPARATORS = re.compile(r"[,;\n]+")
_DECORATION = re.compile(r"^(?:[-*+•]\s+|\d+[.)]\s*|#+\s*)+")
_EDGE_CHARS = " \t*`'\"[](){}<>.:;!?"
_SKILL_SUFFIX = re.compile(r"_skills?$")
_DESCRIPTION = re.compile(r"\s*(?::|\s[-–—]\s|\().*$")


def extract_tags(text: str, tag: str) -> list[str]:
    """The stripped contents of every ``<tag>`` in ``text``, in order (see the module docstring)."""
    text = html.unescape(text)
    opener = re.compile(rf"<\s*{re.escape(tag)}s?(?:\s[^<>]*)?>", re.IGNORECASE)
    closer = re.compile(rf"<\s*/\s*{re.escape(tag)}s?\s*>", re.IGNORECASE)
    contents = []
    for match in opener.finditer(text):
        rest = text[match.end() :]
        following = _ANY_TAG.search(rest)
        content = rest[: following.start()] if following else rest
        if following is None or not closer.fullmatch(following.group()):
            content = re.split(r"\n\s*\n", content, maxsplit=1)[0]
        contents.append(content.strip())
    return contents


def split_skill_names(tag_contents: Sequence[str]) -> list[str]:
    """Skill names out of ``<skill>`` contents: lists split, markdown and bullets cleaned off."""
    names = []
    for content in tag_contents:
        for piece in _LIST_SEPARATORS.split(content):
            name = _DECORATION.sub("", piece.strip()).strip(_EDGE_CHARS)
            if name:
                names.append(name)
    return names


class SkillMatcher:
    """Matches teacher-written skill names to one subject's skills (order of rules: module docstring)."""

    def __init__(self, skills: Sequence[str], threshold: float = DEFAULT_MATCH_THRESHOLD) -> None:
        if not 0.0 < threshold <= 1.0:
            raise UserError(f"skill match threshold must be in (0, 1], got {threshold}")
        self.skills = tuple(skills)
        self.threshold = threshold
        self._exact = set(self.skills)
        self._by_core = {_core(s): s for s in self.skills}

    def match(self, name: str) -> str | None:
        """The catalog skill ``name`` means, or None when nothing is close enough."""
        for candidate in dict.fromkeys((name, _DESCRIPTION.sub("", name))):
            if candidate in self._exact:
                return candidate
            core = _core(candidate)
            if core in self._by_core:
                return self._by_core[core]
            close = difflib.get_close_matches(core, list(self._by_core), n=1, cutoff=self.threshold)
            if close:
                return self._by_core[close[0]]
        return None


def _core(name: str) -> str:
    normalised = normalize_skill(name)
    return _SKILL_SUFFIX.sub("", normalised) or normalised


@dataclass(frozen=True)
class SkillAnswer:
    """What one teacher answer says.

    ``skills`` are catalog names (deduplicated, in the teacher's order, at most ``max_skills``);
    ``unmatched`` the normalised names that matched nothing; ``judged_correct`` the ``<judge>`` verdict
    (None without a readable one); ``reason`` the ``<reason>`` text.
    """

    skills: tuple[str, ...]
    unmatched: tuple[str, ...]
    judged_correct: bool | None = None
    reason: str | None = None

    @property
    def usable(self) -> bool:
        """Skills were named, or the teacher judged the response correct (then none are missing)."""
        return bool(self.skills) or self.judged_correct is True


def parse_skill_answer(text: str, matcher: SkillMatcher, max_skills: int) -> SkillAnswer:
    """Read ``<judge>``, ``<reason>`` and ``<skill>`` tags from one teacher answer."""
    matched: list[str] = []
    unmatched: list[str] = []
    for name in split_skill_names(extract_tags(text, "skill")):
        skill = matcher.match(name)
        if skill is None:
            unmatched.append(normalize_skill(name))
        elif skill not in matched:
            matched.append(skill)
    judges = extract_tags(text, "judge")
    reasons = extract_tags(text, "reason")
    return SkillAnswer(
        skills=tuple(matched[:max_skills]),
        unmatched=tuple(unmatched),
        judged_correct=parse_judgement(judges[0]) if judges else None,
        reason=reasons[0] if reasons else None,
    )


def parse_judgement(text: str) -> bool | None:
    """``correct`` / ``yes`` / ``true`` -> True; ``incorrect`` / ``wrong`` / ``no``... -> False; else None."""
    words = re.findall(r"[a-z]+", text.lower())
    if not words:
        return None
    if words[0] in {"incorrect", "wrong", "no", "false", "partially", "partly", "not"}:
        return False
    if words[0] in {"correct", "yes", "true", "right"}:
        return True
    return None
