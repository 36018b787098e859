"""The decorator path against the executor it wraps, measured interleaved in this run.

- ``f.remote(i)``: a decorated trivial function on ``local`` (status line and output replay
  included, logged to a handler that discards them). Baseline: ``ex.submit(noop, i).result()``
  on an executor of the same endpoint. Goal: at most 1.1x the baseline.
- ``f.map(range(1000))`` with ``progress=True`` (records discarded). Baseline: the same map
  without progress. Goal: at most 1.1x.

Each figure is the median of ``--repeat`` rounds after a warm-up; one of each per round, so
that load on the machine hits them alike. Run: ``python benchmarks/bench_decorators.py``.
"""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Remote environments get hog-executor from this checkout (set before importing hog_executor).
os.environ.setdefault("HOG_EXECUTOR_REQUIREMENT", f"-e {shlex.quote(str(REPO_ROOT))}")

import _common as c  # noqa: E402
import benchfuncs  # noqa: E402

import hog_executor as hog  # noqa: E402
from hog_executor import decorators  # noqa: E402

GOAL = 1.1
MAP_CALLS = 1000


def main() -> None:
    args = c.parse_args(__doc__.splitlines()[0], repeat=15)
    bytecode = c.configure_bytecode(args.no_bytecode)
    cache = c.fresh_dir(c.BENCH_DIR / "decorators-cache")
    os.environ["HOG_CACHE_DIR"] = str(cache)
    logger = logging.getLogger("hog_executor")
    logger.addHandler(logging.NullHandler())  # records are made, then discarded
    logger.setLevel(logging.INFO)
    logger.propagate = False
    c.header("bench_decorators", "the decorator API against HogExecutor",
             [bytecode, f"map of {MAP_CALLS} trivial calls, 2 workers"])

    remote_noop = hog.function("local", max_workers=2)(benchfuncs.noop)
    ex = remote_noop.hog.executor()  # the shared executor: both paths use the same workers
    c.progress("warming up (builds the environment)")
    remote_noop.remote(0)
    ex.submit(benchfuncs.noop, 0).result()
    list(ex.map(benchfuncs.inc, range(MAP_CALLS)))

    remote, submit, mapped, plain = [], [], [], []
    for i in range(args.repeat):
        c.progress(f"round {i + 1}/{args.repeat}")
        remote.append(c.timed(lambda: remote_noop.remote(1)))
        submit.append(c.timed(lambda: ex.submit(benchfuncs.noop, 1).result()))
        mapped.append(c.timed(lambda: list(ex.map(benchfuncs.inc, range(MAP_CALLS),
                                                  progress=True))))
        plain.append(c.timed(lambda: list(ex.map(benchfuncs.inc, range(MAP_CALLS)))))
    decorators.shutdown_executors()

    rows = []
    for label, samples, base_label, base in (
        ("f.remote(1)", remote, "ex.submit(noop, 1).result()", submit),
        (f"map of {MAP_CALLS}, progress=True", mapped, f"map of {MAP_CALLS}", plain),
    ):
        baseline = c.Row(base_label, base, ratio="1.00x")
        r = c.ratio(c.Row(label, samples).median, baseline.median)
        rows += [baseline, c.Row(label, samples, ratio=f"{r:.2f}x", goal=f"<= {GOAL:g}x",
                                 met=r <= GOAL)]
    c.print_table(rows)


if __name__ == "__main__":
    main()
