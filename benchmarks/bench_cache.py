"""The result cache on the ``local`` endpoint, against baselines measured in the same run.

- a cache hit, ``submit(noop, i).result()`` answered from the cache, against reading the
  same value's pickle from a file and ``pickle.loads`` of it. Goal: at most 3x, and at most
  1 ms (median). Measured twice: a call this process has seen before (its outcome is
  remembered), and a first hit, whose entry file is read and authenticated
  (``hog_executor.cache.forget()`` before each);
- a fully cached 10,000-call ``map`` against a ``ProcessPoolExecutor(2)`` mapping the same
  trivial function. Goal: at most 2x;
- a miss: ``submit(noop, i).result()`` with ``cache=`` on and a new argument every time
  (key, journal, entry written), against the same calls without a cache, both on warm
  runners. Goal: at most 1.1x.

The measurements are interleaved per round, so that load on the machine hits them alike, and
take turns at going first.
Nothing is asserted. Run: ``python benchmarks/bench_cache.py``.
"""

from __future__ import annotations

import atexit
import os
import pickle
import shlex
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HOG_EXECUTOR_REQUIREMENT", f"-e {shlex.quote(str(REPO_ROOT))}")
_SCRATCH = tempfile.mkdtemp(prefix="hog-bench-cache-")
# Removed at exit, after the cache's writer thread has written its last batch (its own exit
# hook, registered later, runs first).
atexit.register(shutil.rmtree, _SCRATCH, True)
os.environ["XDG_CACHE_HOME"] = _SCRATCH  # the HMAC key of this run only

import _common as c  # noqa: E402
import benchfuncs  # noqa: E402

from hog_executor import HogExecutor  # noqa: E402
from hog_executor import cache as _cache  # noqa: E402

GOAL_HIT = 3.0
GOAL_HIT_MS = 1.0
GOAL_MAP = 2.0
GOAL_MISS = 1.1
WORKERS = 2
MAP_CALLS = 10_000
#: Misses (and as many calls without a cache) timed per round.
MISS_CALLS = 100


def _rotated(steps: list[Callable[[], None]], i: int) -> None:
    """Run ``steps`` starting with the ``i``-th: each goes first as often as the others
    (the first step of an iteration pays for caches the previous one cooled)."""
    for k in range(len(steps)):
        steps[(i + k) % len(steps)]()


