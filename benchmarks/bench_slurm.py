"""200 short tasks on Slurm: hog-executor's ``map`` against submitit's ``map_array``.

Both run the same trivial function over ``range(200)`` on the same cluster in the same run,
and every ``sbatch`` either of them starts is counted through a logging ``sbatch`` placed first
on ``PATH``. submitit runs in a virtual environment of its own (``.bench/submitit-venv``,
created with uv), driven by a small program that prints its timing; hog-executor runs here.

Rows: hog-executor with its default chunking (one job array whose tasks each run a chunk),
hog-executor with ``chunksize=1`` (one array task per call, like submitit), and submitit's
``map_array`` (one array task per call). Both poll the scheduler: hog-executor with its
default ``poll_interval`` (2 s, backing off), submitit with its own. Goal: hog-executor's
``map`` at most 1.0x submitit's wall time, with one ``sbatch`` call.

Two more measurements, each run on its own:

- ``--pipeline``: a 3-stage pipeline of 16-task stages (each task of a stage takes two results
  of the previous one) with a simulated queue delay of `QUEUE_DELAY` s per job (sbatch
  ``--begin=now+N``): queue-native submission (futures as arguments: every stage is queued at
  once, waiting with ``--dependency=afterok``) against wave-by-wave submission (a stage is
  submitted once the previous one is done). Goal: queue-native at most 0.5x the wall time.
- ``--pilots``: job arrays against pilot workers (dask-jobqueue ``SLURMCluster`` workers
  running the ``dask`` backend) on the same calls: latency of one call, and 1,000 short calls.

Needs a cluster: ``bash tests/services/slurm-start.sh`` (as root on Debian) starts a
single-node one.
Run: ``python benchmarks/bench_slurm.py [--repeat N] [--pipeline | --pilots]``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Remote environments get hog-executor from this checkout (set before importing hog_executor).
os.environ.setdefault("HOG_EXECUTOR_REQUIREMENT", f"-e {shlex.quote(str(REPO_ROOT))}")

import _common as c  # noqa: E402
import benchfuncs  # noqa: E402

from hog_executor import HogExecutor  # noqa: E402

N = 200
GOAL = 1.0
PARTITION = os.environ.get("HOG_BENCH_SLURM_PARTITION", "debug")

_SBATCH_LOGGER = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> {log}
exec {real} "$@"
"""

_SUBMITIT_DRIVER = """
import json, sys, time
import submitit

def inc(x):
    return x + 1

folder, partition, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
executor.update_parameters(slurm_partition=partition, timeout_min=10,
                           slurm_array_parallelism=n)
jobs = executor.map_array(inc, range(n))
values = [job.result() for job in jobs]
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "ok": values == [x + 1 for x in range(n)],
                  "version": submitit.__version__}))
"""


def sbatch_shim(bench: Path) -> Path:
    """A directory holding an ``sbatch`` that logs its arguments, then runs the real one."""
    real = shutil.which("sbatch")
    if real is None:
        sys.exit("bench_slurm: sbatch not found; start a cluster with "
                 "bash tests/services/slurm-start.sh")
    shim = c.fresh_dir(bench / "sbatch-shim")
    log = bench / "sbatch-calls.log"
    script = shim / "sbatch"
    script.write_text(_SBATCH_LOGGER.format(log=shlex.quote(str(log)), real=shlex.quote(real)))
    script.chmod(0o755)
    os.environ["PATH"] = f"{shim}{os.pathsep}{os.environ['PATH']}"
    return log


def sbatch_calls(log: Path) -> int:
    try:
        return len(log.read_text().splitlines())
    except FileNotFoundError:
        return 0


def submitit_python(uv: str, bench: Path) -> Path:
    venv = bench / "submitit-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        c.progress(f"creating {venv} with submitit")
        subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
        subprocess.run([uv, "pip", "install", "--quiet", "--python", str(python), "submitit"],
                       check=True)
    return python


