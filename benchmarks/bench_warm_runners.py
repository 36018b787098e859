"""Warm runners on ``local``: what a call costs once its runner is up, against
``ProcessPoolExecutor(2)`` measured in the same run.

Rows (goals from the warm-runner issue; figures, never asserts):

- one trivial call, ``submit(noop, i).result()``: median of ``--repeat * 10`` calls, against
  the same on the pool. Goal: <= 5x the pool and <= 2 ms.
- 1,000 separate ``submit`` calls, then gathering them. Goal: <= 5x the pool.
- 100 separate ``submit`` calls of a function whose script imports NumPy at module level (on
  the pool, a module importing NumPy), once both sides' workers are up. Goal: <= 5x the pool.
  A row without a goal times the same with the executor's (and the pool's) start included:
  the pool forks workers that inherit the client's imported NumPy, while a runner starts a
  Python of the script's own environment and imports NumPy there.
- a runner's resident memory after 10,000 calls that allocate and free 64 KiB, against after
  100 such calls. Goal: <= 1.1x.
- what per-call timings (``future.timings``) add to a warm call: the client-side work of
  recording them (a record and a few clock reads per call), timed on its own, against the
  warm call's median. Goal: the call with timings <= 1.05x the call without.

The environments are built before timing; each pool and executor is created once per round
and shut down after it (its start is timed too). Run: ``python benchmarks/bench_warm_runners.py``.
"""

from __future__ import annotations

import os
import shlex
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Remote environments get hog-executor from this checkout (set before importing hog_executor).
os.environ.setdefault("HOG_EXECUTOR_REQUIREMENT", f"-e {shlex.quote(str(REPO_ROOT))}")

import _common as c  # noqa: E402
import benchfuncs  # noqa: E402

from hog_executor import HogExecutor  # noqa: E402

WORKERS = 2
GOAL_CALL = 5.0
GOAL_CALL_MS = 2.0
GOAL_SUBMITS = 5.0
GOAL_RSS = 1.1


