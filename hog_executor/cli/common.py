"""What the ``hog`` subcommands share: the usage error, argument parsing helpers, file writes."""

from __future__ import annotations

import ast
import os
import re
import shutil
from pathlib import Path
from typing import Any

__all__ = ["CliError", "literal", "parse_endpoint_arg", "table_names", "write_atomic"]

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


class CliError(Exception):
    """A usage problem; the message says what to do instead."""


def literal(text: str) -> Any:
    """A Python literal when ``text`` is one (``3``, ``[1, 2]``, ``'a'``), else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def parse_endpoint_arg(text: str) -> tuple[str, str | None]:
    """Split ``NAME[:UUID]`` and check both parts.

    Raises:
        CliError: the name is not a table name or the UUID is malformed.
    """
    name, _, uuid = text.partition(":")
    if not _TABLE_NAME.match(name):
        raise CliError(f"endpoint name {name!r} must be letters, digits, '-', '_' (dotted for "
                       "variants: anvil.gpu)")
    if uuid and not _UUID.match(uuid):
        raise CliError(f"{uuid!r} is not a Globus Compute endpoint UUID "
                       "(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
    return name, uuid or None


def table_names(tables: dict[str, Any], prefix: str = "") -> list[str]:
    """The endpoint names defined by ``[tool.hog]``-style tables (variants as ``a.b``)."""
    from ..config import COMMON_KEYS

    out: list[str] = []
    for key, value in tables.items():
        if isinstance(value, dict) and key not in COMMON_KEYS and key != "env":
            out.append(prefix + key)
            out.extend(table_names(value, prefix + key + "."))
    return out


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step, keeping the file's mode."""
    tmp = path.with_name(f".{path.name}.hog-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    try:
        if path.exists():
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
