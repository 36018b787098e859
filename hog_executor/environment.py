"""The environment a call needs: what uv builds remotely, and the key it is cached under."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlparse

from ._version import __version__
from .script import ScriptMetadata

__all__ = ["EnvSpec", "env_spec", "runtime_requirements"]

#: Changes whenever the layout of cached environments changes.
ENV_FORMAT = "2"

#: Overrides the requirement that installs hog-executor into remote environments, e.g.
#: ``-e /path/to/checkout`` or ``hog-executor @ file:///path`` for unreleased checkouts.
REQUIREMENT_ENV = "HOG_EXECUTOR_REQUIREMENT"


@dataclass(frozen=True)
class EnvSpec:
    """Everything that decides a cached environment.

    Attributes:
        metadata: a PEP 723 script text holding only the metadata block uv syncs from.
        python: the interpreter request given to ``uv venv --python``.
        runtime: arguments for ``uv pip install --no-deps`` (cloudpickle, hog-executor).
        key: the cache key (a hash of all of the above).
        source_paths: directories put on the environment's ``sys.path`` by a ``.pth`` file
            (an editable checkout of hog-executor: nothing to build).
        inferred: the inferred requirements among the dependencies (calls without a PEP 723
            block: what their pickles refer to, pinned to the client's versions).
    """

    metadata: str
    python: str
    runtime: tuple[str, ...]
    key: str
    source_paths: tuple[str, ...] = ()
    inferred: tuple[str, ...] = ()


def render_metadata(requires_python: str | None, dependencies: tuple[str, ...],
                    tool_uv: dict[str, Any]) -> str:
    """A PEP 723 block with exactly these settings (the text uv syncs the environment from).

    Raises:
        TypeError: a ``tool_uv`` value has no TOML form.
    """
    import tomlkit

    doc = tomlkit.document()
    if requires_python:
        doc["requires-python"] = requires_python
    doc["dependencies"] = list(dependencies)
    if tool_uv:
        tool = tomlkit.table(is_super_table=True)  # written as [tool.uv] alone
        tool["uv"] = tool_uv
        doc["tool"] = tool
    lines = ("# " + line if line.strip() else "#" for line in tomlkit.dumps(doc).splitlines())
    return "\n".join(["# /// script", *lines, "# ///"]) + "\n"


@lru_cache(maxsize=1)
def runtime_requirements() -> tuple[str, ...]:
    """How hog-executor gets into every environment (installed --no-deps).

    It comes at the client's version, so scripts that import it work remotely: from
    ``$HOG_EXECUTOR_REQUIREMENT`` when set, else from the local checkout it was installed
    from (editable or not), else from the package index.
    """
    override = os.environ.get(REQUIREMENT_ENV, "").strip()
    if override:
        import shlex

        return tuple(shlex.split(override))
    return _installed_from()


def _split_editable(args: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Separate ``-e DIR`` pairs (put on sys.path, nothing to build) from real requirements."""
    rest: list[str] = []
    paths: list[str] = []
    it = iter(args)
    for arg in it:
        if arg in ("-e", "--editable"):
            target = next(it, "")
            if target.startswith("file://"):
                target = unquote(urlparse(target).path)
            if os.path.isdir(os.path.join(target, "hog_executor")):
                paths.append(os.path.abspath(target))
                continue
            rest.extend((arg, target))
        else:
            rest.append(arg)
    return tuple(rest), tuple(paths)


def _cloudpickle_pin(dependencies: tuple[str, ...]) -> tuple[str, ...]:
    """The client's cloudpickle version, unless the script pins its own."""
    import cloudpickle
    from packaging.requirements import Requirement

    if any(Requirement(d).name.lower() == "cloudpickle" for d in dependencies):
        return ()
    return (f"cloudpickle=={cloudpickle.__version__}",)


def _installed_from() -> tuple[str, ...]:
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        dist = distribution("hog-executor")
        direct = dist.read_text("direct_url.json")
    except (PackageNotFoundError, OSError):
        direct = None
    if direct:
        info = json.loads(direct)
        url = info.get("url", "")
        if url.startswith("file://") and "dir_info" in info:
            path = unquote(urlparse(url).path)
            if os.path.isdir(path):
                if info["dir_info"].get("editable"):
                    return ("-e", path)
                return (f"hog-executor @ {url}",)
    return (f"hog-executor=={__version__}",)


def _python_request(requires_python: str | None) -> str:
    """Prefer the client's minor version (pickles of code are only portable within one)."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not requires_python:
        return here
    from packaging.specifiers import SpecifierSet

    if SpecifierSet(requires_python).contains(f"{here}.{sys.version_info.micro}"):
        return here
    return requires_python


def _named(dependencies: tuple[str, ...]) -> set[str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return {canonicalize_name(Requirement(d).name) for d in dependencies}


def env_spec(meta: ScriptMetadata, *, requires_python: str | None = None,
             extra_dependencies: tuple[str, ...] = (),
             runtime_packages: tuple[str, ...] = (),
             inferred: tuple[str, ...] = ()) -> EnvSpec:
    """The environment for a script (or, without one, for the executor's settings).

    ``requires_python`` applies when the script does not declare one; ``extra_dependencies``
    are added to the script's. ``inferred`` are requirements inferred for a call without a
    block (``numpy==2.1.3``): each is added unless the dependencies already name that
    package. ``runtime_packages`` are what a call needs besides the script's own
    dependencies (``proxystore``, ``dask`` at the client's versions): each is added unless
    the dependencies already name that package.
    """
    rp = meta.requires_python or requires_python
    deps = tuple(dict.fromkeys((*meta.dependencies, *extra_dependencies)))
    added: tuple[str, ...] = ()
    if inferred:
        named = _named(deps)
        added = tuple(r for r in dict.fromkeys(inferred) if not _named((r,)) & named)
        deps += added
    if runtime_packages:
        named = _named(deps)
        deps += tuple(r for r in runtime_packages if not _named((r,)) & named)
    metadata = render_metadata(rp, deps, meta.tool_uv)
    python = _python_request(rp)
    hog, paths = _split_editable(runtime_requirements())
    # Installed --no-deps after the sync, outside the script's resolver settings
    # (an exclude-newer date must not make the client's cloudpickle unresolvable).
    runtime = (*_cloudpickle_pin(deps), *hog)
    digest = hashlib.sha256(
        "\0".join([ENV_FORMAT, metadata, python, *runtime, "paths", *paths]).encode()
    ).hexdigest()[:20]
    return EnvSpec(metadata=metadata, python=python, runtime=runtime, key=digest,
                   source_paths=paths, inferred=added)
