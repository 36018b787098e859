"""``ex.map`` over 10,000 trivial calls on ``local``, against ``ProcessPoolExecutor(2).map``.

Both sides map the same function (``benchfuncs.inc``) over ``range(10_000)`` with two
workers and are timed the same way: create the executor, ``list(ex.map(...))``, shut it down.
hog-executor uses its default chunking (``chunksize=None``); the process pool gets a good
chunk size (the same four chunks per worker, 1,250 calls each; its default of 1 is ~100x
slower). The environment is warm (built before timing). Goal: at most 2x the pool.

An extra row, without a goal, maps with one chunk per worker to show what process start-ups
cost. Each figure is the median of ``--repeat`` rounds, the rows measured interleaved. Run:
``python benchmarks/bench_map.py``.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shlex
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Remote environments get hog-executor from this checkout (set before importing hog_executor).
os.environ.setdefault("HOG_EXECUTOR_REQUIREMENT", f"-e {shlex.quote(str(REPO_ROOT))}")

import _common as c  # noqa: E402
import benchfuncs  # noqa: E402

from hog_executor import HogExecutor  # noqa: E402

N = 10_000
WORKERS = 2
GOAL = 2.0
POOL_CHUNKSIZE = math.ceil(N / (WORKERS * 4))


def main() -> None:
    args = c.parse_args(__doc__.splitlines()[0], repeat=5)
    bytecode = c.configure_bytecode(args.no_bytecode)
    uv = c.uv_bin()
    cache_dir = c.BENCH_DIR / "hog-cache"
    c.header("bench_map", f"`map` over {N:,} trivial calls, {WORKERS} workers",
             [bytecode, c.uv_version(uv),
              f"process pool start method: {multiprocessing.get_start_method()}",
              f"HOG_EXECUTOR_REQUIREMENT={os.environ['HOG_EXECUTOR_REQUIREMENT']}",
              f"hog-executor env cache: {cache_dir}"])
    expected = [benchfuncs.inc(i) for i in range(N)]
    wrong: set[str] = set()

    def hog_map(chunksize: int | None) -> None:
        with HogExecutor("local", max_workers=WORKERS, cache_dir=str(cache_dir),
                         script=benchfuncs.__file__) as ex:
            if list(ex.map(benchfuncs.inc, range(N), chunksize=chunksize)) != expected:
                wrong.add(f"hog{chunksize}")

    def pool_map() -> None:
        with ProcessPoolExecutor(WORKERS) as pool:
            if list(pool.map(benchfuncs.inc, range(N), chunksize=POOL_CHUNKSIZE)) != expected:
                wrong.add("pool")

    c.progress("warm-up (builds the environment if absent)")
    first = c.timed(lambda: hog_map(None))
    pool_map()
    one_chunk = math.ceil(N / WORKERS)
    pool: list[float] = []
    ours: list[float] = []
    ours_one: list[float] = []
    c.progress(f"timing {args.repeat} rounds")
    for _ in range(args.repeat):
        pool.append(c.timed(pool_map))
        ours.append(c.timed(lambda: hog_map(None)))
        ours_one.append(c.timed(lambda: hog_map(one_chunk)))

    pool_med = c.Row("", pool).median
    ours_med = c.Row("", ours).median
    one_med = c.Row("", ours_one).median

    def per_call(seconds: float) -> str:
        return f"{seconds / N * 1e6:.0f} us per call"

    rows = [
        c.Row(f"`ProcessPoolExecutor({WORKERS}).map(chunksize={POOL_CHUNKSIZE})`", pool,
              ratio="1.00x pool", note=per_call(pool_med) + ("; WRONG RESULTS" if "pool" in wrong
                                                            else "")),
        c.Row("hog-executor `ex.map(chunksize=None)`", ours,
              ratio=f"{c.ratio(ours_med, pool_med):.2f}x pool", goal=f"<= {GOAL:g}x pool",
              met=c.ratio(ours_med, pool_med) <= GOAL,
              note=f"{per_call(ours_med)}; first run (env build if absent): {c.fmt_time(first)}"
                   + ("; WRONG RESULTS" if "hogNone" in wrong else "")),
        c.Row(f"hog-executor `ex.map(chunksize={one_chunk})` (one chunk per worker)", ours_one,
              ratio=f"{c.ratio(one_med, pool_med):.2f}x pool",
              note=per_call(one_med) + ("; WRONG RESULTS" if f"hog{one_chunk}" in wrong else "")),
    ]
    c.print_table(rows)


if __name__ == "__main__":
    main()
