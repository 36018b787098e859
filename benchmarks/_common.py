"""Helpers shared by the benchmarks: arguments, the bytecode setting, timing, the result table.

Not a benchmark (``nox -s bench`` runs only ``bench_*.py``). This module must not import
``hog_executor``: every benchmark sets ``HOG_EXECUTOR_REQUIREMENT`` before that import.

Every table printed is also recorded, with each row's ratio and goal as numbers, in
``.bench/results/<bench>.json`` (``HOG_BENCH_RESULTS``: another directory), which
``benchmarks/plot.py`` draws as charts.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Scratch space of the benchmarks (git-ignored): private env caches, throwaway venvs.
BENCH_DIR = REPO_ROOT / ".bench"
#: Where each benchmark's tables are recorded as JSON, for ``benchmarks/plot.py``.
RESULTS_DIR = Path(os.environ.get("HOG_BENCH_RESULTS") or BENCH_DIR / "results")


def parse_args(description: str, repeat: int) -> argparse.Namespace:
    """The options every benchmark accepts (``nox -s bench -- ARGS`` passes them to all)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--repeat", type=int, default=None,
        help=f"timed repetitions per measurement (default: {repeat})",
    )
    parser.add_argument(
        "--no-bytecode", action="store_true",
        help="run child Pythons with PYTHONDONTWRITEBYTECODE=1, as some containers and CI "
             "machines do: packages in uv-built environments (installed without bytecode) "
             "then compile on every import. Default: Python's default, bytecode cached",
    )
    args = parser.parse_args()
    if args.repeat is None:
        args.repeat = repeat
    args.repeat = max(1, args.repeat)
    return args


def configure_bytecode(no_bytecode: bool) -> str:
    """Fix the bytecode setting of every child process; return a line describing it.

    Some machines (containers, CI) export ``PYTHONDONTWRITEBYTECODE=1``; then every Python
    process started by a call compiles cloudpickle (and, for groundhog, pydantic and rich) from
    source, which dominates a trivial call. By default the benchmarks measure what a user
    gets with Python's defaults: bytecode cached, here under ``.bench/pycache`` so that nothing
    is written next to the sources. ``--no-bytecode`` measures the other case.
    """
    if no_bytecode:
        os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
        os.environ.pop("PYTHONPYCACHEPREFIX", None)
        return "bytecode: not cached (PYTHONDONTWRITEBYTECODE=1 in every child process)"
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    prefix = BENCH_DIR / "pycache"
    prefix.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONPYCACHEPREFIX"] = str(prefix)
    # Scripts imported from per-call temp dirs leave one bytecode file per call in the prefix.
    atexit.register(shutil.rmtree, prefix / tempfile.gettempdir().lstrip(os.sep), True)
    return f"bytecode: cached (Python's default; PYTHONPYCACHEPREFIX={prefix})"


def uv_bin() -> str:
    """The uv binary hog-executor's local backend uses (the ``uv`` package's)."""
    from uv import find_uv_bin

    return str(find_uv_bin())