def one_calls(ex, n: int) -> list[float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        ex.submit(benchfuncs.noop, i).result()
        samples.append(time.perf_counter() - start)
    return samples


def submits(ex, fn, n: int) -> float:
    start = time.perf_counter()
    futures = [ex.submit(fn, i) for i in range(n)]
    for f in futures:
        f.result()
    return time.perf_counter() - start


def main() -> None:
    args = c.parse_args(__doc__.splitlines()[0], repeat=5)
    bytecode = c.configure_bytecode(args.no_bytecode)
    uv = c.uv_bin()
    cache_dir = str(c.BENCH_DIR / "hog-cache")
    c.header("bench_warm_runners", "warm runners on `local` against a process pool",
             [bytecode, c.uv_version(uv), f"{WORKERS} workers on both sides",
              f"HOG_EXECUTOR_REQUIREMENT={os.environ['HOG_EXECUTOR_REQUIREMENT']}"])
    import benchfuncs_numpy

    def hog(script=benchfuncs.__file__):
        return HogExecutor("local", max_workers=WORKERS, cache_dir=cache_dir, script=script)

    c.progress("warm-up (builds the environments if absent)")
    with hog() as ex:
        ex.submit(benchfuncs.noop, 0).result()
    with hog(benchfuncs_numpy.__file__) as ex:
        ex.submit(benchfuncs_numpy.norm, 4).result()

    call_pool: list[float] = []
    call_hog: list[float] = []
    sub_pool: list[float] = []
    sub_hog: list[float] = []
    np_pool: list[float] = []
    np_hog: list[float] = []
    np_pool_start: list[float] = []
    np_hog_start: list[float] = []
    c.progress(f"timing {args.repeat} rounds")
    for _ in range(args.repeat):
        with ProcessPoolExecutor(WORKERS) as pool:
            pool.submit(benchfuncs.noop).result()  # started
            call_pool += one_calls(pool, 10)
            sub_pool.append(submits(pool, benchfuncs.noop, 1000))
        with hog() as ex:
            ex.submit(benchfuncs.noop).result()  # its runner started
            call_hog += one_calls(ex, 10)
            sub_hog.append(submits(ex, benchfuncs.noop, 1000))
        start = time.perf_counter()
        with ProcessPoolExecutor(WORKERS) as pool:
            np_pool_start.append(submits(pool, benchfuncs_numpy.norm, 100))
            np_pool.append(submits(pool, benchfuncs_numpy.norm, 100))
        np_pool_start[-1] = time.perf_counter() - start - np_pool[-1]
        start = time.perf_counter()
        with hog(benchfuncs_numpy.__file__) as ex:
            np_hog_start.append(submits(ex, benchfuncs_numpy.norm, 100))
            np_hog.append(submits(ex, benchfuncs_numpy.norm, 100))
        np_hog_start[-1] = time.perf_counter() - start - np_hog[-1]

    c.progress("runner memory: 100 calls, then 10,000 more")
    with HogExecutor("local", max_workers=1, cache_dir=cache_dir,
                     script=benchfuncs.__file__) as ex:
        for f in [ex.submit(benchfuncs.churn, 64) for _ in range(100)]:
            f.result()
        after_100 = ex.submit(benchfuncs.rss_kib).result()
        for f in [ex.submit(benchfuncs.churn, 64) for _ in range(10_000)]:
            f.result()
        after_10k = ex.submit(benchfuncs.rss_kib).result()

    med = statistics.median
    from hog_executor.futures import CallTimings

    def record_timings() -> None:
        t = CallTimings(time.time())
        t.sent = time.time()
        t.queued = time.time()
        t.received = time.time()
        t.started, t.finished, t.worker = t.queued, t.received, "host:1"

    timing_cost = min(c.timed(lambda: [record_timings() for _ in range(10_000)])
                      for _ in range(5)) / 10_000
    call_ratio = c.ratio(med(call_hog), med(call_pool))
    rows = [
        c.Row("pool: `submit(noop).result()`", call_pool, ratio="1.00x pool"),
        c.Row("hog-executor: `submit(noop).result()`, warm runner", call_hog,
              ratio=f"{call_ratio:.2f}x pool",
              goal=f"<= {GOAL_CALL:g}x pool, <= {GOAL_CALL_MS:g} ms",
              met=call_ratio <= GOAL_CALL and med(call_hog) * 1e3 <= GOAL_CALL_MS),
        c.Row("pool: 1,000 `submit`, then gather", sub_pool, ratio="1.00x pool"),
        c.Row("hog-executor: 1,000 `submit`, then gather", sub_hog,
              ratio=f"{c.ratio(med(sub_hog), med(sub_pool)):.2f}x pool",
              goal=f"<= {GOAL_SUBMITS:g}x pool",
              met=c.ratio(med(sub_hog), med(sub_pool)) <= GOAL_SUBMITS,
              note=f"{med(sub_hog) / 1000 * 1e6:.0f} us per call"),
        c.Row("pool: 100 `submit` of a NumPy script's function", np_pool, ratio="1.00x pool"),
        c.Row("hog-executor: the same", np_hog,
              ratio=f"{c.ratio(med(np_hog), med(np_pool)):.2f}x pool",
              goal=f"<= {GOAL_SUBMITS:g}x pool",
              met=c.ratio(med(np_hog), med(np_pool)) <= GOAL_SUBMITS),
        c.Row("pool: its first 100 such `submit` (workers forked, start and shutdown)",
              np_pool_start, ratio="1.00x pool"),
        c.Row("hog-executor: its first 100 (runners started, NumPy imported; shutdown)",
              np_hog_start, ratio=f"{c.ratio(med(np_hog_start), med(np_pool_start)):.2f}x pool"),
    ]
    c.print_table(rows)
    growth = c.ratio(after_10k, after_100)
    call = med(call_hog)
    with_timings = c.ratio(call, call - timing_cost)
    print("| per-call timings | cost per call | warm call | call with / without | goal | "
          "goal met |")
    print("|---|---|---|---|---|---|")
    print(f"| recording `future.timings` | {timing_cost * 1e6:.1f} us | {c.fmt_time(call)} | "
          f"{with_timings:.3f}x | <= 1.05x | {'yes' if with_timings <= 1.05 else 'NO'} |")
    print()
    print("| runner RSS | after 100 calls | after 10,100 calls | ratio | goal | goal met |")
    print("|---|---|---|---|---|---|")
    print(f"| `churn(64)` calls on one warm runner | {after_100:,} KiB | {after_10k:,} KiB | "
          f"{growth:.3f}x | <= {GOAL_RSS:g}x | {'yes' if growth <= GOAL_RSS else 'NO'} |")
    print()


if __name__ == "__main__":
    main()