def main() -> None:
    args = c.parse_args(__doc__.splitlines()[0], repeat=5)
    bytecode = c.configure_bytecode(args.no_bytecode)
    cache_dir = str(c.BENCH_DIR / "hog-cache")
    root = Path(_SCRATCH) / "results"
    c.header("bench_cache", "the result cache on `local`",
             [bytecode, f"{WORKERS} workers", f"entries in {root}",
              f"HOG_EXECUTOR_REQUIREMENT={os.environ['HOG_EXECUTOR_REQUIREMENT']}"])

    def hog(**config):
        return HogExecutor("local", max_workers=WORKERS, cache_dir=cache_dir,
                           script=benchfuncs.__file__, **config)

    value_file = Path(_SCRATCH) / "value.pickle"
    c.progress("warm-up: environment, runners, entries")
    with hog(cache=str(root)) as ex:
        for f in [ex.submit(benchfuncs.noop, i) for i in range(100)]:
            f.result()
        list(ex.map(benchfuncs.inc, range(MAP_CALLS)))

    hit: list[float] = []
    first_hit: list[float] = []
    loads: list[float] = []
    map_hit: list[float] = []
    map_pool: list[float] = []
    miss: list[float] = []
    plain: list[float] = []
    fresh = 10**9
    c.progress(f"timing {args.repeat} rounds")
    for _ in range(args.repeat):
        with hog(cache=str(root)) as cached, hog() as uncached:
            cached.submit(benchfuncs.noop, -1).result()  # the runner started
            uncached.submit(benchfuncs.noop, -1).result()
            for i in range(100):
                def seen(i: int = i) -> None:
                    cached.submit(benchfuncs.noop, i).result()  # remembered now
                    start = time.perf_counter()
                    f = cached.submit(benchfuncs.noop, i)
                    f.result()
                    hit.append(time.perf_counter() - start)
                    assert f.cached

                def first(i: int = i) -> None:
                    _cache.forget()
                    start = time.perf_counter()
                    f = cached.submit(benchfuncs.noop, i)
                    f.result()
                    first_hit.append(time.perf_counter() - start)
                    assert f.cached

                def baseline(i: int = i) -> None:
                    value_file.write_bytes(pickle.dumps(i))
                    start = time.perf_counter()
                    with open(value_file, "rb") as fh:
                        pickle.loads(fh.read())
                    loads.append(time.perf_counter() - start)

                _rotated([seen, first, baseline], i)
            for k in range(MISS_CALLS):
                fresh += 1

                def cached_miss(n: int = fresh) -> None:
                    start = time.perf_counter()
                    cached.submit(benchfuncs.noop, n).result()
                    miss.append(time.perf_counter() - start)

                def uncached_call(n: int = fresh) -> None:
                    start = time.perf_counter()
                    uncached.submit(benchfuncs.noop, n).result()
                    plain.append(time.perf_counter() - start)

                _rotated([cached_miss, uncached_call], k)
            start = time.perf_counter()
            list(cached.map(benchfuncs.inc, range(MAP_CALLS)))
            map_hit.append(time.perf_counter() - start)
        with ProcessPoolExecutor(WORKERS) as pool:
            pool.submit(benchfuncs.noop).result()
            start = time.perf_counter()
            list(pool.map(benchfuncs.inc, range(MAP_CALLS)))
            map_pool.append(time.perf_counter() - start)

    med = statistics.median
    hit_ratio = c.ratio(med(hit), med(loads))
    first_ratio = c.ratio(med(first_hit), med(loads))
    map_ratio = c.ratio(med(map_hit), med(map_pool))
    miss_ratio = c.ratio(med(miss), med(plain))
    rows = [
        c.Row("read a file, `pickle.loads` the value", loads, ratio="1.00x"),
        c.Row("cache hit: `submit(noop, i).result()`, a call seen before", hit,
              ratio=f"{hit_ratio:.2f}x", goal=f"<= {GOAL_HIT:g}x, <= {GOAL_HIT_MS:g} ms",
              met=hit_ratio <= GOAL_HIT and med(hit) * 1e3 <= GOAL_HIT_MS),
        c.Row("cache hit, first in this process: entry file read and authenticated",
              first_hit, ratio=f"{first_ratio:.2f}x",
              goal=f"<= {GOAL_HIT:g}x, <= {GOAL_HIT_MS:g} ms",
              met=first_ratio <= GOAL_HIT and med(first_hit) * 1e3 <= GOAL_HIT_MS),
        c.Row(f"ProcessPoolExecutor({WORKERS}): `map` of {MAP_CALLS:,} trivial calls",
              map_pool, ratio="1.00x"),
        c.Row(f"fully cached `map` of {MAP_CALLS:,} calls", map_hit, ratio=f"{map_ratio:.2f}x",
              goal=f"<= {GOAL_MAP:g}x", met=map_ratio <= GOAL_MAP,
              note=f"{med(map_hit) / MAP_CALLS * 1e6:.0f} us per call"),
        c.Row("no cache: `submit(noop, new i).result()` (warm runner)", plain, ratio="1.00x"),
        c.Row("cache on, a miss: the same calls", miss, ratio=f"{miss_ratio:.2f}x",
              goal=f"<= {GOAL_MISS:g}x", met=miss_ratio <= GOAL_MISS),
    ]
    c.print_table(rows)
    c.record_table(rows)


if __name__ == "__main__":
    main()
