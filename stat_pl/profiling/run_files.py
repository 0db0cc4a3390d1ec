"""What an offline run leaves beside its results: a summary table.

The config that made the run is written by the command line, from the parsed config
(:func:`stat_pl.cli.save_stage_config`), not reconstructed from the objects it built.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_summary(output_dir: Path, title: str, rows: Mapping[str, Any], details: Mapping[str, Any]) -> str:
    """``summary.md`` (a two-column table of ``rows``) and ``summary.json`` (``rows`` and ``details``).

    Returns the Markdown, for the caller to print.
    """
    lines = [f"## {title}", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows.items())]
    markdown = "\n".join(lines) + "\n"
    (output_dir / "summary.md").write_text(markdown)
    (output_dir / "summary.json").write_text(json.dumps({**rows, **details}, indent=1, ensure_ascii=False, default=str))
    return markdown