def uv_version(uv: str) -> str:
    try:
        out = subprocess.run([uv, "--version"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "uv (version unknown)"


def fresh_dir(path: Path) -> Path:
    """``path``, emptied."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 0.01:
        return f"{seconds * 1e3:.0f} ms"
    return f"{seconds * 1e3:.2f} ms"


@dataclass
class Row:
    """One line of a result table.

    Attributes:
        label: what was measured.
        samples: the timings, in seconds (empty: the row was skipped; see ``note``).
        ratio: the comparison with the baseline, as text ("1.00x" for the baseline itself).
        goal: the goal, as text ("" for a baseline).
        met: whether the goal is met (None: no goal, or skipped).
        note: why the row was skipped, or a remark.
    """

    label: str
    samples: list[float] = field(default_factory=list)
    ratio: str = ""
    goal: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline > 0 else float("inf")


# What this benchmark run recorded so far: its header and every table printed.
_record: dict[str, Any] = {"bench": "", "title": "", "machine": "", "notes": [], "tables": []}


def header(name: str, what: str, notes: Sequence[str] = ()) -> None:
    """Print what is measured and on what machine."""
    _record.update(bench=name.removeprefix("bench_"), title=what, notes=list(notes),
                   machine=f"{datetime.date.today().isoformat()}; {platform.node()}; "
                           f"{os.cpu_count()} cores; Python {sys.version.split()[0]}")
    print(f"## {name}: {what}")
    print()
    print(f"- date: {datetime.date.today().isoformat()}; host: {platform.node()}; "
          f"{os.cpu_count()} cores; {platform.system()} {platform.release()}")
    print(f"- python: {sys.version.split()[0]} ({sys.executable})")
    for line in notes:
        print(f"- {line}")
    print()
    sys.stdout.flush()


def progress(message: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def print_table(rows: Sequence[Row]) -> None:
    """Print the rows as a Markdown table: median, min, runs, ratio, goal, verdict."""
    head = ["measurement", "median", "min", "runs", "ratio", "goal", "goal met"]
    lines = []
    for r in rows:
        if r.samples:
            cells = [r.label, fmt_time(r.median), fmt_time(min(r.samples)),
                     str(len(r.samples)), r.ratio, r.goal,
                     {True: "yes", False: "NO", None: ""}[r.met]]
        else:
            cells = [r.label, "skipped", "", "", "", r.goal, ""]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(head)]

    def fmt(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print(fmt(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for cells in lines:
        print(fmt(cells))
    notes = [(r.label, r.note) for r in rows if r.note]
    if notes:
        print()
        for label, note in notes:
            print(f"- {label}: {note}")
    print()
    sys.stdout.flush()
    record_table(rows)


# A figure in a ratio or goal: "1.07x floor", "ours >= 6x faster", "<= 2x pool, <= 50 ms".
_FIGURE = re.compile(r"(?:(<=|>=)\s*)?(\d[\d,]*(?:\.\d+)?)\s*x\b\s*([^;,]*)")


def _figures(text: str) -> list[tuple[str | None, float, str]]:
    """(comparison, number, unit words) for each ``<number>x`` in ``text``."""
    return [(m.group(1), float(m.group(2).replace(",", "")), m.group(3).strip())
            for m in _FIGURE.finditer(text)]


def row_figures(row: Row) -> dict[str, Any]:
    """A row as numbers: the ratio its goal is about, the goal and which way it points.

    The goal is the first ``<= N x`` or ``>= N x`` of the goal text; the ratio is the figure
    of the ratio text in the goal's unit ("5.91x faster" for "ours >= 6x faster"), else its
    first figure.
    """
    goals = [f for f in _figures(row.goal) if f[0]]
    ratios = _figures(row.ratio)
    goal = goals[0] if goals else None
    ratio = ratios[0] if ratios else None
    if goal is not None and goal[2]:
        ratio = next((r for r in ratios if r[2].split()[:1] == goal[2].split()[:1]), ratio)
    return {
        "label": row.label,
        "ratio": ratio[1] if ratio and row.samples else None,
        "unit": ratio[2] if ratio else "",
        "ratio_text": row.ratio,
        "goal": goal[1] if goal else None,
        "direction": goal[0] if goal else None,
        "goal_text": row.goal,
        "met": row.met,
        "median": row.median if row.samples else None,
        "note": row.note,
    }


def record_table(rows: Sequence[Row]) -> Path | None:
    """Add a table to this run's record and rewrite ``RESULTS_DIR/<bench>.json``."""
    bench = _record["bench"] or Path(sys.argv[0]).stem.removeprefix("bench_")
    if not bench:
        return None
    _record["bench"] = bench
    _record["tables"].append({"rows": [row_figures(r) for r in rows]})
    path = RESULTS_DIR / f"{bench}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_record, indent=1) + "\n", encoding="utf-8")
    except OSError as exc:
        progress(f"could not record the table in {path}: {exc}")
        return None
    return path
