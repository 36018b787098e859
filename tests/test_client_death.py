"""The client's death stops its work: Ctrl-C, SIGTERM and SIGKILL of a client in the middle
of a ``map`` leave no process of its calls behind. Ctrl-C and SIGTERM end it with one line on
stderr, no traceback, and the signal's exit status; a ``try``/``except`` around the block
still sees the ``KeyboardInterrupt``; a second Ctrl-C ends it at once."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import hogtest_warm as warm
import pytest
from conftest import SCRIPTS, session_processes, wait_for

CLIENT = """
import sys
sys.path.insert(0, {scripts!r})
import hogtest_basic as basic
import hogtest_warm as warm
from hog_executor import HogExecutor

{opening}
    ex.submit(warm.pid).result(timeout=300)
    print(ex.backend.workdir, flush=True)
    for _ in ex.map({fn}, [60] * 4, chunksize=1):
        pass
"""
#: The one line a client ended by Ctrl-C or SIGTERM prints.
LINE = re.compile(r"hog-executor: (interrupted|terminated by SIGTERM); (stopped \d+ running "
                  r"calls?(, cancelled \d+ queued calls?)?|cancelled \d+ queued calls?)")


def start_client(cache_dir: str, with_block: bool, fresh: bool, *, caught: bool = False,
                 fn: str = "warm.nap") -> tuple[subprocess.Popen, str]:
    make = (f'HogExecutor("local", max_workers=2, cache_dir={cache_dir!r}, '
            f'fresh_process={fresh})')
    opening = f"with {make} as ex:" if with_block else f"if True:\n    ex = {make}"
    code = textwrap.dedent(CLIENT.format(scripts=str(SCRIPTS), opening=opening, fn=fn))
    if caught:  # the user's own try/except around it all
        code = ("try:\n" + textwrap.indent(code, "    ")
                + "except KeyboardInterrupt:\n    print('caught', flush=True)\n")
    client = subprocess.Popen([sys.executable, "-c", code],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workdir = client.stdout.readline().strip()
    assert workdir, client.stderr.read()
    # the map's calls run: two bundles (warm runners or one-shot bundles) run bash on their
    # files in the work directory (the first call's runner takes one of the calls)
    assert wait_for(lambda: len(bundles(workdir)) >= 2, timeout=120), bundles(workdir)
    return client, workdir


@pytest.mark.slow
@pytest.mark.parametrize("fresh", [False, True], ids=["warm", "fresh"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("with_block", [True, False], ids=["with", "bare"])
def test_a_dying_client_leaves_nothing_running(cache_dir, sig, fresh, with_block):
    _ = warm.pid  # the module the client imports
    client, workdir = start_client(cache_dir, with_block, fresh)
    try:
        os.kill(client.pid, sig)
        client.wait(timeout=60)  # it does not wait for the 60 s calls
        assert wait_for(lambda: not session_processes(workdir), timeout=30), \
            session_processes(workdir)
        if sig != signal.SIGKILL:
            assert not os.path.exists(workdir)  # and it cleaned up after itself
            # one line, no traceback; the status of a death by SIGINT (130 in a shell), or 143
            err = client.stderr.read()
            assert "Traceback" not in err and len(err.splitlines()) == 1, err
            assert LINE.fullmatch(err.strip()), err
            assert err.startswith("hog-executor: interrupted" if sig == signal.SIGINT
                                  else "hog-executor: terminated by SIGTERM")
            assert client.returncode == (-signal.SIGINT if sig == signal.SIGINT else 143)
    finally:
        client.kill()
        client.wait()


@pytest.mark.slow
def test_a_caught_ctrl_c_is_seen_by_the_code_that_catches_it(cache_dir):
    client, workdir = start_client(cache_dir, True, False, caught=True)
    try:
        os.kill(client.pid, signal.SIGINT)
        out, err = client.communicate(timeout=60)
        assert out.strip() == "caught"  # the KeyboardInterrupt came through the block
        assert err == ""  # and nothing printed in its place
        assert client.returncode == 0
        assert wait_for(lambda: not session_processes(workdir), timeout=30)
    finally:
        client.kill()
        client.wait()


@pytest.mark.slow
def test_a_second_ctrl_c_ends_the_client_at_once(cache_dir):
    # Its calls ignore SIGTERM: stopping them takes the SIGKILL grace, which the second
    # Ctrl-C cuts short.
    client, workdir = start_client(cache_dir, True, False, fn="basic.stubborn_sleep")
    try:
        assert wait_for(lambda: any(ignores_sigterm(p) for p in session_processes(workdir)),
                        timeout=120)
        os.kill(client.pid, signal.SIGINT)
        assert wait_for(lambda: client.poll() is not None, timeout=0.5) is False  # stopping
        os.kill(client.pid, signal.SIGINT)
        client.wait(timeout=30)
        assert client.returncode == -signal.SIGINT
        err = client.stderr.read()
        assert "Traceback" not in err and "hog-executor:" not in err, err  # no exit handlers
    finally:
        client.kill()
        client.wait()
        for pid in session_processes(workdir):  # what the cut-short stop left
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended meanwhile
                pass
        shutil.rmtree(workdir, ignore_errors=True)


def bundles(workdir: str) -> list[int]:
    """The bash processes of bundles (and runners) in ``workdir``."""
    found = []
    for pid in session_processes(workdir):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if len(argv) > 1 and os.path.basename(argv[0]) == b"bash" \
                and argv[1].startswith(workdir.encode()):
            found.append(pid)
    return found


def ignores_sigterm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(line for line in f if line.startswith("SigIgn:")).split()[1]
    except (OSError, StopIteration):
        return False
    return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))
