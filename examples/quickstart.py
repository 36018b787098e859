# /// script
# requires-python = ">=3.10"
# dependencies = []
#
# [tool.hog.laptop]
# backend = "local"
# walltime = "00:05:00"
# ///
"""Fan a function out on the built-in local endpoint and print results with timings.

    python examples/quickstart.py

The first run builds this script's environment with uv (a few seconds); later runs reuse it.
"""

from __future__ import annotations

import math
import time

from hog_executor import HogExecutor


def collatz_steps(n: int) -> int:
    """Steps for n to reach 1 under the Collatz map (a stand-in for real work)."""
    steps = 0
    while n != 1:
        n = 3 * n + 1 if n % 2 else n // 2
        steps += 1
    return steps


def host_info() -> str:
    import platform
    import sys

    return f"Python {sys.version.split()[0]} on {platform.node()}"


def longest_chain(start: int, stop: int) -> tuple[int, int]:
    """The number in [start, stop) with the longest Collatz chain."""
    return max((collatz_steps(n), n) for n in range(start, stop))


if __name__ == "__main__":
    with HogExecutor("laptop") as ex:
        t0 = time.perf_counter()
        print("remote:", ex.submit(host_info).result())
        t1 = time.perf_counter()
        print(f"  first call (may build the environment): {t1 - t0:.2f} s")

        t1 = time.perf_counter()
        ex.submit(math.factorial, 20).result()
        t2 = time.perf_counter()
        print(f"  warm call: {(t2 - t1) * 1000:.0f} ms")

        n = 2000
        steps = list(ex.map(collatz_steps, range(1, n + 1)))
        t3 = time.perf_counter()
        print(f"map over {n} numbers: {t3 - t2:.2f} s; longest chain {max(steps)} steps")

        bounds = range(1, 400_001, 50_000)
        futures = [ex.submit(longest_chain, a, a + 50_000) for a in bounds]
        best = max(f.result() for f in futures)
        t4 = time.perf_counter()
        print(f"{len(futures)} submits: {t4 - t3:.2f} s; {best[1]} has the longest chain "
              f"({best[0]} steps) below 400,000")
