"""``hog doctor``: what bundles and backends need on this machine, checked one by one."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Check", "checks"]


@dataclass(frozen=True)
class Check:
    """One result: ``status`` is ``ok``, ``warn``, ``info`` or ``FAIL``."""

    status: str
    what: str
    detail: str


def checks() -> Iterator[Check]:
    """Run every check, yielding each result as it is known."""
    from .._version import __version__
    from ..environment import runtime_requirements

    yield Check("ok", "python", f"{sys.version.split()[0]} ({sys.executable})")
    yield Check("ok", "hog-executor", f"{__version__}; bundles install it as: "
                f"{' '.join(runtime_requirements())}")
    yield _uv()
    for tool in ("bash", "base64", "timeout", "mktemp"):
        found = shutil.which(tool)
        yield Check("ok" if found else "FAIL", tool, found or "not found (bundles need it)")
    flock = shutil.which("flock")
    yield Check("ok" if flock else "warn", "flock", flock or "not found: concurrent first "
                "builds of one environment are not serialized")
    yield _config_file()
    yield _local_cache()
    yield from _backends()
    for module, extra in (("globus_compute_sdk", "globus"), ("dask", "dask"),
                          ("proxystore", "proxystore")):
        present = importlib.util.find_spec(module) is not None
        yield Check("ok" if present else "info", module, "installed" if present
                    else f"not installed (pip install 'hog-executor[{extra}]')")


def _uv() -> Check:
    from ..backends.processes import uv_binary

    uv = uv_binary()
    if not uv:
        return Check("FAIL", "uv", "not found: pip install uv")
    try:
        out = subprocess.run([uv, "--version"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("FAIL", "uv", f"{uv} does not run: {exc}")
    return Check("ok" if out.returncode == 0 else "FAIL", "uv",
                 f"{out.stdout.strip() or out.stderr.strip()} ({uv})")


def _config_file() -> Check:
    from ..config import _read_user_config
    from ..errors import ConfigError
    from .common import table_names

    try:
        data, path = _read_user_config()
    except ConfigError as exc:
        return Check("FAIL", "config file", str(exc))
    if not os.path.exists(path):
        return Check("ok", "config file", f"{path} (none; optional)")
    names = table_names(data)
    return Check("ok", "config file", f"{path} ({len(names)} endpoint(s): {', '.join(names)})")


def _local_cache() -> Check:
    from .envcache import cache_root, cached_envs

    root = cache_root()
    try:
        (root / "envs").mkdir(parents=True, exist_ok=True)
        writable = os.access(root / "envs", os.W_OK)
        mine = root.stat().st_uid == os.getuid()
    except OSError as exc:
        return Check("FAIL", "local cache", f"{root}: {exc.strerror}; set HOG_CACHE_DIR")
    detail = f"{root} ({len(cached_envs(root))} environment(s))"
    if not mine:
        detail += ": belongs to another user; set HOG_CACHE_DIR"
    elif not writable:
        detail += ": not writable; set HOG_CACHE_DIR"
    return Check("ok" if writable and mine else "FAIL", "local cache", detail)


def _backends() -> Iterator[Check]:
    from ..backends import backend_class, backend_names

    for name in backend_names():
        try:
            backend_class(name)
        except Exception as exc:
            yield Check("FAIL", f"backend {name}", str(exc))
            continue
        yield Check("ok", f"backend {name}", _slurm() if name == "slurm" else "available")


def _slurm() -> str:
    sbatch = shutil.which("sbatch")
    if not sbatch:
        return "installed; sbatch not on PATH (Slurm endpoints only work on a login node)"
    try:
        proc = subprocess.run(["squeue", "-h", "-o", "%i", "-u", os.environ.get("USER", "")],
                              capture_output=True, text=True, timeout=20,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sbatch found, squeue failed: {exc}"
    if proc.returncode != 0:
        return f"sbatch found, but squeue fails: {proc.stderr.strip()[:200]}"
    return f"controller reachable ({sbatch})"
