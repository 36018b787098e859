# /// script
# requires-python = ">=3.10"
# dependencies = []
# ///
"""Functions for the warm-runner tests (run remotely by warm runners)."""

import os
import sys
import time

STATE = []


def pid(_=None):
    return os.getpid()


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def shout(x):
    print(f"out {x}")
    print(f"err {x}", file=sys.stderr)
    os.write(1, f"fd {x}\n".encode())
    return x


def remember(x):
    STATE.append(x)
    return list(STATE)


def die_on(x, bad):
    if x == bad:
        os.kill(os.getpid(), 9)
    return x


class Dummy:
    """A result whose lifetime the tests watch."""

    def __init__(self, x):
        self.x = x


def make_dummy(x):
    return Dummy(x)


class Holder:
    def method(self, x):
        return x + 1


def nap(seconds, value=None):
    time.sleep(seconds)
    return value


def spawn(kind, then_sleep=0):
    """Start ``sleep 60`` in the background and return its pid, leaving it running.

    ``kind``: "child" (a plain child), "session" (its own session), "daemon" (double fork:
    orphaned at once, in its own session).
    """
    import subprocess

    if kind == "daemon":
        r, w = os.pipe()
        if os.fork() == 0:  # the intermediate process
            os.setsid()
            proc = subprocess.Popen(["sleep", "60"])
            os.write(w, str(proc.pid).encode())
            os._exit(0)
        os.close(w)
        pid = int(os.read(r, 64))
        os.close(r)
        os.wait()
    else:
        pid = subprocess.Popen(["sleep", "60"], start_new_session=kind == "session",
                               stdout=None, stderr=None).pid
    time.sleep(then_sleep)
    return pid


def die_once(x, doomed, where):
    """SIGKILL this process the first time it runs a doomed ``x`` (a marker file remembers)."""
    if x in doomed:
        marker = os.path.join(where, f"died-{x}")
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), 9)
    return x


def kill_worker_once(marker, needles=("spawn_main", "process_worker_pool")):
    """The first time (``marker`` remembers), SIGKILL the nearest ancestor process whose
    command line holds one of ``needles`` (the worker running this call's bundle)."""
    if os.path.exists(marker):
        return "again"
    open(marker, "w").close()
    pid = os.getppid()
    while pid > 1:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().decode("utf-8", "replace")
        if any(n in cmd for n in needles):
            os.kill(pid, 9)
            time.sleep(60)
            return "still here"
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
    return "no worker among the ancestors"
