"""``hog timeline``: draw timing records (JSON lines) as a timeline page or image."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import CliError

__all__ = ["default_output", "render_timeline"]


def default_output(records: str) -> Path:
    """Where ``hog timeline RECORDS`` writes without ``-o``: RECORDS with ``.html``."""
    return Path("timeline.html") if records == "-" else Path(records).with_suffix(".html")


def render_timeline(records: str, output: str | Path, title: str | None = None) -> int:
    """Read the records in ``records`` (``-``: stdin) and write their timeline to ``output``.

    Returns:
        int: how many records were drawn.

    Raises:
        CliError: no records, a line that is not a record, an unknown output suffix, or an
            image asked for without matplotlib.
    """
    from ..timeline import read_records, write_timeline

    try:
        if records == "-":
            data = [json.loads(line) for line in sys.stdin if line.strip()]
            if not all(isinstance(r, dict) for r in data):
                raise ValueError("stdin: expected one JSON object per line")
        else:
            data = read_records(records)
    except ValueError as exc:  # json.JSONDecodeError included
        raise CliError(f"{exc}; expected JSON lines, one timing record per line") from None
    if not data:
        raise CliError(f"no timing records in {records}: write them with "
                       "hog_executor.timeline.write_records(futures, path)")
    name = "stdin" if records == "-" else Path(records).name
    try:
        write_timeline(data, output, title or f"timeline of {name}")
    except (ImportError, ValueError) as exc:
        raise CliError(str(exc)) from None
    return len(data)