def main() -> None:
    args = c.parse_args(__doc__.splitlines()[0], repeat=3)
    bytecode = c.configure_bytecode(args.no_bytecode)
    uv = c.uv_bin()
    bench = c.BENCH_DIR / "slurm"
    bench.mkdir(parents=True, exist_ok=True)
    cache_dir = c.BENCH_DIR / "hog-cache"
    log = sbatch_shim(bench)
    driver = bench / "submitit_driver.py"
    driver.write_text(textwrap.dedent(_SUBMITIT_DRIVER))
    python = submitit_python(uv, bench)
    c.header("bench_slurm", f"{N} short tasks on Slurm partition {PARTITION!r}",
             [bytecode, c.uv_version(uv), f"hog-executor env cache: {cache_dir}",
              f"submitit venv: {python.parent.parent}"])
    expected = [benchfuncs.inc(i) for i in range(N)]
    wrong: set[str] = set()
    calls: dict[str, int] = {}

    def counted(label: str, run: object) -> float:
        before = sbatch_calls(log)
        seconds = c.timed(run)  # type: ignore[arg-type]
        calls[label] = sbatch_calls(log) - before
        return seconds

    def hog_map(chunksize: int | None) -> None:
        folder = c.fresh_dir(bench / "hog-shared")
        with HogExecutor("slurm", partition=PARTITION, shared_dir=str(folder),
                         cache_dir=str(cache_dir), script=benchfuncs.__file__) as ex:
            if list(ex.map(benchfuncs.inc, range(N), chunksize=chunksize)) != expected:
                wrong.add(f"hog {chunksize}")

    version = "submitit"

    def submitit_map() -> None:
        nonlocal version
        folder = c.fresh_dir(bench / "submitit-jobs")
        out = subprocess.run([str(python), str(driver), str(folder / "%j"), PARTITION, str(N)],
                             capture_output=True, text=True, check=True)
        report = json.loads(out.stdout.strip().splitlines()[-1])
        version = f"submitit {report['version']}"
        if not report["ok"]:
            wrong.add("submitit")

    c.progress("warm-up (builds the environment if absent)")
    with HogExecutor("local", cache_dir=str(cache_dir), script=benchfuncs.__file__) as ex:
        ex.submit(benchfuncs.noop).result()
    ours: list[float] = []
    ours_one: list[float] = []
    theirs: list[float] = []
    c.progress(f"timing {args.repeat} rounds")
    for i in range(args.repeat):
        c.progress(f"round {i + 1}: submitit")
        theirs.append(counted("submitit", submitit_map))
        c.progress(f"round {i + 1}: hog-executor")
        ours.append(counted("hog", lambda: hog_map(None)))
        c.progress(f"round {i + 1}: hog-executor, chunksize=1")
        ours_one.append(counted("hog1", lambda: hog_map(1)))

    base = c.Row("", theirs).median
    r_ours = c.ratio(c.Row("", ours).median, base)
    r_one = c.ratio(c.Row("", ours_one).median, base)
    rows = [
        c.Row(f"{version} map_array", theirs, "1.00x",
              note=f"{calls['submitit']} sbatch call(s) per map"),
        c.Row("hog-executor map (default chunks)", ours, f"{r_ours:.2f}x", f"<= {GOAL:.1f}x",
              r_ours <= GOAL and calls["hog"] == 1,
              note=f"{calls['hog']} sbatch call(s) per map (goal: 1)"),
        c.Row("hog-executor map, chunksize=1", ours_one, f"{r_one:.2f}x",
              note=f"{calls['hog1']} sbatch call(s) per map; one array task per call"),
    ]
    c.print_table(rows)
    if wrong:
        sys.exit(f"bench_slurm: wrong results from {sorted(wrong)}")


QUEUE_DELAY = 15
STAGE = 16
PIPELINE_GOAL = 0.5


def pipeline_main() -> None:
    import operator

    args = c.parse_args("3-stage pipeline on Slurm: queue-native against wave by wave",
                        repeat=1)
    cache_dir = c.BENCH_DIR / "hog-cache"
    bench = c.BENCH_DIR / "slurm"
    bench.mkdir(parents=True, exist_ok=True)
    c.header("bench_slurm --pipeline",
             f"3 stages x {STAGE} tasks, {QUEUE_DELAY} s queue delay per job "
             f"(--begin=now+{QUEUE_DELAY}), partition {PARTITION!r}", [])
    add = operator.add
    want = [i + 1 for i in range(STAGE)]
    for _ in range(2):
        want = [add(want[i], want[(i + 1) % STAGE]) for i in range(STAGE)]

    def executor() -> HogExecutor:
        folder = c.fresh_dir(bench / "hog-shared")
        return HogExecutor("slurm", partition=PARTITION, shared_dir=str(folder),
                           cache_dir=str(cache_dir), script=benchfuncs.__file__,
                           poll_interval=0.5, sbatch_flags=[f"--begin=now+{QUEUE_DELAY}"])

    def queue_native() -> None:
        with executor() as ex:
            stage = [ex.submit(add, i, 1) for i in range(STAGE)]
            for _ in range(2):
                stage = [ex.submit(add, stage[i], stage[(i + 1) % STAGE]) for i in range(STAGE)]
            if [f.result() for f in stage] != want:
                sys.exit("bench_slurm: wrong results (queue-native)")

    def wave_by_wave() -> None:
        with executor() as ex:
            values = [f.result() for f in [ex.submit(add, i, 1) for i in range(STAGE)]]
            for _ in range(2):
                values = [f.result() for f in [ex.submit(add, values[i], values[(i + 1) % STAGE])
                                               for i in range(STAGE)]]
            if values != want:
                sys.exit("bench_slurm: wrong results (wave by wave)")

    c.progress("warm-up (builds the environment if absent)")
    with HogExecutor("local", cache_dir=str(cache_dir), script=benchfuncs.__file__) as ex:
        ex.submit(benchfuncs.noop).result()
    waves: list[float] = []
    native: list[float] = []
    for i in range(args.repeat):
        c.progress(f"round {i + 1}: wave by wave")
        waves.append(c.timed(wave_by_wave))
        c.progress(f"round {i + 1}: queue-native")
        native.append(c.timed(queue_native))
    r = c.ratio(c.Row("", native).median, c.Row("", waves).median)
    c.print_table([
        c.Row("wave by wave (submit a stage when the previous is done)", waves, "1.00x"),
        c.Row("queue-native (futures as arguments, afterok)", native, f"{r:.2f}x",
              f"<= {PIPELINE_GOAL:.1f}x", r <= PIPELINE_GOAL),
    ])


