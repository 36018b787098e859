"""PEP 723 inline script metadata: read, parse and validate a script's ``# /// script`` block."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import MetadataError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["ScriptMetadata", "load_script", "parse_metadata"]

# The reference regular expression of PEP 723.
_BLOCK = re.compile(
    r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$"
)
_OPEN = re.compile(r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)\s*$")
_KNOWN_KEYS = {"requires-python", "dependencies", "tool"}


@dataclass(frozen=True)
class ScriptMetadata:
    """What a script declares about the environment it needs.

    Attributes:
        path: the script file, or None for metadata given without a script.
        source: the script's text ("" without a script).
        requires_python: the ``requires-python`` specifier, if any.
        dependencies: the ``dependencies`` list.
        tool_uv: the ``[tool.uv]`` table.
        tool_hog: the ``[tool.hog]`` table (endpoint definitions).
        has_block: whether the script has a ``# /// script`` block at all.
    """

    path: Path | None = None
    source: str = ""
    requires_python: str | None = None
    dependencies: tuple[str, ...] = ()
    tool_uv: dict[str, Any] = field(default_factory=dict)
    tool_hog: dict[str, Any] = field(default_factory=dict)
    has_block: bool = False


def _where(path: Path | None) -> str:
    return str(path) if path else "<script>"


def parse_metadata(source: str, path: Path | None = None) -> ScriptMetadata:
    """Parse the PEP 723 ``script`` block of ``source``.

    Raises:
        MetadataError: the block is unclosed, duplicated, not valid TOML, or holds values of
            the wrong type (the message names the file, the line and the fix).
    """
    where = _where(path)
    blocks = [m for m in _BLOCK.finditer(source) if m.group("type") == "script"]
    if len(blocks) > 1:
        line = source.count("\n", 0, blocks[1].start()) + 1
        raise MetadataError(
            f"{where}:{line}: a second '# /// script' block; PEP 723 allows one per script"
        )
    if not blocks:
        opened = [m for m in _OPEN.finditer(source) if m.group("type") == "script"]
        if opened:
            line = source.count("\n", 0, opened[0].start()) + 1
            raise MetadataError(
                f"{where}:{line}: '# /// script' block is not closed: end it with a line "
                "'# ///', and start every line inside it with '#' (or '# ' before text)"
            )
        return ScriptMetadata(path=path, source=source)
    match = blocks[0]
    first_line = source.count("\n", 0, match.start()) + 2
    content = "".join(
        line[2:] if line.startswith("# ") else line[1:]
        for line in match.group("content").splitlines(keepends=True)
    )
    try:
        data = tomllib.loads(content)
    except tomllib.TOMLDecodeError as exc:
        raise MetadataError(
            f"{where}: the '# /// script' block (from line {first_line}) is not valid TOML: {exc}"
        ) from None
    return _validate(data, path, source, first_line)


def _validate(data: dict[str, Any], path: Path | None, source: str, line: int) -> ScriptMetadata:
    where = f"{_where(path)}:{line}"
    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise MetadataError(
            f"{where}: unknown key(s) {', '.join(unknown)} in the script block; "
            "PEP 723 knows requires-python, dependencies and [tool.*]"
        )
    requires_python = data.get("requires-python")
    if requires_python is not None:
        if not isinstance(requires_python, str):
            raise MetadataError(f"{where}: requires-python must be a string like \">=3.10\"")
        _check_specifier(requires_python, where)
    deps = data.get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise MetadataError(f"{where}: dependencies must be a list of strings like [\"numpy>=2\"]")
    for dep in deps:
        check_requirement(dep, where)
    tool = data.get("tool", {})
    if not isinstance(tool, dict):
        raise MetadataError(f"{where}: tool must be a table")
    tool_uv = tool.get("uv", {})
    tool_hog = tool.get("hog", {})
    for name, table in (("uv", tool_uv), ("hog", tool_hog)):
        if not isinstance(table, dict):
            raise MetadataError(f"{where}: [tool.{name}] must be a table")
    return ScriptMetadata(
        path=path,
        source=source,
        requires_python=requires_python,
        dependencies=tuple(deps),
        tool_uv=tool_uv,
        tool_hog=tool_hog,
        has_block=True,
    )


def _check_specifier(spec: str, where: str) -> None:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        SpecifierSet(spec)
    except InvalidSpecifier:
        raise MetadataError(
            f"{where}: requires-python = {spec!r} is not a version specifier (try \">=3.10\")"
        ) from None


def check_requirement(dep: str, where: str) -> None:
    """Raise `MetadataError` unless ``dep`` is a PEP 508 requirement."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        Requirement(dep)
    except InvalidRequirement as exc:
        raise MetadataError(
            f"{where}: dependency {dep!r} is not a valid requirement: {exc}"
        ) from None


@lru_cache(maxsize=64)
def _load_cached(path: Path, mtime_ns: int, size: int) -> ScriptMetadata:
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MetadataError(f"{path}: not UTF-8 text: {exc}") from None
    return parse_metadata(source, path)


def load_script(path: str | Path) -> ScriptMetadata:
    """Read and parse the script at ``path`` (cached until the file changes).

    Raises:
        MetadataError: the file cannot be read or its block is malformed.
    """
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError as exc:
        raise MetadataError(f"cannot read script {p}: {exc.strerror}") from None
    return _load_cached(p, st.st_mtime_ns, st.st_size)
