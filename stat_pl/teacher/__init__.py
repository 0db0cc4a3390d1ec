"""The teacher LLM of Stages 0, 2 and 3: protocol, HTTP and local implementations, cache, prompts."""

from stat_pl.teacher.base import Teacher, TeacherError, TeacherFailure, TeacherRequest
from stat_pl.teacher.cache import TeacherCache
from stat_pl.teacher.local import LocalTeacher
from stat_pl.teacher.openai_client import OpenAICompatibleTeacher
from stat_pl.teacher.templates import PromptTemplates

__all__ = [
    "LocalTeacher",
    "OpenAICompatibleTeacher",
    "PromptTemplates",
    "Teacher",
    "TeacherCache",
    "TeacherError",
    "TeacherFailure",
    "TeacherRequest",
]
