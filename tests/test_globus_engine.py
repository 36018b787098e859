"""The globus backend against Globus Compute's own ``GlobusComputeEngine`` (Parsl's
high-throughput executor, its interchange and worker pool, on this machine), through the
real SDK Executor and the loopback client of ``tests/globus_loopback.py``.

An endpoint worker that dies while running a call is an infrastructure failure: with
``retries=`` the call runs again on the worker the pool starts in its place.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

import hogtest_warm as warm
import pytest

from hog_executor import HogExecutor, RemoteProcessError
from hog_executor.backends.local import same_machine_hints

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

try:
    import globus_compute_sdk as globus_sdk
    from globus_compute_endpoint import engines
    from globus_loopback import LoopbackClient
    from parsl.providers import LocalProvider
except ImportError as exc:  # pragma: no cover - the test extra installs them
    if os.environ.get("CI") == "true":
        raise
    pytest.skip(f"needs globus-compute-sdk and globus-compute-endpoint (pip install -e "
                f"'.[test]'): {exc}", allow_module_level=True)

ENDPOINT = str(uuid.uuid4())


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    saved = dict(os.environ)
    os.environ.update(same_machine_hints())
    # The interchange is started by its command, from the environment running the tests.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    assert shutil.which("globus-compute-endpoint"), "the endpoint package's command"
    eng = engines.GlobusComputeEngine(
        address="127.0.0.1", encrypted=False, max_workers_per_node=2,
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
        heartbeat_period=1, heartbeat_threshold=5)
    eng.start(endpoint_id=uuid.UUID(ENDPOINT), run_dir=str(tmp_path_factory.mktemp("gce")))
    yield eng
    eng.shutdown()
    os.environ.clear()
    os.environ.update(saved)


def _executor(engine, cache_dir: str, **config):
    sdk = globus_sdk.Executor(client=LoopbackClient(engine, ENDPOINT))
    ex = HogExecutor(ENDPOINT, script=warm.__file__, cache_dir=cache_dir, globus_executor=sdk,
                     **config)
    return ex, sdk


def test_a_call_whose_endpoint_worker_died_runs_again(engine, cache_dir, tmp_path):
    ex, sdk = _executor(engine, cache_dir, retries=1)
    try:
        f = ex.submit(warm.kill_worker_once, str(tmp_path / "once"))
        assert f.result(timeout=300) == "again"
        assert f.attempts == 2
    finally:
        ex.shutdown(wait=True, cancel_futures=True, terminate=True)
        sdk.shutdown(wait=False, cancel_futures=True)


def test_without_retries_a_lost_worker_is_named(engine, cache_dir, tmp_path):
    ex, sdk = _executor(engine, cache_dir)
    try:
        f = ex.submit(warm.kill_worker_once, str(tmp_path / "once"))
        with pytest.raises(RemoteProcessError, match="endpoint worker running it died") as info:
            f.result(timeout=300)
        assert info.value.state == "WorkerLost" and f.attempts == 1
        # the pool replaced its worker: the next call runs
        assert ex.submit(warm.kill_worker_once, str(tmp_path / "once")).result(
            timeout=300) == "again"
    finally:
        ex.shutdown(wait=True, cancel_futures=True, terminate=True)
        sdk.shutdown(wait=False, cancel_futures=True)
