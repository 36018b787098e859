# /// script
# requires-python = ">=3.10"
# dependencies = ["mpich", "mpi4py"]
# ///
"""Functions the MPI tests run on many ranks (mpi4py over the mpich wheel's MPI)."""

import os
import sys
import time


def allreduce_rank():
    """The sum of every rank's number: 1 on 2 ranks."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return comm.allreduce(comm.rank)


def allreduce_plus(x):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return comm.allreduce(comm.rank) + x


def rank_and_size():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return (comm.rank, comm.size)


def rank_from_environment():
    """The rank as the launcher told it, without MPI."""
    for name in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


class RankFailed(Exception):
    pass


def fail_on_rank(bad):
    """Rank ``bad`` raises; the others wait for it in a collective (MPI aborts them)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.rank == bad:
        raise RankFailed(f"rank {comm.rank} failed")
    comm.barrier()
    return comm.rank


def fail_without_mpi(bad):
    """Rank ``bad`` raises without MPI; the others return."""
    rank = rank_from_environment()
    if rank == bad:
        raise ValueError(f"bad rank {rank}")
    return rank


def hang_on_rank(bad, marker):
    """Rank ``bad`` sleeps forever; every rank names itself ``marker`` in its argv."""
    sys.argv.append(marker)
    with open(f"/proc/{os.getpid()}/comm", "w") as f:  # visible in ps and /proc
        f.write(marker[:15])
    rank = rank_from_environment()
    if rank == bad:
        while True:
            time.sleep(1)
    while True:  # the others wait too, as in a collective that never completes
        time.sleep(1)


def pid_and_rank():
    return (os.getpid(), rank_from_environment())
