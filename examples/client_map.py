# /// script
# requires-python = ">=3.10"
# dependencies = []
#
# [tool.hog.laptop]
# backend = "local"
# max_workers = 2
# walltime = "00:05:00"
# ///
"""``client.map`` through hog-executor, then bundles on an existing Dask cluster.

    python examples/client_map.py

Part 1 starts a `HogCluster`: a Dask cluster whose tasks run as hog calls on the endpoint
``laptop`` (each in this script's uv environment). Part 2 starts a plain ``LocalCluster`` and
sends bundles to it with the ``dask`` backend, as you would to a dask-jobqueue cluster.

The calls import this script remotely, in an environment without ``distributed``: the
client-side imports stay under the ``__main__`` guard.
"""

from __future__ import annotations

import os


def collatz_steps(n: int) -> int:
    """Steps for n to reach 1 under the Collatz map (a stand-in for real work)."""
    steps = 0
    while n != 1:
        n = 3 * n + 1 if n % 2 else n // 2
        steps += 1
    return steps


def longest_chain(start: int, stop: int) -> tuple[int, int]:
    """The number in [start, stop) with the longest Collatz chain."""
    return max((collatz_steps(n), n) for n in range(start, stop))


def where() -> str:
    return f"process {os.getpid()}"


def main() -> None:
    import time

    from distributed import Client, LocalCluster, as_completed

    from hog_executor import HogExecutor
    from hog_executor.distributed import HogCluster

    print(f"client: process {os.getpid()}")

    # 1. distributed habits, hog-executor underneath: every task is a call on "laptop".
    with HogCluster("laptop") as cluster, Client(cluster) as client:
        print(f"{cluster}; dashboard: {client.dashboard_link}")
        print("a task ran in", client.submit(where).result())
        t0 = time.perf_counter()
        bounds = range(1, 200_001, 25_000)
        futures = client.map(longest_chain, bounds, [b + 25_000 for b in bounds])
        for future in as_completed(futures):
            steps, n = future.result()
            print(f"  {n} needs {steps} steps")
        print(f"{len(futures)} tasks through HogCluster: {time.perf_counter() - t0:.2f} s")

    # 2. An existing Dask cluster runs the bundles (here a LocalCluster; on a site, the
    #    scheduler address of a dask-jobqueue cluster).
    with LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=":0") as dask_cluster:
        ex = HogExecutor("dask", address=dask_cluster.scheduler_address)
        with ex:
            print(f"dask backend: {ex.backend.workers} worker threads")
            print("a bundle ran in", ex.submit(where).result())
            steps = list(ex.map(collatz_steps, range(1, 2001)))
            print(f"map over 2000 numbers on the Dask cluster: longest chain {max(steps)} steps")


if __name__ == "__main__":
    main()
