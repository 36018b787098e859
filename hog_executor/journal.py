"""The journal: which calls a client sent, so that another client can take them over.

With the result cache on, every job a client sends is written to the client's journal
(``<cache root>/journal/<host>-<pid>-<start>-<random>.jsonl``), with the keys of its calls: a
job another client could follow (its backend has ``attach``: Slurm, Globus Compute) *before*
the backend receives it, any other by the cache's writer thread within its next batch. Once
the backend has named the job, its identity for it (``job_record``) is added in a ``sent``
line: a Slurm job id, its array index and directory, written when ``sbatch`` has answered;
a Globus Compute task id, its task group and endpoint, written by the writer thread when the
service assigns them (``Job.on_task_id``; any backend that names its jobs later reports them
so). Once the job is over, a ``done`` line (a job over before its line was written needs no
line at all). A journal whose every job is done is removed.

A client that misses the cache for a call looks for that call's key in the journals of
clients that are gone (the process no longer exists on this machine). It claims such a
journal (an atomic rename: one client takes it over) and then, per job:

- a Slurm job still queued or running, or that finished while nobody watched and left its
  result files, is *attached*: the Slurm backend follows it by its id and reads its
  result, authenticated with the key of the backend that sent it; no job is submitted;
- a Globus Compute task is attached too, by an executor of the same endpoint: its task
  group is loaded from the service (``Executor.reload_tasks``), a task still queued or
  running is watched for its result, one that finished while nobody watched comes with its
  result; nothing is sent;
- any other job (a local process, a Slurm job that ended without a result, a Globus
  Compute job whose client died before its task id was written, a task the
  service no longer knows) was lost with its client: a warning says so, and the call runs
  again.

Every line carries an HMAC-SHA256 (the result cache's key); lines that fail it are ignored
with a warning.
"""

from __future__ import annotations

import atexit
import hmac
import json
import logging
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cache import attach_outcomes, hmac_key, private_dir

if TYPE_CHECKING:
    from .backends import Job
    from .cache import ResultCache
    from .context import CallContext
    from .executor import HogExecutor
    from .futures import HogFuture
    from .results import JobResults

__all__ = ["Journal", "journal_for", "process_start"]

logger = logging.getLogger(__name__)

#: Slurm states in which a job may still deliver its result.
ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED",
                           "REQUEUED", "RESIZING", "STAGE_OUT", "SIGNALING", "STOPPED",
                           "COMPLETED"})


@dataclass(frozen=True)
class _Followable:
    """How the journal speaks of the jobs of one backend that another client can follow."""

    #: The key of the job's id in its ``sent`` line.
    id_key: str
    #: What a message calls such a job (followed by its id).
    noun: str
    #: The backend's name for people.
    label: str
    #: Why a job without its id was lost.
    unnamed: str


#: The backends whose jobs another client can follow, by name.
FOLLOWABLE: dict[str, _Followable] = {
    "slurm": _Followable("slurm_id", "Slurm job", "Slurm",
                         "it died before Slurm answered sbatch"),
    "globus": _Followable("task_id", "Globus Compute task", "Globus Compute",
                          "it died before its Globus Compute task id was written"),
}

#: Seconds between two looks for the journals of gone clients.
SCAN_INTERVAL = 5.0


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot; None: no such process)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[19] if len(fields) > 19 and fields[0] != "Z" else None


def _mac(text: bytes, key: bytes | None = None) -> str:
    """The hex HMAC-SHA256 of a journal line's text."""
    return hmac.digest(key if key is not None else hmac_key(), text, "sha256").hex()


def _host() -> str:
    return socket.gethostname()


@dataclass
class JobRecord:
    """One job of a journal: the keys of its calls and where it went."""

    job: str
    keys: list[str | None]
    marker: str
    backend: str
    what: str
    time: float
    owner: dict[str, Any]
    sent: dict[str, Any] | None = None


