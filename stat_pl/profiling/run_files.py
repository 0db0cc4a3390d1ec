"""What an offline profiling run leaves beside its results: the config that made it and a summary table.

The stages receive their arguments already built by jsonargparse (a teacher, a detector), so the
config is written back from the arguments: plain values as they are, objects as ``class_path`` plus
the constructor arguments the object keeps under the same name (every stat-pl detector, profiler and
teacher keeps its plain ones). A secret is never an argument: teachers take the *name* of the
environment variable that holds the key.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


def describe(value: Any) -> Any:
    """A YAML-able record of an argument: plain data as is, objects as ``class_path`` / ``init_args``."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [describe(v) for v in value]
    cls = type(value)
    if dataclasses.is_dataclass(value):
        kept = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
    else:
        names = [n for n in inspect.signature(cls.__init__).parameters if n != "self" and not n.startswith("_")]
        kept = {n: getattr(value, n) for n in names if n in vars(value)}
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": describe(kept)}


def write_config(output_dir: Path, arguments: Mapping[str, Any]) -> Path:
    """``config.yaml``: the run's arguments, described (see :func:`describe`)."""
    path = output_dir / "config.yaml"
    path.write_text(yaml.safe_dump(describe(arguments), sort_keys=False, allow_unicode=True))
    return path


def write_summary(output_dir: Path, title: str, rows: Mapping[str, Any], details: Mapping[str, Any]) -> str:
    """``summary.md`` (a two-column table of ``rows``) and ``summary.json`` (``rows`` and ``details``).

    Returns the Markdown, for the caller to print.
    """
    lines = [f"## {title}", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows.items())]
    markdown = "\n".join(lines) + "\n"
    (output_dir / "summary.md").write_text(markdown)
    (output_dir / "summary.json").write_text(json.dumps({**rows, **details}, indent=1, ensure_ascii=False,
                                                        default=str))
    return markdown
