"""``hog results``: the result cache on this machine, listed, shown and pruned.

Entries live in ``${XDG_CACHE_HOME:-~/.cache}/hog-executor/results/<key[:2]>/<key>`` (or the
directory given as ``cache=``); see `hog_executor.cache`. Listing and showing authenticate
every entry; pruning goes by file times and sizes only, so it never unpickles anything.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EntryFile", "entry_files", "find_entry", "prune_entries"]

#: Entries between two progress lines of a long prune.
PROGRESS_EVERY = 1000
#: Seconds between two progress lines at most.
PROGRESS_SECONDS = 1.0


@dataclass(frozen=True)
class EntryFile:
    """An entry file as the file system describes it (not authenticated)."""

    path: Path
    size: int
    mtime: float


def entry_files(root: Path) -> list[EntryFile]:
    """Every entry file under ``root``, oldest first."""
    from ..cache import ResultDir

    out = []
    for path in ResultDir(root).entries():
        try:
            st = path.stat()
        except OSError:
            continue
        out.append(EntryFile(path, st.st_size, st.st_mtime))
    out.sort(key=lambda e: e.mtime)
    return out


def find_entry(root: Path, prefix: str) -> Path:
    """The entry whose key starts with ``prefix`` (at least 4 characters, unambiguous).

    Raises:
        LookupError: none, or several, match.
    """
    if len(prefix) < 4:
        raise LookupError("give at least 4 characters of the key")
    sub = root / prefix[:2]
    found = sorted(sub.glob(prefix + "*")) if sub.is_dir() else []
    if not found:
        raise LookupError(f"no cached result with a key starting with {prefix} in {root}")
    if len(found) > 1:
        raise LookupError(f"{len(found)} cached results have keys starting with {prefix}")
    return found[0]


def prune_entries(root: Path, *, older_than: float | None, max_size: int | None,
                  dry_run: bool, now: float, progress: bool = True) -> tuple[int, int, int]:
    """Remove entries not used for ``older_than`` seconds, then the oldest ones until the
    rest fit in ``max_size`` bytes (None: no limit of that kind).

    Returns (entries removed, bytes freed, entries kept). A long prune prints progress lines
    on stderr.
    """
    files = entry_files(root)
    doomed: list[EntryFile] = []
    kept: list[EntryFile] = []
    for e in files:
        (doomed if older_than is not None and now - e.mtime > older_than else kept).append(e)
    if max_size is not None:
        total = sum(e.size for e in kept)
        while kept and total > max_size:
            e = kept.pop(0)  # the oldest first
            doomed.append(e)
            total -= e.size
    freed = 0
    last = time.monotonic()
    for n, e in enumerate(doomed, 1):
        if not dry_run:
            try:
                e.path.unlink()
            except OSError:
                continue
        freed += e.size
        if progress and (n % PROGRESS_EVERY == 0 or time.monotonic() - last > PROGRESS_SECONDS):
            last = time.monotonic()
            print(f"hog: pruning: {n}/{len(doomed)} entries", file=sys.stderr, flush=True)
    if not dry_run:
        for sub in {e.path.parent for e in doomed}:
            try:
                sub.rmdir()  # only when empty
            except OSError:
                pass
        _prune_journals(root, older_than, now)
    return len(doomed), freed, len(kept)


def _prune_journals(root: Path, older_than: float | None, now: float) -> None:
    """Journals of clients gone for longer than ``older_than`` (nobody will take them over)."""
    from ..journal import process_start

    journal = root / "journal"
    if older_than is None or not journal.is_dir():
        return
    for path in journal.iterdir():
        try:
            if now - path.stat().st_mtime <= older_than:
                continue
            pid = int(path.name.split("-")[-3])
        except (OSError, ValueError, IndexError):
            continue
        if process_start(pid) is None:
            try:
                path.unlink()
            except OSError:
                pass


def cmd_results(args: argparse.Namespace) -> int:
    """``hog results list|show KEY|prune``."""
    from ..cache import default_root, describe_entry, iter_entries, stored_value
    from .common import CliError
    from .envcache import ago, human_size

    root = Path(os.path.expanduser(args.dir or default_root()))
    action = args.action
    now = time.time()
    if action == "list":
        print(f"result cache: {root}")
        refused: list[str] = []
        count = total = 0
        for entry in iter_entries(root, lambda p, why: refused.append(f"{p}: {why}")):
            count += 1
            total += entry.size
            status = "ok" if entry.ok else "failed"
            print(f"  {entry.key[:16]}  {human_size(entry.size):>9}  {status:<6}  "
                  f"{ago(now - entry.created):<13} {entry.what}")
        for line in refused:
            print(f"  refused (not authentic): {line}")
        print(f"{count} result(s), {human_size(total)}"
              + (f"; {len(refused)} refused" if refused else ""))
        return 0
    if action == "show":
        if not args.key:
            raise CliError("hog results show needs a KEY (or its first characters)")
        from ..cache import ResultDir

        try:
            path = find_entry(root, args.key)
        except LookupError as exc:
            raise CliError(str(exc)) from None
        try:
            entry = ResultDir(root).read(path)
        except Exception as exc:
            raise CliError(f"{path} is refused: {exc}") from None
        info = describe_entry(entry)
        info["created"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.created))
        for name, value in info.items():
            print(f"{name:>8}: {value}")
        if args.value:
            try:
                shown = repr(stored_value(entry))
            except Exception as exc:
                shown = f"(cannot be unpickled here: {type(exc).__name__}: {exc})"
            print(f"   value: {shown[:2000]}")
        return 0
    from ..config import _size

    older = None if args.older_than is None else args.older_than * 86400
    try:
        max_size = _size(args.max_size) if args.max_size is not None else None
    except ValueError as exc:
        raise CliError(f"--max-size: {exc}") from None
    if args.all:
        older = -1.0
    if older is None and max_size is None:
        raise CliError("prune what? give --older-than DAYS, --max-size SIZE or --all")
    dry = bool(args.dry_run)
    removed, freed, kept = prune_entries(root, older_than=older, max_size=max_size,
                                         dry_run=dry, now=now)
    verb = "would remove" if dry else "removed"
    print(f"{verb} {removed} result(s), {human_size(freed)}; {kept} kept")
    return 0