@dataclass
class _Owner:
    host: str
    pid: int
    start: str | None

    def gone(self) -> bool | None:
        """True: the process is gone; False: alive; None: another machine (unknown)."""
        if self.host != _host():
            return None
        start = process_start(self.pid)
        return start is None or (self.start is not None and start != self.start)


@dataclass
class Journal:
    """The journal of this client for one cache root (see the module docstring).

    A job that a later client could follow (a Slurm job, a Globus Compute task) is written
    before the backend sees it. Other lines (jobs that die with their client, ``done``
    lines) are written by the cache's writer thread, a batch at a time, or at exit.
    """

    dir: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    path: Path | None = None
    open_jobs: set[str] = field(default_factory=set)
    orphans: dict[str, tuple[JobRecord, int]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    fd: int | None = None
    scanned: float = 0.0
    #: Lines not written yet: records (dicts) and the ids of jobs that are done, in order.
    pending: list[Mapping[str, Any] | str] = field(default_factory=list)
    flush_scheduled: bool = False

    # -- writing -------------------------------------------------------------------------

    def _line(self, record: Mapping[str, Any]) -> bytes:
        text = json.dumps(record, separators=(",", ":")).encode()
        return b"%s %s\n" % (_mac(text).encode(), text)

    def _render(self, items: list[Mapping[str, Any] | str]) -> bytes:
        """The lines of pending ``items``; a job whose record and ``done`` are both among
        them needs neither (it was over before anyone could look for it)."""
        recorded = {item["job"] for item in items
                    if not isinstance(item, str) and item.get("t") == "job"}
        over = {item for item in items if isinstance(item, str) and item in recorded}
        return b"".join(
            self._line({"t": "done", "job": item}) if isinstance(item, str)
            else self._line(item)
            for item in items
            if (item if isinstance(item, str) else item.get("job")) not in over
            or (not isinstance(item, str) and item.get("t") != "job"))

    def _write(self, *records: Mapping[str, Any]) -> None:
        """Write ``records`` now, after every line still pending."""
        with self.lock:
            pending, self.pending = self.pending, []
            data = self._render([*pending, *records])
            if not data:
                return
            if self.fd is None or self.path is None:
                private_dir(self.dir)
                me = os.getpid()
                name = f"{_host()}-{me}-{process_start(me)}-{secrets.token_hex(4)}.jsonl"
                self.path = self.dir / name
                self.seen.add(name)
                self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                owner = {"t": "owner", "host": _host(), "pid": me, "start": process_start(me)}
                data = self._line(owner) + data
                atexit.register(self.close)
            os.write(self.fd, data)

    def _later(self, item: Mapping[str, Any] | str) -> None:
        """Have a line written by the writer thread (with the lock held)."""
        self.pending.append(item)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            from .cache import later

            later(self.flush)

    def flush(self) -> None:
        """Write the pending lines (the writer thread)."""
        with self.lock:
            self.flush_scheduled = False
            if not self.pending:
                return
        try:
            self._write()
        except OSError as exc:
            logger.warning("cannot write the journal in %s: %s", self.dir, exc)

    def close(self) -> None:
        """At exit: write what is pending; remove the journal when nothing in it is open."""
        from .cache import flush

        flush()  # the writer thread's batch first: it may hold lines of this journal
        with self.lock:
            idle = not self.open_jobs and not self.orphans
            if idle and self.fd is None:
                return
        if not idle:
            try:
                self._write()
            except OSError:
                pass
        with self.lock:
            fd, path, self.fd, self.path = self.fd, self.path, None, None
            self.pending = []
        if fd is not None:
            os.close(fd)
        if idle and path is not None:
            try:
                path.unlink()
            except OSError:
                pass

    def record(self, results: JobResults, keys: list[str | None], backend: str,
               followable: bool = True) -> None:
        """A job is about to be sent (called before the backend sees it).

        ``followable``: another client could follow the job after this one dies (its
        backend has ``attach``): its line is written now. Otherwise it is written by the
        writer thread."""
        job = results.job
        line = {"t": "job", "job": job.id, "keys": keys, "marker": results.marker,
                "what": job.description, "time": time.time(), "backend": backend}
        if followable:
            try:
                self._write(line)
            except OSError as exc:
                logger.warning("cannot write the journal in %s: %s", self.dir, exc)
                return
            with self.lock:
                self.open_jobs.add(job.id)
        else:
            with self.lock:
                self.open_jobs.add(job.id)
                self._later(line)
        job.future.add_done_callback(lambda _: self.done(job.id))

    def sent(self, backend: Any, jobs: list[JobResults]) -> None:
        """The backend accepted ``jobs``: record its identity for each (``job_record``: a
        Slurm job id...), now for the jobs it has named, else when it names them
        (`_when_named`)."""
        name = backend.endpoint.backend
        describe = getattr(backend, "job_record", None)
        if describe is None:
            return  # the job line names the backend: all another client needs to know
        lines = []
        for results in jobs:
            job = results.job
            info = describe(job.id)
            if info is None:
                info = self._when_named(job, name, describe)
            if info is not None:
                lines.append({"t": "sent", "job": job.id, "backend": name, **info})
        if lines:
            try:
                self._write(*lines)
            except OSError as exc:
                logger.warning("cannot write the journal in %s: %s", self.dir, exc)

    def _when_named(self, job: Job, backend: str,
                    describe: Callable[[str], Mapping[str, Any] | None],
                    ) -> Mapping[str, Any] | None:
        """Have the backend's identity for ``job`` written (by the writer thread) when the
        backend reports the id its service assigned (``job.on_task_id``), again after a
        resend; returns it if the id came meanwhile."""
        reported = job.on_task_id

        def on_task_id(task_id: str) -> None:
            reported(task_id)
            info = describe(job.id)
            if info is None:
                return
            with self.lock:
                if job.id in self.open_jobs:
                    self._later({"t": "sent", "job": job.id, "backend": backend, **info})

        job.on_task_id = on_task_id
        return describe(job.id)  # named before the hook was in place

    def done(self, job_id: str) -> None:
        """The job is over (its outcome delivered, or failed): nobody needs to take it over.

        The line is written by the writer thread (or with the next line, or at exit): a
        client killed before that leaves the job open, and its successor then warns about a
        call whose result it finds in the cache anyway (only calls missing the cache consult
        the journal)."""
        with self.lock:
            if job_id not in self.open_jobs:
                return
            self.open_jobs.discard(job_id)
            self._later(job_id)

    # -- reading the journals of clients that are gone ------------------------------------

    def _read(self, path: Path) -> tuple[_Owner | None, dict[str, JobRecord]]:
        key = hmac_key()
        owner: _Owner | None = None
        jobs: dict[str, JobRecord] = {}
        try:
            lines = path.read_bytes().splitlines()
        except OSError:
            return None, {}
        bad = 0
        for line in lines:
            mac, _, text = line.partition(b" ")
            if not hmac.compare_digest(mac, _mac(text, key).encode()):
                bad += 1
                continue
            rec = json.loads(text)
            kind = rec.get("t")
            if kind == "owner":
                owner = _Owner(rec["host"], int(rec["pid"]), rec.get("start"))
            elif kind == "job" and owner is not None:
                jobs[rec["job"]] = JobRecord(rec["job"], list(rec["keys"]), rec["marker"],
                                             rec.get("backend", ""), rec.get("what", ""),
                                             float(rec.get("time", 0)),
                                             rec.get("from") or vars(owner).copy())
            elif kind == "sent" and rec.get("job") in jobs:
                jobs[rec["job"]].sent = rec
                jobs[rec["job"]].backend = rec.get("backend", "")
            elif kind == "done":
                jobs.pop(rec.get("job"), None)
        if bad:
            logger.warning("journal %s: %d line(s) failed authentication and were ignored",
                           path, bad)
        return owner, jobs

    def _claim_gone(self) -> None:
        """Take over the journals of clients gone from this machine (looked for at most
        every `SCAN_INTERVAL` seconds)."""
        now = time.monotonic()
        if now - self.scanned < SCAN_INTERVAL:
            return
        self.scanned = now
        try:
            names = [e.name for e in os.scandir(self.dir)
                     if e.name.endswith(".jsonl") and e.name not in self.seen]
        except OSError:
            return
        for name in names:
            path = self.dir / name
            owner, _ = self._read_owner(path)
            if owner is None or not owner.gone():
                if owner is not None and owner.gone() is None:
                    self.seen.add(name)  # another machine: left alone
                continue
            claimed = self.dir / f".claimed-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(path, claimed)  # atomic: one client takes it over
            except OSError:
                continue
            _, jobs = self._read(claimed)
            self.seen.add(name)
            for rec in jobs.values():
                self._adopt_record(rec)
            try:
                claimed.unlink()
            except OSError:
                pass

    def _read_owner(self, path: Path) -> tuple[_Owner | None, None]:
        try:
            with open(path, "rb") as f:
                first = f.readline()
        except OSError:
            return None, None
        mac, _, text = first.rstrip(b"\n").partition(b" ")
        if not hmac.compare_digest(mac, _mac(text).encode()):
            return None, None
        rec = json.loads(text)
        if rec.get("t") != "owner":
            return None, None
        return _Owner(rec["host"], int(rec["pid"]), rec.get("start")), None

    def _adopt_record(self, rec: JobRecord) -> None:
        """Keep a gone client's job as ours (also in our journal, in case we go too)."""
        lines: list[dict[str, Any]] = [{"t": "job", "job": rec.job, "keys": rec.keys,
                                        "marker": rec.marker, "what": rec.what,
                                        "time": rec.time, "from": rec.owner,
                                        "backend": rec.backend}]
        if rec.sent is not None:
            lines.append(rec.sent)
        try:
            self._write(*lines)
        except OSError:
            pass
        with self.lock:
            for pos, key in enumerate(rec.keys):
                if key is not None:
                    self.orphans[key] = (rec, pos)

    def _drop(self, rec: JobRecord) -> None:
        with self.lock:
            for key in rec.keys:
                if key is not None and self.orphans.get(key, (None,))[0] is rec:
                    del self.orphans[key]
            self.open_jobs.add(rec.job)
        self.done(rec.job)

    # -- taking over ------------------------------------------------------------------------

    def may_adopt(self) -> bool:
        """Whether `adopt` could take anything over: calls of a gone client are known, or a
        look for gone clients is due (cheap: the miss path asks before building `adopt`'s
        arguments)."""
        return bool(self.orphans) or time.monotonic() - self.scanned >= SCAN_INTERVAL

    def adopt(self, ex: HogExecutor, ctx: CallContext, keyed: dict[int, str],
              cache: ResultCache, submitted: float) -> dict[int, HogFuture[Any]]:
        """Futures for the calls (index -> key) that a gone client sent and that can be
        followed; warns about those lost with their client (they are sent again)."""
        if not keyed:
            return {}
        self._claim_gone()
        if not self.orphans:  # the usual case, without the lock (a second look below)
            return {}
        with self.lock:
            if not self.orphans:
                return {}
            found: dict[str, tuple[JobRecord, list[tuple[int, int]]]] = {}
            for i, key in keyed.items():
                hit = self.orphans.get(key)
                if hit is not None:
                    rec, pos = hit
                    found.setdefault(rec.job, (rec, []))[1].append((i, pos))
        out: dict[int, HogFuture[Any]] = {}
        for rec, wanted in found.values():
            futures = self._follow(ex, ctx, rec, cache, submitted)
            if futures is None:
                continue
            for i, pos in wanted:
                out[i] = futures[pos]
        return out

    def _lost(self, rec: JobRecord, why: str) -> None:
        owner = rec.owner
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.time))
        logger.warning(
            "%s: %d call(s) sent at %s by the client process %s on %s were lost with that "
            "client (%s); running them again", rec.what, len(rec.keys), when,
            owner.get("pid"), owner.get("host"), why)
        self._drop(rec)

    def _follow(self, ex: HogExecutor, ctx: CallContext, rec: JobRecord, cache: ResultCache,
                submitted: float) -> list[HogFuture[Any]] | None:
        """Attach to a gone client's Slurm job or Globus Compute task; None: it cannot be
        followed (lost)."""
        backend = ex.backend
        attach = getattr(backend, "attach", None)
        sent = rec.sent
        kind = FOLLOWABLE.get(rec.backend)
        if kind is None:
            self._lost(rec, f"its {rec.backend or 'backend'} job ran in that client")
            return None
        if sent is None or kind.id_key not in sent:
            self._lost(rec, kind.unnamed)
            return None
        ident = f"{kind.noun} {sent[kind.id_key]}"
        if attach is None or ex.endpoint.backend != rec.backend:
            self._lost(rec, f"it ran as {ident}, and this executor's backend is not "
                            f"{kind.label}")
            return None
        if rec.backend == "slurm":
            state = _slurm_state(sent)
            if state is not None and state not in ACTIVE_STATES:
                self._lost(rec, f"{ident} ended {state} without a result")
                return None
        from .backends import Job
        from .futures import CallTimings, HogFuture
        from .results import JobResults

        futures: list[HogFuture[Any]] = [HogFuture() for _ in rec.keys]
        for f in futures:
            f.timings = CallTimings(submitted, sent=time.time())
        job = Job(id=uuid.uuid4().hex, head="", payload=b"", tail="",
                  walltime=ctx.spec.walltime, config=ctx.values, description=rec.what,
                  calls=len(rec.keys), runner_key=None)
        results = JobResults(ex._state, job, futures, rec.marker, ctx.module)
        attach_outcomes(results, rec.keys, cache, rec.what)
        state_ = ex._state
        with state_.submit_lock:
            state_.check_open()
            state_.track([results])
            try:
                attach(job, sent)
            except Exception as exc:
                state_.forget(results)
                self._lost(rec, f"{ident} cannot be followed: {exc}")
                return None
        with self.lock:
            for key in rec.keys:
                if key is not None and self.orphans.get(key, (None,))[0] is rec:
                    del self.orphans[key]
            self.open_jobs.add(rec.job)
        logger.info("%s: following %s, sent by the client process %s on %s (gone)",
                    rec.what, ident, rec.owner.get("pid"), rec.owner.get("host"))
        job.future.add_done_callback(results.finished)
        job.future.add_done_callback(lambda _: self.done(rec.job))
        return futures


def _slurm_state(sent: Mapping[str, Any]) -> str | None:
    """A gone client's Slurm job: None when it may still deliver (queued, running, or its
    result files are there), else the state it ended in."""
    result = os.path.join(str(sent.get("dir", "")), f"task-{sent.get('index', 0)}.hmac")
    if os.path.exists(result):
        return None
    from .backends.slurm.watcher import SlurmQueryError, query_states

    slurm_id = str(sent["slurm_id"])
    try:
        states = query_states([slurm_id.split("_", 1)[0]])
    except SlurmQueryError:
        return None  # the watcher will tell
    listed = states.get(slurm_id)
    if listed is None:
        return None if os.path.exists(result) else "(no longer known to Slurm)"
    return listed[0]


_journals: dict[str, Journal] = {}
_journals_lock = threading.Lock()


def journal_for(root: Path) -> Journal:
    """This process's journal for the cache root ``root``."""
    with _journals_lock:
        found = _journals.get(str(root))
        if found is None:
            found = _journals[str(root)] = Journal(root / "journal")
        return found
