"""``hog cancel``: list and cancel the Slurm jobs of clients that are gone.

A client killed outright (SIGKILL, a lost login session) leaves its Slurm jobs in the queue
on purpose: with the result cache (``cache=``), a rerun collects them. Each job names its
client in its ``--comment`` (`hog_executor.backends.slurm.clients`): ``hog cancel`` lists
this user's hog jobs whose client is gone, and cancels them with ``--yes``. Jobs of clients
still running, and of clients on other hosts (whose state is not known here), are left
alone unless ``--all`` is given.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .common import CliError

if TYPE_CHECKING:
    from ..backends.slurm.clients import HogJob

__all__ = ["cmd_cancel", "select_jobs"]

#: Seconds scancel may take.
SCANCEL_TIMEOUT = 120.0
#: Job ids per scancel command line.
SCANCEL_BATCH = 500


def select_jobs(jobs: list[HogJob], *, everything: bool = False, endpoint: str | None = None,
                run: str | None = None) -> list[tuple[HogJob, str]]:
    """The jobs to act on, each with its client's status: those whose client is gone (all
    with ``everything``), of ``endpoint`` and ``run`` when given."""
    from ..backends.slurm.clients import GONE, client_status

    chosen = []
    for job in jobs:
        status = client_status(job.client)
        if not everything and status != GONE:
            continue
        if endpoint is not None and job.client.endpoint != endpoint:
            continue
        if run is not None and job.client.run != run:
            continue
        chosen.append((job, status))
    return chosen


def _table(chosen: list[tuple[HogJob, str]]) -> None:
    rows = [("SLURM ID", "STATE", "ENDPOINT", "CLIENT", "RUN", "CLIENT IS")]
    rows += [(job.slurm_id, job.state, job.client.endpoint,
              f"{job.client.host} pid={job.client.pid}", job.client.run, status)
             for job, status in chosen]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _scancel(ids: list[str]) -> None:
    from ..backends.slurm.clients import slurm_command

    for start in range(0, len(ids), SCANCEL_BATCH):
        try:
            slurm_command(["scancel", *ids[start:start + SCANCEL_BATCH]], SCANCEL_TIMEOUT)
        except RuntimeError as exc:
            raise CliError(str(exc)) from None


def cmd_cancel(args: argparse.Namespace) -> int:
    """List (``--list``, or without ``--yes``) or cancel (``--yes``) the chosen jobs.

    Raises:
        CliError: squeue or scancel failed.
    """
    from ..backends.slurm.clients import hog_jobs

    try:
        jobs = hog_jobs()
    except RuntimeError as exc:
        raise CliError(f"{exc} (hog cancel runs where Slurm's commands are)") from None
    chosen = select_jobs(jobs, everything=args.all, endpoint=args.endpoint, run=args.run)
    what = "hog job(s)" if args.all else "hog job(s) whose client is gone"
    if not chosen:
        print(f"no {what}")
        return 0
    _table(chosen)
    if args.list:
        return 0
    ids = sorted({job.array_id for job, _ in chosen})  # an array's id covers its tasks
    if not args.yes:
        print(f"\n{len(chosen)} {what}; cancel with: hog cancel --yes"
              + (" --all" if args.all else "")
              + (f" --endpoint {args.endpoint}" if args.endpoint else "")
              + (f" --run {args.run}" if args.run else ""))
        return 0
    _scancel(ids)
    print(f"\ncancelled Slurm job(s) {', '.join(ids)}")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``hog cancel`` to the subcommands ``sub``."""
    cancel = sub.add_parser(
        "cancel", help="list or cancel the Slurm jobs of clients that are gone",
        description="A client killed outright leaves its Slurm jobs in the queue (a rerun "
                    "with cache= collects them). This lists your hog jobs whose client "
                    "process is gone, and cancels them with --yes. Jobs of running clients, "
                    "and of clients on other hosts, are left alone unless --all is given.",
        epilog="Example: hog cancel --list; hog cancel --yes --endpoint cluster")
    cancel.add_argument("--list", action="store_true", help="only list the jobs")
    cancel.add_argument("--yes", action="store_true", help="cancel them (without it, hog "
                                                           "cancel only says what it would "
                                                           "cancel)")
    cancel.add_argument("--all", action="store_true",
                        help="every hog job of yours, also of running clients and of "
                             "clients on other hosts")
    cancel.add_argument("--endpoint", metavar="NAME", help="only jobs sent through NAME")
    cancel.add_argument("--run", metavar="ID", help="only jobs of the client run ID (the "
                                                    "RUN column)")
    cancel.set_defaults(func=cmd_cancel)
