"""The client's death stops its work: Ctrl-C, SIGTERM and SIGKILL of a client in the middle
of a ``map`` leave no process of its calls behind."""

from __future__ import annotations

import os
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
import hogtest_warm as warm
from hog_executor import HogExecutor

{opening}
    ex.submit(warm.pid).result(timeout=300)
    print(ex.backend.workdir, flush=True)
    for _ in ex.map(warm.nap, [60] * 4, chunksize=1):
        pass
"""


def start_client(cache_dir: str, with_block: bool, fresh: bool) -> tuple[subprocess.Popen, str]:
    make = (f'HogExecutor("local", max_workers=2, cache_dir={cache_dir!r}, '
            f'fresh_process={fresh})')
    opening = f"with {make} as ex:" if with_block else f"if True:\n    ex = {make}"
    code = CLIENT.format(scripts=str(SCRIPTS), opening=opening)
    client = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workdir = client.stdout.readline().strip()
    assert workdir, client.stderr.read()
    # both calls run: their processes (runner or bundle) hold the work directory
    assert wait_for(lambda: len(session_processes(workdir)) >= 2, timeout=120)
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
    finally:
        client.kill()
        client.wait()
