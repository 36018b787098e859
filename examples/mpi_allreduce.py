# /// script
# requires-python = ">=3.10"
# dependencies = ["mpich", "mpi4py"]
#
# [tool.hog.cluster]
# backend = "slurm"
# partition = "debug"
# walltime = "00:05:00"
# ranks = 2
# ///
"""One function on many MPI ranks: an allreduce, on this machine and on a Slurm cluster.

    python examples/mpi_allreduce.py            # local: the mpich wheel's own mpiexec
    python examples/mpi_allreduce.py cluster    # the [tool.hog.cluster] table: srun in a job

The block above installs MPICH and mpi4py into the call's environment (wheels: nothing to
install on the machine). On the local endpoint the ranks are started by that MPICH's
``mpiexec``; on the Slurm endpoint by ``srun --mpi=pmi2`` inside the batch job. For the
Slurm endpoint, ``bash tests/services/slurm-start.sh`` starts a throwaway single-node
cluster (as root, on Debian); on a real one, change ``partition`` (and add ``account``).
"""

from __future__ import annotations

import sys

from hog_executor import HogExecutor


def total(offset: int = 0) -> int:
    """The sum of the ranks' numbers, plus ``offset``: 0 + 1 + ... + (size - 1) + offset."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return comm.allreduce(comm.rank) + offset


def who() -> tuple[int, int, str]:
    """This rank's number, the world's size and the node it runs on."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return comm.rank, comm.size, MPI.Get_processor_name()


class Unlucky(Exception):
    pass


def fail_on_last() -> int:
    """The last rank raises; the others wait for it in a barrier (MPI then stops them)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.rank == comm.size - 1:
        raise Unlucky(f"rank {comm.rank} gave up")
    comm.barrier()
    return comm.rank


if __name__ == "__main__":
    endpoint = sys.argv[1] if len(sys.argv) > 1 else "local"
    config = {"ranks": 2} if endpoint == "local" else {}
    with HogExecutor(endpoint, **config) as ex:
        print("allreduce of the ranks on 2 ranks:", ex.submit(total).result())
        print("in a map:", list(ex.map(total, [0, 10, 100])))
        print("every rank, on 3 ranks:", ex.options(ranks=3, all_ranks=True).submit(who).result())
        try:
            ex.submit(fail_on_last).result()
        except Unlucky as err:
            print(f"a rank raised: {err!r} on rank {err.hog_rank}")  # type: ignore[attr-defined]
