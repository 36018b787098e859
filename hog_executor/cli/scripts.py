"""``hog init`` and ``hog add``: write PEP 723 blocks and endpoint tables into scripts.

Block texts are produced by pure functions; only `add_dependencies` runs a program
(``uv add --script``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import CliError

__all__ = ["add_dependencies", "block_text", "check_endpoint", "insert_block",
           "set_endpoint_table", "template", "toml_value"]

_TEMPLATE = '''\
{block}"""{doc}"""

import hog_executor as hog


@hog.function("{endpoint}")
def hello(name: str) -> str:
    import platform

    return f"hello {{name}} from {{platform.node()}}"


@hog.harness()
def main(name: str = "world") -> str:
    """Run with: hog run {script}  (or: hog run {script} -- --name you)"""
    return hello.remote(name)


if __name__ == "__main__":
    print(main())
'''


def block_text(python: str, name: str, uuid: str | None) -> str:
    """A PEP 723 block with ``requires-python``, no dependencies, and one endpoint table."""
    lines = ["# /// script", f"# requires-python = {json.dumps(python)}", "# dependencies = []",
             "#"]
    if uuid:
        lines += [f"# [tool.hog.{name}]", f'# endpoint = "{uuid}"  # a Globus Compute endpoint']
    else:
        lines += [f"# [tool.hog.{name}]  # settings of the {name!r} endpoint",
                  '# walltime = "00:10:00"',
                  "# # add a remote endpoint: hog add THIS_SCRIPT --endpoint NAME:ENDPOINT_UUID"]
    lines.append("# ///")
    return "\n".join(lines) + "\n"


def template(block: str, path: Path, endpoint: str) -> str:
    """A new script: ``block``, a decorated function on ``endpoint`` and a harness."""
    return _TEMPLATE.format(block=block, doc=f"{path.stem}: functions run with hog-executor.",
                            endpoint=endpoint, script=path.name)


def insert_block(source: str, block: str) -> str:
    """``source`` with ``block`` at its top, after a ``#!`` line and an encoding line."""
    lines = source.splitlines(keepends=True)
    keep = 0
    while keep < len(lines) and keep < 2 and (
            lines[keep].startswith("#!") or re.match(r"#.*coding[:=]", lines[keep])):
        keep += 1
    return "".join(lines[:keep]) + block + "".join(lines[keep:])


def toml_value(text: str) -> Any:
    """``text`` as a TOML value (``600``, ``true``, ``["a"]``, ``"x"``), else as text.

    Dates and times stay text: ``walltime=01:00:00`` means the string.
    """
    import datetime

    import tomlkit

    try:
        value = tomlkit.parse(f"v = {text}")["v"]
    except Exception:
        return text
    if isinstance(value, (datetime.date, datetime.time)):
        return text
    return value


def set_endpoint_table(source: str, name: str, values: dict[str, Any],
                       path: str = "<script>") -> str:
    """``source`` with ``[tool.hog.<name>]`` of its PEP 723 block updated by ``values``.

    Everything else (comments, order, the rest of the script) is kept.

    Raises:
        CliError: the script has no block (run ``hog init`` first).
    """
    import tomlkit

    from ..script import _BLOCK

    match = next((m for m in _BLOCK.finditer(source) if m.group("type") == "script"), None)
    if match is None:
        raise CliError(f"{path} has no '# /// script' block: run hog init {path} first")
    content = "".join(
        line[2:] if line.startswith("# ") else line[1:]
        for line in match.group("content").splitlines(keepends=True)
    )
    doc = tomlkit.parse(content)
    table: Any = doc
    parts = ["tool", "hog", *name.split(".")]
    for i, part in enumerate(parts):
        if part not in table:
            table[part] = tomlkit.table(is_super_table=i < len(parts) - 1)
        table = table[part]
    for key, value in values.items():
        table[key] = value
    text = tomlkit.dumps(doc)
    block = "# /// script\n" + "".join(
        ("# " + line if line.strip() else "#") + "\n" for line in text.splitlines()
    ) + "# ///"
    return source[: match.start()] + block + source[match.end():]


def check_endpoint(source: str, path: Path, name: str) -> None:
    """Raise unless endpoint ``name`` resolves in the script text ``source``.

    An endpoint whose backend is not installed here (Globus Compute, say) passes.

    Raises:
        CliError: an unknown key, an invalid value, or no backend named.
    """
    from ..backends import backend_keys, backend_names
    from ..config import resolve_endpoint
    from ..errors import ConfigError
    from ..script import parse_metadata

    meta = parse_metadata(source, path)
    try:
        resolve_endpoint(name, script_tables=meta.tool_hog, script_source=str(path),
                         backend_keys=backend_keys, builtin_backends=backend_names)
    except ConfigError as exc:
        if "no backend named" in str(exc):
            return
        raise CliError(f"not written: {exc}") from None


def add_dependencies(path: Path, dependencies: list[str]) -> None:
    """Add requirements to the script's block with ``uv add --script``.

    Raises:
        CliError: uv is missing or refused (its message is written to stderr first).
    """
    from ..backends.processes import uv_binary

    uv = uv_binary()
    if not uv:
        raise CliError("uv is not installed: pip install uv (hog add uses uv add --script)")
    proc = subprocess.run([uv, "add", "--script", str(path), *dependencies],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise CliError(f"uv add --script failed (exit status {proc.returncode}); "
                       "its message is above")
