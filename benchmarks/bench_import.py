"""The cost of ``import hog_executor``, against ``import cloudpickle``, from ``-X importtime``.

Each measurement is a fresh ``python -X importtime -c "<statement>"`` run with the interpreter
running this benchmark; the figure is the sum of the cumulative times of the statement's
top-level imports (the modules the interpreter imports at start-up, as seen in a run of
``-c pass``, are left out). Bytecode is cached (one untimed run of each statement first), as
for a user. Goal: ``import hog_executor`` costs at most 2x ``import cloudpickle``.

An extra row, without a goal, times ``from hog_executor import HogExecutor`` (what a script
actually runs before its first call), which loads the executor and its dependencies. Each
figure is the median of ``--repeat`` runs, the rows measured interleaved. Run:
``python benchmarks/bench_import.py``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Remote environments get hog-executor from this checkout (set before importing hog_executor).
os.environ.setdefault("HOG_EXECUTOR_REQUIREMENT", f"-e {shlex.quote(str(REPO_ROOT))}")

import _common as c  # noqa: E402

GOAL = 2.0
_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|( *)(\S+)\s*$")


def importtime(statement: str) -> list[tuple[str, int, int]]:
    """``(module, cumulative_us, depth)`` for each line of ``-X importtime`` output."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", statement],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True,
                          cwd=c.BENCH_DIR)
    rows = []
    for line in proc.stderr.splitlines():
        m = _LINE.match(line)
        if m:
            rows.append((m.group(4), int(m.group(2)), (len(m.group(3)) - 1) // 2))
    return rows


def statement_cost(statement: str, startup: set[str]) -> float:
    """Seconds of imports ``statement`` triggered beyond interpreter start-up."""
    total = sum(cum for name, cum, depth in importtime(statement)
                if depth == 0 and name not in startup)
    return total / 1e6


def main() -> None:
    args = c.parse_args(__doc__.splitlines()[0], repeat=15)
    bytecode = c.configure_bytecode(args.no_bytecode)
    c.BENCH_DIR.mkdir(exist_ok=True)
    c.header("bench_import", "`import hog_executor` vs `import cloudpickle` (-X importtime)",
             [bytecode, f"interpreter: {sys.executable}"])
    startup = {name for name, _, depth in importtime("pass") if depth == 0}
    statements = {
        "pkg": "import hog_executor",
        "cloudpickle": "import cloudpickle",
        "executor": "from hog_executor import HogExecutor",
    }
    for statement in statements.values():  # warm-up: writes bytecode, fills the OS cache
        statement_cost(statement, startup)
    samples: dict[str, list[float]] = {key: [] for key in statements}
    c.progress(f"timing {args.repeat} rounds")
    for _ in range(args.repeat):
        for key, statement in statements.items():
            samples[key].append(statement_cost(statement, startup))

    base = c.Row("", samples["cloudpickle"]).median
    ours = c.Row("", samples["pkg"]).median
    full = c.Row("", samples["executor"]).median
    top = sorted(((cum, name) for name, cum, depth in importtime(statements["executor"])
                  if depth == 0 and name not in startup), reverse=True)[:6]
    rows = [
        c.Row("`import cloudpickle`", samples["cloudpickle"], ratio="1.00x cloudpickle"),
        c.Row("`import hog_executor`", samples["pkg"],
              ratio=f"{c.ratio(ours, base):.2f}x cloudpickle", goal=f"<= {GOAL:g}x cloudpickle",
              met=c.ratio(ours, base) <= GOAL),
        c.Row("`from hog_executor import HogExecutor`", samples["executor"],
              ratio=f"{c.ratio(full, base):.2f}x cloudpickle",
              note="largest top-level imports: "
                   + ", ".join(f"{name} {c.fmt_time(cum / 1e6)}" for cum, name in top)),
    ]
    c.print_table(rows)


if __name__ == "__main__":
    main()
