# /// script
# requires-python = ">=3.10"
# dependencies = []
#
# [tool.hog.cluster]
# backend = "slurm"
# partition = "debug"
# walltime = "00:05:00"
# max_parallel = 4
# ///
"""Run a map as one Slurm job array, and see what a failing job looks like.

    bash tests/services/slurm-start.sh   # a throwaway single-node cluster (as root, on Debian)
    python examples/slurm_array.py
    bash tests/services/slurm-stop.sh

On a real cluster, change ``partition`` (and add ``account``) in the block above, and run it
on a login node. Job files go under ``$SCRATCH/.hog-executor/slurm`` (or ``~/...``); set
``shared_dir`` if neither is visible from the compute nodes.
"""

from __future__ import annotations

import os
import time

from hog_executor import HogExecutor, WalltimeExceeded


def where(x: int) -> tuple[int, str, str]:
    """x squared, with the Slurm job and node that computed it."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID", "?")
    task = os.environ.get("SLURM_ARRAY_TASK_ID", "-")
    return x * x, f"{job}_{task}", os.environ.get("SLURMD_NODENAME", "?")


def too_slow() -> None:
    time.sleep(60)


if __name__ == "__main__":
    with HogExecutor("cluster") as ex:
        t0 = time.perf_counter()
        rows = list(ex.map(where, range(16), chunksize=2))  # 8 chunks: one array of 8 tasks
        print(f"map over 16 numbers in {time.perf_counter() - t0:.1f} s:")
        for value, task, node in rows[::2]:
            print(f"  {value:4d} from array task {task} on {node}")
        print("array jobs used:", sorted({task.split("_")[0] for _, task, _ in rows}))

        try:
            ex.options(walltime=2).submit(too_slow).result()
        except WalltimeExceeded as err:
            print(f"\nwalltime of 2 s: {type(err).__name__} (returncode {err.returncode}); the "
                  "job files of failed calls are kept:")
            print(" ", str(err).splitlines()[0].split("logs: ")[1])
