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


def fail_at(i):
    """Call ``i`` == 1 raises on rank 1 while rank 0 waits in a barrier."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if i == 1 and comm.rank == 1:
        raise RankFailed(f"call {i}")
    comm.barrier()
    return i


class Point:
    def __init__(self, x):
        self.x = x

    def __eq__(self, other):
        return type(other) is Point and other.x == self.x

    def __repr__(self):
        return f"Point({self.x})"


def point_of_rank():
    return Point(rank_from_environment())


def fail_without_mpi(bad):
    """Rank ``bad`` raises without MPI; the others return."""
    rank = rank_from_environment()
    if rank == bad:
        raise ValueError(f"bad rank {rank}")
    return rank


def hang(piddir):
    """Every rank writes its PID to ``piddir/<rank>.pid`` and sleeps forever (as ranks
    waiting in a collective that never completes)."""
    rank = rank_from_environment()
    path = os.path.join(piddir, f"{rank}.pid")
    with open(path + ".part", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".part", path)
    while True:
        time.sleep(1)


def exit_on_rank(bad):
    """Rank ``bad`` (-1: every rank) ends its process without a result; the others return
    their rank."""
    rank = rank_from_environment()
    if rank == bad or bad == -1:
        sys.stdout.flush()
        os._exit(3)
    return rank


def pid_and_rank():
    return (os.getpid(), rank_from_environment())
