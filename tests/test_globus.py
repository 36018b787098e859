"""The globus backend through the real Globus Compute SDK Executor and a real endpoint engine.

Only the web service is replaced (``tests/globus_loopback.py``): the SDK serializes, batches
and deserializes as it does against the cloud, and a ``ProcessPoolEngine`` from
globus-compute-endpoint runs the registered ``ShellFunction`` on real bundles.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import hogtest_basic as basic
import pytest

from hog_executor import (
    BackendError,
    ConfigError,
    HogExecutor,
    PayloadTooLargeError,
    RemoteProcessError,
    WalltimeExceeded,
)
from hog_executor.backends.globus import GlobusBackend
from hog_executor.backends.globus.sdk import REQUEST_LIMIT
from hog_executor.backends.globus.shell import (
    ARG_LIMIT,
    SANDBOX_WARNING,
    command_template,
    encode_payload,
    wrap,
)
from hog_executor.backends.local import same_machine_hints
from hog_executor.bundle import payload_line

pytestmark = pytest.mark.timeout(300)

try:
    import globus_compute_sdk as globus_sdk
    from globus_compute_endpoint import engines
    from globus_loopback import LoopbackClient
except ImportError as exc:  # pragma: no cover - the test extra installs both
    if os.environ.get("CI") == "true":
        raise  # CI must run these tests
    pytest.skip(f"needs globus-compute-sdk and globus-compute-endpoint (pip install -e "
                f"'.[test]'): {exc}", allow_module_level=True)

ENDPOINT = str(uuid.uuid4())
SCRIPT = basic.__file__


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    # The endpoint machine has uv and a Python: the same hints the local backend gives.
    saved = dict(os.environ)
    os.environ.update(same_machine_hints())
    # Workers are spawned, not forked from this multi-threaded process.
    eng = engines.ProcessPoolEngine(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
    eng.start(endpoint_id=uuid.UUID(ENDPOINT), run_dir=str(tmp_path_factory.mktemp("endpoint")))
    yield eng
    eng.shutdown(block=True)
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def client(engine) -> LoopbackClient:
    return LoopbackClient(engine, ENDPOINT)


@pytest.fixture
def make(client: LoopbackClient, cache_dir: str):
    made = []

    def make_executor(**config):
        sdk = globus_sdk.Executor(client=client)
        ex = HogExecutor(ENDPOINT, script=SCRIPT, cache_dir=cache_dir, globus_executor=sdk,
                         **config)
        made.append((ex, sdk))
        return ex

    yield make_executor
    for ex, sdk in made:
        ex.shutdown(wait=True, cancel_futures=True, terminate=True)
        sdk.shutdown(wait=False, cancel_futures=True)


def test_shell_command_formats_back_to_the_bundle():
    head, tail = "a {b} }{ ${x}\n", "c {{d}} ${y[@]}\n"
    payload = b"\x00{payload}\xff"
    cmd = command_template(head, tail).format(payload=encode_payload(payload))
    assert cmd == wrap(head + payload_line(payload) + tail)
    assert head + payload_line(payload) + tail in cmd


def test_uuid_endpoint_resolves_to_globus_and_keys_are_checked(client, tmp_path):
    sdk = globus_sdk.Executor(client=client)
    try:
        ex = HogExecutor(ENDPOINT, globus_executor=sdk, account="abc",
                         user_endpoint_config={"partition": "debug"})
        assert isinstance(ex.backend, GlobusBackend)
        assert ex.endpoint.values["account"] == "abc"
        with pytest.raises(ConfigError, match="JSON"):
            HogExecutor(ENDPOINT, user_endpoint_config={"x": object()})
        with pytest.raises(ConfigError, match=r"globus_compute_sdk\.Executor"):
            HogExecutor(ENDPOINT, globus_executor="not an executor")
        with pytest.raises(ConfigError, match="5671"):
            HogExecutor(ENDPOINT, amqp_port=1234)
        script = tmp_path / "noendpoint.py"
        script.write_text('# /// script\n# [tool.hog.x]\n# backend = "globus"\n# ///\n')
        with pytest.raises(ConfigError, match="names no endpoint"):
            HogExecutor("x", script=script)
        with pytest.raises(ConfigError, match="endpoint"):
            HogExecutor(str(uuid.uuid4()), globus_executor=globus_sdk.Executor(
                endpoint_id=str(uuid.uuid4()), client=client))
    finally:
        sdk.shutdown(wait=False)


@pytest.mark.slow
def test_submit_and_map_return_values_and_task_ids(make, client):
    ex = make()
    f = ex.submit(basic.add, 1, 2, c=3)
    assert f.result(timeout=120) == 6
    uuid.UUID(f.task_id)  # the service's task id, not a local one
    assert list(ex.map(basic.square, range(20))) == [x * x for x in range(20)]
    point = ex.submit(basic.make_point, 1, 2).result(timeout=60)
    assert point == basic.Point(1, 2)
    # One function registration for all calls of one script and configuration.
    assert sum(1 for r in client.requests if r[0] == "register") == 1


def test_remote_exceptions_keep_their_type(make):
    ex = make()
    with pytest.raises(basic.CustomError, match="boom"):
        ex.submit(basic.fail_custom, "boom").result(timeout=120)
    with pytest.raises(ValueError, match="bad"):
        ex.submit(basic.fail_value, "bad").result(timeout=60)


@pytest.mark.slow
def test_walltime_is_walltime_exceeded(make):
    ex = make(walltime=2)
    with pytest.raises(WalltimeExceeded) as info:
        ex.submit(basic.sleep, 60).result(timeout=120)
    assert info.value.returncode == 124


@pytest.mark.parametrize("fn, args, returncode", [
    (basic.hard_exit, (3,), 3),
    (basic.kill_self, (), 137),
])
def test_hard_exits_are_remote_process_errors_without_the_sandbox_warning(make, fn, args,
                                                                        returncode):
    ex = make()
    f = ex.submit(fn, *args)
    with pytest.raises(RemoteProcessError) as info:
        f.result(timeout=120)
    assert not isinstance(info.value, WalltimeExceeded)
    assert info.value.returncode == returncode
    assert SANDBOX_WARNING not in info.value.stderr
    assert SANDBOX_WARNING not in (f.stderr or "")


def test_any_bytes_printed_before_the_result(make):
    ex = make()
    f = ex.submit(exec, "import sys; sys.stdout.buffer.write(b'a\\xffb\\n\\xc2\\xb5\\n'); "
                        "sys.stderr.buffer.write(b'\\xfe\\n')")
    assert f.result(timeout=120) is None
    assert f.stdout.startswith("ab\nµ\n")


def test_ten_thousand_printed_lines_before_the_result(make):
    ex = make()
    f = ex.submit(basic.print_lines, 10_000, "@@HOG-RESULT {x}")
    assert f.result(timeout=120) == 10_000
    assert "9999 @@HOG-RESULT {x}" in f.stdout


@pytest.mark.slow
def test_many_submits_travel_in_few_batches(make, client):
    ex = make()
    futures = [ex.submit(basic.identity, i) for i in range(80)]
    assert [f.result(timeout=240) for f in futures] == list(range(80))
    runs = client.batch_runs
    assert sum(r[2] for r in runs) == 80
    assert len(runs) <= 8
    assert all(r[1] < REQUEST_LIMIT for r in runs)


def test_failed_batch_fails_only_its_futures_and_the_executor_recovers(make, client):
    ex = make()
    assert ex.submit(basic.identity, 0).result(timeout=120) == 0
    client.fail_next_batch = RuntimeError("service unavailable (503)")
    doomed = ex.submit(basic.identity, 1)
    with pytest.raises(BackendError, match="service unavailable"):
        doomed.result(timeout=60)
    # The SDK executor shut itself down; the next calls go through a new one.
    assert list(ex.map(basic.square, range(6))) == [0, 1, 4, 9, 16, 25]
    assert ex.submit(basic.identity, 2).result(timeout=60) == 2
    assert ex.backend.executors_created == 2


def test_retries_send_the_calls_of_a_failed_request_again(make, client):
    ex = make(retries=1)
    client.fail_next_batch = RuntimeError("service unavailable (503)")
    futures = [ex.submit(basic.identity, i) for i in range(3)]
    assert [f.result(timeout=120) for f in futures] == [0, 1, 2]
    assert ex.backend.executors_created == 2  # the failed request retired the first one
    with pytest.raises(ConfigError, match="retries"):
        make(retries=-1)


def test_failed_batch_resends_the_calls_queued_behind_it(make, client):
    ex = make(batch_size=2)
    client.fail_next_batch = RuntimeError("request timed out")
    futures = [ex.submit(basic.identity, i) for i in range(8)]
    cf.wait(futures, timeout=240)
    failed = [f for f in futures if f.exception() is not None]
    assert all(isinstance(f.exception(), BackendError) for f in failed)
    assert len(failed) == client.batch_runs[0][2]  # exactly the calls of the failed request
    assert [f.result() for f in futures if f not in failed] == [
        i for i, f in enumerate(futures) if f not in failed]
    assert len(failed) <= 2


def test_too_large_payload_is_refused_before_anything_is_sent(make, client):
    ex = make()
    with pytest.raises(PayloadTooLargeError, match="store=") as info:
        ex.submit(basic.identity, b"x" * 200_000)
    assert info.value.limit < ARG_LIMIT
    with pytest.raises(PayloadTooLargeError):
        list(ex.map(basic.identity, [b"x" * 10, b"y" * 300_000]))
    assert client.batch_runs == []


@pytest.mark.slow
def test_big_maps_are_split_into_tasks_and_requests_under_the_limits(make, client):
    ex = make()
    # 1.6 MB of arguments; one item and the bundle fit in a command, three items do not
    items = [bytes([i]) * 40_000 for i in range(40)]
    assert list(ex.map(len, items)) == [40_000] * 40
    runs = client.batch_runs
    assert sum(r[2] for r in runs) >= 20  # at most two 40 kB items per ShellFunction command
    assert all(r[1] < REQUEST_LIMIT for r in runs)


def test_result_over_the_service_limit_names_the_way_out(make):
    ex = make()
    with pytest.raises(PayloadTooLargeError, match="store=") as info:
        ex.submit(os.urandom, 9 * 1024 * 1024).result(timeout=240)
    assert info.value.size > info.value.limit == 10 * 1024 * 1024
    assert info.value.size > 12_000_000  # the endpoint's figure (two base64 layers)


def test_cancel_before_the_result(make):
    ex = make()
    f = ex.submit(basic.sleep, 5)
    assert f.cancel()
    assert f.cancelled()
    assert ex.submit(basic.identity, 5).result(timeout=120) == 5


def test_user_endpoint_config_groups_calls(make, client):
    ex = make(account="proj-a")
    assert ex.submit(basic.identity, 1).result(timeout=120) == 1
    assert ex.options(account="proj-b").submit(basic.identity, 2).result(timeout=60) == 2
    assert [uep for uep, _ in client.batch_configs] == [{"account": "proj-a"},
                                                         {"account": "proj-b"}]
    given = ex.endpoint.values["globus_executor"]
    created = ex.backend._sdk.executors
    assert len(created) == 2 and given not in created  # its config is not proj-a's
    ex.shutdown(wait=True)
    # The executors it created are shut down; the one it was handed is left to its owner.
    assert all(e._stopped for e in created)
    assert not given._stopped
    assert not any(t.name == "hog-globus-sender" and t.is_alive()
                   for t in threading.enumerate())


def test_resource_specification_reaches_the_engine(make, client):
    ex = make()
    f = ex.options(resource_specification={"num_nodes": 2}).submit(basic.identity, 1)
    # The process-pool engine has no MPI: it refuses the task, naming the specification.
    with pytest.raises(BackendError, match="resource_specification"):
        f.result(timeout=120)
    assert client.batch_configs[-1] == (None, {"num_nodes": 2})


def test_no_credentials_without_a_terminal_is_an_error_not_a_prompt(tmp_path, cache_dir):
    code = (
        "import hog_executor, sys\n"
        f"ex = hog_executor.HogExecutor({ENDPOINT!r}, cache_dir={cache_dir!r})\n"
        "try:\n"
        "    ex.submit(abs, -1)\n"
        "except hog_executor.BackendError as e:\n"
        "    print('ERROR', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLOBUS_COMPUTE_CLIENT")}
    env.update(HOME=str(tmp_path), GLOBUS_COMPUTE_USER_DIR=str(tmp_path / "gc"))
    proc = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, env=env,
                          cwd=Path(__file__).parent.parent)
    assert "ERROR no Globus credentials" in proc.stdout, proc.stderr[-2000:]
    assert "GLOBUS_COMPUTE_CLIENT_ID" in proc.stdout


def test_example_endpoint_tables_resolve(client):
    from hog_executor.backends.globus.keys import user_endpoint_config

    example = Path(__file__).parent.parent / "examples" / "globus_endpoint.py"
    sdk = globus_sdk.Executor(client=client)
    try:
        ex = HogExecutor("anvil.mpi", script=example, globus_executor=sdk)
        values = ex.endpoint.values
        assert values["endpoint"] == "5aafb4c1-27b2-40d8-a038-a0277611868f"
        assert values["walltime"] == 600.0  # inherited from anvil
        assert values["resource_specification"] == {"num_nodes": 2, "ranks_per_node": 4}
        assert user_endpoint_config(values) == {
            "walltime": "01:00:00", "cores_per_node": 8, "account": "cis230000",
            "partition": "wholenode",
        }
        debug = HogExecutor("anvil.debug", script=example, globus_executor=sdk)
        assert debug.endpoint.values["walltime"] == 60.0
    finally:
        sdk.shutdown(wait=False)


@pytest.mark.slow
def test_timings_come_back_through_the_endpoint(make):
    from test_timings import check

    f = make().submit(basic.add, 1, 2)
    assert f.result(timeout=120) == 3
    check(f.timings)  # the bundle says when it started: the end of the queue wait


def test_results_cached_in_the_endpoint_store_serve_another_client(make, client, tmp_path,
                                                                     caplog):
    """Entries go into the endpoint's store too: a client with its own cache directory (another
    laptop holding the same key) finds them there; a tampered one is refused and recomputed."""
    from hog_executor import cache as _cache

    store = tmp_path / "store"  # where the endpoint and its clients reach the store
    first = make(cache=str(tmp_path / "laptop-a"), store=str(store))
    f = first.submit(basic.square, 12)
    assert f.result(timeout=120) == 144 and not f.cached
    assert _cache.flush(60)
    entries = [p for p in (store / _cache.SHARED_NAME).rglob("*") if p.is_file()]
    assert len(entries) == 1
    for path in [store / _cache.SHARED_NAME, *(store / _cache.SHARED_NAME).rglob("*")]:
        mode = os.stat(path).st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), path
    runs = len(client.batch_runs)

    second = make(cache=str(tmp_path / "laptop-b"), store=str(store))
    g = second.submit(basic.square, 12)
    assert g.result(timeout=60) == 144 and g.cached
    assert len(client.batch_runs) == runs  # nothing sent
    # Copied into the second client's own directory on the way.
    assert list((tmp_path / "laptop-b").glob("??/*"))

    data = bytearray(entries[0].read_bytes())
    data[-3] ^= 0xFF
    entries[0].write_bytes(bytes(data))
    third = make(cache=str(tmp_path / "laptop-c"), store=str(store))
    with caplog.at_level("WARNING", logger="hog_executor.cache"):
        h = third.submit(basic.square, 12)
        assert h.result(timeout=120) == 144 and not h.cached
    assert "refused" in caplog.text and "HMAC" in caplog.text
    assert len(client.batch_runs) == runs + 1
    # Another call (or no store) misses: the key still follows the arguments.
    assert not third.submit(basic.square, 13).cached
