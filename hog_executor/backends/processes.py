"""Bundle processes on this machine: running bundle files, stopping a bundle's whole session,
hints for its bash.

Standard library only: the ``dask`` backend ships this module to its workers by value, so a
worker needs no hog-executor installation to run bundles and stop them.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping

from ..runner import OUTPUT_CAP, RESULT_BEGIN, capped_output

__all__ = ["KILL_GRACE", "STOPPED_BEFORE_START", "BundleProcesses", "NoSpaceError",
           "read_stdout", "same_machine_hints", "session_members", "signal_session",
           "stop_session", "uv_binary", "write_private"]

#: Seconds between SIGTERM and SIGKILL when a running bundle is stopped.
KILL_GRACE = 3.0
#: What `BundleProcesses.run` returns for a job stopped before its process started: the
#: returncode, stdout and stderr of a bundle stopped by SIGTERM.
STOPPED_BEFORE_START = (-signal.SIGTERM, b"", b"hog: stopped before start\n")
#: Ids of jobs stopped before they started that one `BundleProcesses` remembers; beyond, it
#: forgets them all (with ``remember``, ids of jobs that run elsewhere pile up otherwise).
MAX_REMEMBERED_STOPS = 10_000


#: The errors of a write that found no room: a full file system, a quota, a file size limit.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class NoSpaceError(OSError):
    """A bundle's file could not be written: its file system is full (or a quota or file
    size limit was reached). The message names the directory and the space left in it."""


def no_space(path: str, exc: OSError, size: int | None = None) -> NoSpaceError:
    """The `NoSpaceError` for ``exc``, met while writing the file ``path`` (``size`` bytes)."""
    directory = os.path.dirname(path) or "."
    try:
        free = f"{_human(shutil.disk_usage(directory).free)} free"
    except OSError:
        free = "free space unknown"
    what = f" ({_human(size)})" if size is not None else ""
    return NoSpaceError(exc.errno, f"no room in {directory} ({free}) to write "
                        f"{os.path.basename(path)}{what}: {exc.strerror}")


def _human(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def write_private(path: str, text: str) -> None:
    """Create the file ``path`` (it must not exist), readable by this user only, with ``text``.

    A file that could not be written whole is removed.

    Raises:
        NoSpaceError: its file system is full (the message names the directory and the
            space left).
        OSError: it exists already, or another error.
    """
    created = False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        created = True
        with open(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
    except BaseException as exc:
        if created:
            _unlink(path)
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            raise no_space(path, exc, len(text.encode("utf-8", "surrogateescape"))) from None
        raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:  # removed with its directory meanwhile
        pass


class BundleProcesses:
    """The bundle processes of one owner (a local backend, a Dask worker), by job id.

    `run` writes a bundle file, runs it with bash in a session of its own and waits for it;
    `stop` stops a job's whole session, or keeps it from starting when its process is not
    started yet. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, subprocess.Popen[bytes]] = {}
        self._expected: set[str] = set()  # about to run: a stop keeps them from starting
        self._stopped: set[str] = set()  # stopped before their process started
        self._closed = False  # stop_all was called: nothing starts any more

    def expect(self, job_id: str) -> None:
        """``job_id`` is about to `run`: a `stop` from now on keeps its process from starting."""
        with self._lock:
            self._expected.add(job_id)

    def forget(self, job_id: str) -> None:
        """``job_id`` will not `run` after all (see `expect`)."""
        with self._lock:
            self._expected.discard(job_id)
            self._stopped.discard(job_id)

    def run(self, job_id: str, bundle: str, path: str, env: Mapping[str, str], *,
            on_start: Callable[[], object] | None = None,
            die_with_parent: bool = False) -> tuple[int, bytes, bytes]:
        """Run ``bundle`` from the new private file ``path``; return its exit status and output.

        Args:
            job_id: the job's id, for `stop`.
            bundle: the bash text (written to ``path``, removed when the process has ended).
            path: where to write it; must not exist.
            env: the process's whole environment.
            on_start: called once the process has started (it must not raise).
            die_with_parent: stop the bundle (SIGTERM) if the thread that started it dies,
                where ``setpriv`` is installed.

        Returns:
            ``(returncode, stdout, stderr)``; `STOPPED_BEFORE_START` when the job was stopped
            before its process started. Each output is capped as a warm runner caps a
            call's (see `read_stdout`); when the bundle's files were removed while it ran
            (its directory deleted) and it failed, stderr ends with a line saying so.

        Raises:
            NoSpaceError: the bundle's file system is full (nothing is left in it).
            OSError: the bundle's files cannot be created, or its process started.
        """
        cmd = ["bash", path]
        setpriv = shutil.which("setpriv") if die_with_parent else None
        if setpriv:
            cmd = [setpriv, "--pdeathsig", "TERM", *cmd]
        # Output goes to files, not pipes: the result never waits for a process the call
        # left behind holding them (only for the bundle's own bash).
        # They stay open here and are read through these descriptors: a bundle whose
        # directory is removed while it runs (a /tmp cleaner) still has its output read.
        outputs = (path + ".out", path + ".err")
        written: list[str] = []
        files: list[int] = []
        try:
            write_private(path, bundle)
            written.append(path)
            for name in outputs:
                try:
                    files.append(os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
                except OSError as exc:
                    if exc.errno in NO_SPACE_ERRNOS:
                        raise no_space(name, exc) from None
                    raise
                written.append(name)
            with self._lock:  # a stop is seen either before the start or after it
                self._expected.discard(job_id)
                if self._closed or job_id in self._stopped:
                    self._stopped.discard(job_id)
                    return STOPPED_BEFORE_START
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=files[0], stderr=files[1],
                    env=env, start_new_session=True,
                )
                self._running[job_id] = proc
            try:
                if on_start is not None:
                    on_start()
                proc.wait()
            except BaseException:
                stop_session(proc.pid)  # nobody waits for its output any more
                raise
            if session_members(proc.pid):  # what the call left running ends with it
                stop_session(proc.pid)
            out = read_stdout(files[0])
            err = capped_output(files[1], os.fstat(files[1]).st_size)
            if proc.returncode != 0 and not os.path.exists(path):
                err += (f"hog: the files of this bundle in {os.path.dirname(path)} were removed "
                        "while it ran (was its directory deleted?)\n").encode()
            return proc.returncode, out, err
        finally:
            with self._lock:
                self._expected.discard(job_id)
                self._running.pop(job_id, None)
            for fd in files:
                os.close(fd)
            for name in written:
                _unlink(name)

    def stop(self, job_id: str, *, remember: bool = False) -> bool:
        """Stop the bundle of ``job_id``: its whole session (SIGTERM, then SIGKILL after
        `KILL_GRACE` seconds), or its start when it is expected (see `expect`).

        Args:
            remember: keep an id unknown here too, so that its bundle never starts here (for
                a bundle that may still come; at most `MAX_REMEMBERED_STOPS` are kept).

        Returns:
            Whether a running bundle was stopped or an expected one kept from starting.
        """
        with self._lock:
            proc = self._running.get(job_id)
            if proc is None:
                expected = job_id in self._expected
                if expected or remember:
                    if len(self._stopped) >= MAX_REMEMBERED_STOPS:
                        self._stopped.clear()
                    self._stopped.add(job_id)
                return expected
        if proc.poll() is not None:
            return False
        stop_session(proc.pid)
        return True

    def stop_all(self) -> None:
        """Stop every running bundle, and start none from now on."""
        with self._lock:
            self._closed = True
            procs = list(self._running.values())
        for proc in procs:
            if proc.poll() is None:
                stop_session(proc.pid)


