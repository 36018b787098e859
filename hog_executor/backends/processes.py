"""Bundle processes on this machine: stopping a bundle's whole session, hints for its bash.

Standard library only: the ``dask`` backend ships this module to its workers by value, so a
worker needs no hog-executor installation to run bundles and stop them.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading

__all__ = ["KILL_GRACE", "same_machine_hints", "session_members", "signal_session",
           "stop_session", "uv_binary"]

#: Seconds between SIGTERM and SIGKILL when a running bundle is stopped.
KILL_GRACE = 3.0


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
        except OSError:
            pass
    try:
        os.killpg(sid, sig)
    except OSError:
        pass


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
