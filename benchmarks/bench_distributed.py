"""Dask integration: ``client.map`` through `HogCluster`, and the ``dask`` backend.

Part 1: ``client.map`` of 1,000 trivial calls (``benchfuncs.inc``) and ``gather``, through a
`HogCluster` on the ``local`` endpoint (2 workers), against a plain in-process
``LocalCluster`` with 2 threads. The clusters are started and warm (environment built) before
timing. `HogCluster` runs every task as a hog call on a warm runner: with ``batch=1`` each
task is one call (one message to a runner), with ``batch=64`` waiting tasks share a chunk.

Part 2: throughput of the ``dask`` backend against ``local``, both with 2 workers (the Dask
one an in-process ``LocalCluster`` with 2 threads): ``ex.map`` over 10,000 trivial calls, and
1,000 separate ``submit`` calls. Each figure is the median of ``--repeat`` rounds, the rows
measured interleaved. Run: ``python benchmarks/bench_distributed.py``.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Remote environments get hog-executor from this checkout (set before importing hog_executor).
os.environ.setdefault("HOG_EXECUTOR_REQUIREMENT", f"-e {shlex.quote(str(REPO_ROOT))}")

import _common as c  # noqa: E402
import benchfuncs  # noqa: E402

from hog_executor import HogExecutor  # noqa: E402

CALLS = 1_000
MAP_CALLS = 10_000
SUBMITS = 1_000
WORKERS = 2
BATCH = 64
#: Goals: the dask backend costs at most this much more than local (same machine).
BACKEND_GOAL = 2.0
#: HogCluster against a plain LocalCluster (each task crosses a process).
CLUSTER_GOAL = 2.0
DASHBOARD = {"dashboard_address": ":0"}


def main() -> None:
    args = c.parse_args(__doc__.splitlines()[0], repeat=3)
    bytecode = c.configure_bytecode(args.no_bytecode)
    uv = c.uv_bin()
    cache_dir = str(c.BENCH_DIR / "hog-cache")
    try:
        import dask
        import distributed
        from distributed import Client, LocalCluster
    except ImportError:
        print("bench_distributed: skipped (pip install 'hog-executor[dask]')")
        return
    from hog_executor.distributed import HogCluster

    c.header("bench_distributed", f"`client.map` through HogCluster; the dask backend, "
             f"{WORKERS} workers",
             [bytecode, c.uv_version(uv), f"dask {dask.__version__}, distributed "
              f"{distributed.__version__}",
              f"HOG_EXECUTOR_REQUIREMENT={os.environ['HOG_EXECUTOR_REQUIREMENT']}",
              f"hog-executor env cache: {cache_dir}"])
    expected = [benchfuncs.inc(i) for i in range(CALLS)]
    wrong: set[str] = set()

    def client_map(client: Client, label: str, n: int = CALLS) -> None:
        if client.gather(client.map(benchfuncs.inc, range(n), pure=False)) != expected[:n]:
            wrong.add(label)

    # -- part 1 ----------------------------------------------------------------------------
    c.progress("starting the clusters")
    plain_cluster = LocalCluster(n_workers=1, threads_per_worker=WORKERS, processes=False,
                                 **DASHBOARD)
    plain = Client(plain_cluster, set_as_default=False)
    hog_clusters = {
        batch: HogCluster("local", max_workers=WORKERS, batch=batch, cache_dir=cache_dir,
                          script=benchfuncs.__file__, cluster_options=DASHBOARD)
        for batch in (1, BATCH)
    }
    hog_clients = {b: Client(cl, set_as_default=False) for b, cl in hog_clusters.items()}
    try:
        c.progress("warm-up (builds the environment if absent)")
        for client in (plain, *hog_clients.values()):
            client.gather(client.map(benchfuncs.inc, range(8), pure=False))
        plain_t: list[float] = []
        batched: list[float] = []
        single: list[float] = []
        c.progress(f"timing {args.repeat} rounds of {CALLS:,} tasks")
        for _ in range(args.repeat):
            plain_t.append(c.timed(lambda: client_map(plain, "plain")))
            batched.append(c.timed(lambda: client_map(hog_clients[BATCH], "batched")))
            single.append(c.timed(lambda: client_map(hog_clients[1], "single")))
    finally:
        for client in (plain, *hog_clients.values()):
            client.close()
        for cluster in (plain_cluster, *hog_clusters.values()):
            cluster.close()

    plain_med = c.Row("", plain_t).median

    def per_task(seconds: float, n: int = CALLS) -> str:
        return f"{seconds / n * 1e3:.2f} ms per task"

    def check(label: str) -> str:
        return "; WRONG RESULTS" if label in wrong else ""

    rows = [
        c.Row(f"plain `LocalCluster` ({WORKERS} threads): `client.map` of {CALLS:,}", plain_t,
              ratio="1.00x", note=per_task(plain_med) + check("plain")),
        c.Row(f"`HogCluster(\"local\", batch={BATCH})`: same map", batched,
              ratio=f"{c.ratio(c.Row('', batched).median, plain_med):.1f}x",
              goal=f"<= {CLUSTER_GOAL:g}x",
              met=c.ratio(c.Row("", batched).median, plain_med) <= CLUSTER_GOAL,
              note=per_task(c.Row("", batched).median) + check("batched")),
        c.Row("`HogCluster(\"local\")` (batch=1, a call per task): same map", single,
              ratio=f"{c.ratio(c.Row('', single).median, plain_med):.1f}x",
              goal=f"<= {CLUSTER_GOAL:g}x",
              met=c.ratio(c.Row("", single).median, plain_med) <= CLUSTER_GOAL,
              note=per_task(c.Row("", single).median) + check("single")),
    ]
    c.print_table(rows)

    # -- part 2 ----------------------------------------------------------------------------
    c.progress("dask backend against local")
    map_expected = [benchfuncs.inc(i) for i in range(MAP_CALLS)]
    cluster = LocalCluster(n_workers=1, threads_per_worker=WORKERS, processes=False,
                           **DASHBOARD)
    client = Client(cluster, set_as_default=False)
    local = HogExecutor("local", max_workers=WORKERS, cache_dir=cache_dir,
                        script=benchfuncs.__file__)
    on_dask = HogExecutor("dask", client=client, cache_dir=cache_dir,
                          script=benchfuncs.__file__)
    executors = {"local": local, "dask": on_dask}
    maps: dict[str, list[float]] = {k: [] for k in executors}
    submits: dict[str, list[float]] = {k: [] for k in executors}

    def run_map(name: str) -> None:
        if list(executors[name].map(benchfuncs.inc, range(MAP_CALLS))) != map_expected:
            wrong.add(f"map-{name}")

    def run_submits(name: str) -> None:
        futures = [executors[name].submit(benchfuncs.inc, i) for i in range(SUBMITS)]
        if [f.result() for f in futures] != [i + 1 for i in range(SUBMITS)]:
            wrong.add(f"submit-{name}")

    try:
        for name in executors:
            executors[name].submit(benchfuncs.noop).result()
        c.progress(f"timing {args.repeat} rounds")
        for _ in range(args.repeat):
            for name in executors:
                maps[name].append(c.timed(lambda: run_map(name)))  # noqa: B023
                submits[name].append(c.timed(lambda: run_submits(name)))  # noqa: B023
    finally:
        for ex in executors.values():
            ex.shutdown(wait=True)
        client.close()
        cluster.close()

    rows = []
    for what, data, n in (("`ex.map` of 10,000", maps, MAP_CALLS),
                          (f"{SUBMITS} `submit` calls", submits, SUBMITS)):
        base = c.Row("", data["local"]).median
        ours = c.Row("", data["dask"]).median
        key = "map" if data is maps else "submit"
        rows.append(c.Row(f"`local` backend: {what}", data["local"], ratio="1.00x",
                          note=per_task(base, n) + check(f"{key}-local")))
        rows.append(c.Row(f"`dask` backend: {what}", data["dask"],
                          ratio=f"{c.ratio(ours, base):.2f}x", goal=f"<= {BACKEND_GOAL:g}x",
                          met=c.ratio(ours, base) <= BACKEND_GOAL,
                          note=per_task(ours, n) + check(f"{key}-dask")))
    c.print_table(rows)


if __name__ == "__main__":
    main()