def read_stdout(fd: int) -> bytes:
    """A bundle's standard output from the file ``fd``, as the client keeps it.

    The result frame (from the last frame line on) is kept whole; what was printed before it
    is capped as each call's output on a warm runner is (`hog_executor.runner.capped_output`:
    its last `OUTPUT_CAP` bytes after a note of what was dropped). Reads only what it keeps,
    besides looking backwards for the frame.
    """
    size = os.fstat(fd).st_size
    if size <= OUTPUT_CAP:
        return os.pread(fd, size, 0)
    frame = _rfind(fd, size, b"\n" + RESULT_BEGIN)
    if frame < 0:
        return capped_output(fd, size)
    return capped_output(fd, frame) + os.pread(fd, size - frame, frame)


#: Bytes read at a time when looking backwards through an output file.
_SCAN_BLOCK = 1 << 20


def _rfind(fd: int, size: int, needle: bytes) -> int:
    """The offset of the last ``needle`` in the first ``size`` bytes of ``fd`` (-1: none)."""
    end = size
    while end > 0:
        start = max(0, end - _SCAN_BLOCK)
        window = os.pread(fd, min(size, end + len(needle) - 1) - start, start)
        found = window.rfind(needle)
        if found >= 0:
            return start + found
        end = start
    return -1


def session_members(sid: int) -> list[int]:
    """Every process in session ``sid`` (Linux /proc; elsewhere just the leader)."""
    if not os.path.isdir("/proc"):
        return [sid]
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    members.append(int(entry))
            except OSError:
                continue
    return members


def signal_session(sid: int, sig: int) -> None:
    """Send ``sig`` to every process of session ``sid``, including ones that left its group."""
    for pid in session_members(sid):
        try:
            os.kill(pid, sig)
        except OSError:  # it exited since it was listed
            continue
    try:
        os.killpg(sid, sig)
    except OSError:  # the group is empty: every member has exited, or left it
        return


def stop_session(sid: int, grace: float = KILL_GRACE) -> None:
    """SIGTERM the session of a bundle started with ``start_new_session``; SIGKILL what is
    left after ``grace`` seconds (from a daemon timer: this returns at once)."""
    signal_session(sid, signal.SIGTERM)

    def escalate() -> None:
        if session_members(sid):
            signal_session(sid, signal.SIGKILL)

    timer = threading.Timer(grace, escalate)
    timer.daemon = True
    timer.start()


def uv_binary() -> str | None:
    """The uv installed with hog-executor (the ``uv`` package), else uv on ``PATH``."""
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except Exception:
        return shutil.which("uv")


def same_machine_hints() -> dict[str, str]:
    """Environment variables that let a bundle running on this machine skip discovery.

    ``HOG_UV`` names the uv binary installed with hog-executor, and ``HOG_CLIENT_PYTHON`` this
    interpreter, used for environments that ask for its Python version (no search, no
    download). Backends whose bundles run on the machine of this process pass these on.
    """
    hints = {
        "HOG_CLIENT_PYTHON": os.path.realpath(sys.executable),
        "HOG_CLIENT_PYTHON_VERSION": f"{sys.version_info[0]}.{sys.version_info[1]}",
    }
    uv = uv_binary()
    if uv:
        hints["HOG_UV"] = uv
    return hints
