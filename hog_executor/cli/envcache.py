"""``hog cache``: the environments cached on this machine, listed and pruned.

Bundles keep environments in ``${HOG_CACHE_DIR:-${SCRATCH:-${TMPDIR:-/tmp}}}/hog-$USER/envs/
<key>`` and touch ``<key>/.last-used`` on every use; ``.build-*`` directories are builds in
progress (or interrupted), ``.<key>.lock`` the lock a build holds, ``.broken-*`` unusable
environments a bundle moved aside to build them again (removed in the background once the
new one works; kept when building it failed).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CachedEnv", "cache_root", "cached_envs", "human_size", "prune"]

#: Seconds after which a leftover ``.build-*`` directory is removed by `prune`.
STALE_BUILD = 86400.0


def cache_root(base: str | None = None) -> Path:
    """``${HOG_CACHE_DIR:-${SCRATCH:-${TMPDIR:-/tmp}}}/hog-$USER``, as bundles compute it
    (``base`` replaces the first part)."""
    import getpass

    base = base or (os.environ.get("HOG_CACHE_DIR") or os.environ.get("SCRATCH")
                    or os.environ.get("TMPDIR") or "/tmp")
    if base.startswith("~/"):
        base = os.path.join(os.path.expanduser("~"), base[2:])
    user = os.environ.get("USER") or getpass.getuser()
    return Path(base) / f"hog-{user}"


@dataclass(frozen=True)
class CachedEnv:
    """One cached environment.

    Attributes:
        path: its directory (the name is the cache key).
        last_used: when a bundle last used it (epoch seconds).
    """

    path: Path
    last_used: float

    @property
    def key(self) -> str:
        """The cache key."""
        return self.path.name

    def size(self) -> int:
        """Bytes on disk (hard links counted once)."""
        total = 0
        seen: set[tuple[int, int]] = set()
        for root, dirs, files in os.walk(self.path):
            for name in files + dirs:
                try:
                    st = os.lstat(os.path.join(root, name))
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
        return total

    def python(self) -> str:
        """The Python version, from ``pyvenv.cfg`` (``?`` if unknown)."""
        try:
            for line in (self.path / "pyvenv.cfg").read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() in ("version_info", "version"):
                    return value.strip()
        except OSError:
            pass
        return "?"

    def packages(self) -> list[str]:
        """Names of the installed distributions."""
        names = [info.name[: -len(".dist-info")].rsplit("-", 1)[0]
                 for info in self.path.glob("lib/python*/site-packages/*.dist-info")]
        return sorted(names, key=str.lower)


def _last_used(env: Path) -> float:
    for p in (env / ".last-used", env):
        try:
            return p.stat().st_mtime
        except OSError:
            continue
    return 0.0


def cached_envs(root: Path) -> list[CachedEnv]:
    """The complete environments under ``root/envs`` (by key)."""
    envs = root / "envs"
    if not envs.is_dir():
        return []
    return [CachedEnv(p, _last_used(p)) for p in sorted(envs.iterdir())
            if p.is_dir() and not p.name.startswith(".")]


def _locked(lock: Path) -> bool:
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def prune(root: Path, older_than: float | None, *, dry_run: bool = False,
          now: float | None = None) -> list[tuple[CachedEnv, str]]:
    """Remove environments unused for ``older_than`` seconds (None: all of them).

    An environment is renamed away first, so a bundle starting meanwhile rebuilds it
    instead of using a half-deleted one; one being built (its lock held) is skipped.
    Leftover builds older than `STALE_BUILD` are removed too, and unusable environments
    moved aside (``.broken-*``, whatever their age: nothing uses them again).

    Returns:
        each environment considered, with what happened: ``removed``, ``would remove``,
        ``skipped: being built`` or ``failed: <reason>``.
    """
    now = time.time() if now is None else now
    envs = root / "envs"
    results: list[tuple[CachedEnv, str]] = []
    for env in cached_envs(root):
        if older_than is not None and env.last_used >= now - older_than:
            continue
        lock = envs / f".{env.key}.lock"
        if _locked(lock):
            results.append((env, "skipped: being built"))
            continue
        if dry_run:
            results.append((env, "would remove"))
            continue
        doomed = env.path.with_name(f".prune-{env.key}.{os.getpid()}")
        try:
            os.rename(env.path, doomed)
        except OSError as exc:
            results.append((env, f"failed: {exc.strerror}"))
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        lock.unlink(missing_ok=True)
        results.append((env, "removed"))
    if not dry_run and envs.is_dir():
        for stale in envs.glob(".build-*"):
            try:
                if stale.is_dir() and stale.stat().st_mtime < now - STALE_BUILD:
                    shutil.rmtree(stale, ignore_errors=True)
            except OSError:
                continue
        for leftover in [*envs.glob(".broken-*"), *envs.glob(".prune-*")]:
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
    return results


def human_size(n: float) -> str:
    """``1.2 GB`` (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def ago(seconds: float) -> str:
    """``5 min ago``, ``3 h ago``, ``12 days ago``."""
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"