PILOT_CALLS = 1000
PILOT_WORKERS = 4


def pilots_main() -> None:
    import time

    import dask_jobqueue
    import distributed

    args = c.parse_args("job arrays against dask-jobqueue pilot workers", repeat=5)
    cache_dir = c.BENCH_DIR / "hog-cache"
    bench = c.BENCH_DIR / "slurm"
    bench.mkdir(parents=True, exist_ok=True)
    c.header("bench_slurm --pilots",
             f"one call, then {PILOT_CALLS} short calls, partition {PARTITION!r}; pilots: "
             f"{PILOT_WORKERS} SLURMCluster workers (cores=1, processes=1)", [])
    expected = [benchfuncs.inc(i) for i in range(PILOT_CALLS)]

    def measure(ex: HogExecutor) -> tuple[list[float], list[float]]:
        ex.submit(benchfuncs.inc, 0).result()  # warm: environment, workers
        latency = [c.timed(lambda: ex.submit(benchfuncs.inc, 1).result())
                   for _ in range(args.repeat)]
        bulk = [c.timed(lambda: list(ex.map(benchfuncs.inc, range(PILOT_CALLS))) == expected
                        or sys.exit("bench_slurm: wrong results"))]
        return latency, bulk

    c.progress("job arrays")
    with HogExecutor("slurm", partition=PARTITION, shared_dir=str(c.fresh_dir(
            bench / "hog-shared")), cache_dir=str(cache_dir), script=benchfuncs.__file__,
            poll_interval=0.2) as ex:
        a_lat, a_bulk = measure(ex)
    c.progress("pilot workers")
    started = time.perf_counter()
    with dask_jobqueue.SLURMCluster(cores=1, processes=1, memory="1GB", queue=PARTITION,
                                    python=sys.executable, walltime="00:30:00",
                                    log_directory=str(bench / "pilot-logs"),
                                    scheduler_options={"dashboard_address": None}) as cluster, \
            distributed.Client(cluster) as client:
        cluster.scale(PILOT_WORKERS)
        client.wait_for_workers(PILOT_WORKERS, timeout=300)
        boot = time.perf_counter() - started
        with HogExecutor("dask", client=client, cache_dir=str(cache_dir),
                         script=benchfuncs.__file__) as ex:
            p_lat, p_bulk = measure(ex)
    c.print_table([
        c.Row("job arrays: one call, submit to result", a_lat, "1.00x"),
        c.Row("pilot workers: one call, submit to result", p_lat,
              f"{c.ratio(c.Row('', p_lat).median, c.Row('', a_lat).median):.2f}x"),
        c.Row(f"job arrays: {PILOT_CALLS} calls (map, default chunks)", a_bulk, "1.00x"),
        c.Row(f"pilot workers: {PILOT_CALLS} calls (map, default chunks)", p_bulk,
              f"{c.ratio(p_bulk[0], a_bulk[0]):.2f}x",
              note=f"workers started in {boot:.1f} s (not counted)"),
    ])


if __name__ == "__main__":
    if "--pipeline" in sys.argv:
        sys.argv.remove("--pipeline")
        pipeline_main()
    elif "--pilots" in sys.argv:
        sys.argv.remove("--pilots")
        pilots_main()
    else:
        main()
