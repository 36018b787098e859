"""HogExecutor on the local endpoint: real bundles, real uv environments, real processes."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import sys
import threading
import time

import hogtest_basic as basic
import hogtest_markers as markers
import pytest
from conftest import alive

from hog_executor import (
    HogExecutor,
    PayloadTooLargeError,
    RemoteError,
    RemoteProcessError,
    SerializationError,
    WalltimeExceeded,
)
from hog_executor.errors import RemoteTraceback


def test_submit_returns_value_task_id_and_output(executor):
    f = executor.submit(basic.echo, 7)
    assert f.result(timeout=120) == 7
    assert f.task_id and len(f.task_id) == 32
    assert f.stdout.strip() == "echo 7"
    assert "err 7" in f.stderr


def test_args_and_kwargs(executor):
    assert executor.submit(basic.add, 1, 2, c=3).result() == 6


def test_script_classes_roundtrip_as_client_classes(executor):
    p = executor.submit(basic.make_point, 3, 4).result()
    assert type(p) is basic.Point
    assert executor.submit(basic.norm, basic.Point(3, 4)).result() == 5.0


def test_lambdas_and_closures_travel_by_value(executor):
    offset = 10
    assert executor.submit(lambda x: x + offset, 5).result() == 15

    def local_fn(x):
        return x * x + offset

    assert executor.submit(local_fn, 3).result() == 19


def test_bound_methods_and_callable_objects_send_their_current_state(executor):
    point, scaler = basic.Point(1, 2), basic.Scaler(2)
    assert executor.submit(point.scaled, 3).result() == (3, 6)
    assert executor.submit(scaler, 5).result() == 10
    point.x, scaler.factor = 100, 20
    assert executor.submit(point.scaled, 3).result() == (300, 6)
    assert executor.submit(scaler, 5).result() == 100
    assert list(executor.map(scaler, [1, 2])) == [20, 40]


def test_function_defined_outside_any_script_runs_by_value(executor):
    assert executor.submit(_module_level_helper, 4).result() == 8


def _module_level_helper(x):
    return 2 * x


def test_remote_exception_keeps_type_and_traceback(executor):
    with pytest.raises(basic.CustomError, match="bad input") as info:
        executor.submit(basic.fail_custom, "bad input").result()
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "raise CustomError(msg)" in cause.tb
    assert "hogtest_basic.py" in cause.tb
    with pytest.raises(ValueError, match="plain"):
        executor.submit(basic.fail_value, "plain").result()


def test_exception_that_cannot_be_rebuilt_is_remote_error(executor):
    with pytest.raises(RemoteError) as info:
        executor.submit(basic.fail_bad_init).result()
    assert info.value.type_name.endswith("BadInitError")
    assert info.value.message == "1-2"
    assert "raise BadInitError(1, 2)" in info.value.traceback


@pytest.mark.parametrize(
    ("fn", "args", "returncode", "text"),
    [
        (basic.exit_with, (3,), 3, "exited with status 3"),
        (basic.hard_exit, (0,), 0, "exited without a result"),
        (basic.kill_self, (), 137, "killed by SIGKILL"),
    ],
)
def test_process_death_is_remote_process_error(executor, fn, args, returncode, text):
    with pytest.raises(RemoteProcessError, match=text) as info:
        executor.submit(fn, *args).result()
    assert info.value.returncode == returncode
    assert not isinstance(info.value, WalltimeExceeded)
    assert executor.submit(basic.square, 2).result() == 4  # still usable


def test_unpicklable_argument_fails_at_submit(executor):
    with pytest.raises(SerializationError, match=r"argument 1 \(lock .*cannot be pickled"):
        executor.submit(basic.add, 1, threading.Lock())
    with pytest.raises(SerializationError, match="keyword argument 'c'"):
        executor.submit(basic.add, 1, c=threading.Lock())
    assert executor.submit(basic.square, 3).result() == 9


def test_unpicklable_result_raises_remotely_typed_error(executor):
    with pytest.raises(TypeError, match="cannot be pickled"):
        executor.submit(basic.unpicklable_result).result()


def test_payload_over_the_limit_is_refused_before_running(cache_dir):
    # proxy_threshold over the limit: the 2 MB argument is not sent through the store
    with HogExecutor("local", cache_dir=cache_dir, payload_limit="1MB",
                     proxy_threshold="10MB") as ex:
        with pytest.raises(PayloadTooLargeError) as info:
            ex.submit(basic.identity, b"x" * 2_000_000)
        assert info.value.limit == 1_000_000
        assert info.value.size > 2_000_000
        assert "payload limit" in str(info.value)
        assert os.listdir(ex.backend.workdir) == []  # nothing was written or started
        assert ex.submit(basic.identity, b"small").result() == b"small"


def test_big_results_come_back_locally(executor):
    data = executor.submit(basic.identity, None).result()
    assert data is None
    big = executor.submit(lambda n: b"y" * n, 15_000_000).result()
    assert len(big) == 15_000_000


@pytest.mark.slow
def test_walltime_kills_the_whole_process_group(cache_dir, tmp_path):
    pidfile = tmp_path / "pids"
    with HogExecutor("local", cache_dir=cache_dir, walltime=2) as ex:
        start = time.monotonic()
        f = ex.submit(basic.sleep_with_child, 60, str(pidfile))
        with pytest.raises(WalltimeExceeded) as info:
            f.result(timeout=60)
        assert time.monotonic() - start < 50
        assert isinstance(info.value, TimeoutError)
        assert info.value.walltime == 2.0
        assert "walltime of 2 s" in str(info.value)
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 2
    for pid in pids:
        assert not alive(pid), f"process {pid} survived the walltime"


@pytest.mark.slow
def test_walltime_when_the_call_ignores_sigterm(cache_dir):
    with HogExecutor("local", cache_dir=cache_dir, walltime=1) as ex, pytest.raises(
        WalltimeExceeded
    ):
        ex.submit(basic.stubborn_sleep, 60).result(timeout=60)


@pytest.mark.slow
def test_options_override_env_and_walltime(executor):
    view = executor.options(env={"HOG_X": "from options"}, walltime=1)
    assert view.submit(basic.getenv, "HOG_X").result() == "from options"
    assert executor.submit(basic.getenv, "HOG_X").result() is None
    with pytest.raises(WalltimeExceeded):
        view.submit(basic.sleep, 30).result()


def test_endpoint_table_env_and_worker_init(cache_dir):
    with HogExecutor("site", script=basic.__file__, cache_dir=cache_dir,
                     worker_init="export HOG_INIT=ran") as ex:
        assert ex.submit(basic.getenv, "HOG_TEST_SITE").result() == "site"
        assert ex.submit(basic.getenv, "HOG_INIT").result() == "ran"


def test_markers_and_heredoc_lookalikes_survive(executor):
    f = executor.submit(markers.shout)
    assert f.result() == markers.TRICKY
    assert "@@HOG-RESULT fake@@" in f.stdout
    assert "$(echo expanded)" in f.stdout
    assert "no newline at the end" in f.stdout
    assert "{{double}}" in f.stderr


def test_ten_thousand_printed_lines_before_the_result(executor):
    f = executor.submit(basic.print_lines, 10_000, "x" * 50)
    assert f.result() == 10_000
    assert f.stdout.count("\n") >= 10_000


def test_remote_env_has_hog_executor_and_the_client_python(executor):
    import hog_executor

    assert executor.submit(basic.uses_hog_executor).result() == hog_executor.__version__
    assert tuple(executor.submit(basic.python_version).result()) == sys.version_info[:2]


# -- map -------------------------------------------------------------------------------------


def test_map_is_ordered_and_chunked(executor):
    futures = executor._submit_calls(basic.square, [((i,), {}) for i in range(100)], None)
    assert [f.result() for f in futures] == [i * i for i in range(100)]
    tasks = {f.task_id for f in futures}
    assert 1 < len(tasks) <= 2 * 2  # about two chunks per worker
    assert list(executor.map(basic.add, range(5), range(5))) == [0, 2, 4, 6, 8]
    assert list(executor.map(basic.square, range(7), chunksize=3)) == [i * i for i in range(7)]


def test_map_raises_the_failing_item_when_reached(executor):
    results = executor.map(basic.fail_value if False else _inverse, [1, 2, 0, 4], chunksize=1)
    assert next(results) == 1.0
    assert next(results) == 0.5
    with pytest.raises(ZeroDivisionError):
        next(results)


def _inverse(x):
    return 1 / x


def test_map_timeout(executor):
    results = executor.map(basic.sleep, [30], timeout=0.5)
    with pytest.raises(cf.TimeoutError):
        next(results)


def test_map_is_lazy_and_empty_map_is_fine(executor):
    assert list(executor.map(basic.square, [])) == []
    it = executor.map(basic.square, range(3))
    assert isinstance(it, type(x for x in ()))
    assert list(it) == [0, 1, 4]


def test_a_base_exception_fails_only_its_call(executor):
    futures = executor._submit_calls(basic.maybe_abort, [((i,), {}) for i in range(4)],
                                     chunksize=4)
    assert len({f.task_id for f in futures}) == 1  # one chunk
    assert [f.result() for i, f in enumerate(futures) if i != 2] == [0, 1, 3]
    with pytest.raises(basic.Abort, match="abort at 2"):
        futures[2].result()


def test_map_rejects_unpicklable_items_before_running(executor):
    with pytest.raises(SerializationError, match="argument 0"):
        executor.map(basic.identity, [1, threading.Lock()])


# -- futures protocol --------------------------------------------------------------------------


def test_as_completed_wait_and_asyncio(executor):
    futures = [executor.submit(basic.square, i) for i in range(6)]
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=120)) == [
        0, 1, 4, 9, 16, 25]
    done, not_done = cf.wait(futures, timeout=60)
    assert len(done) == 6 and not not_done

    async def main():
        return await asyncio.wrap_future(executor.submit(basic.square, 9))

    assert asyncio.run(main()) == 81


@pytest.mark.slow
def test_many_threads_submitting(executor):
    results: list[int] = []
    lock = threading.Lock()

    def client(base):
        futures = [executor.submit(basic.square, base + i) for i in range(100)]
        values = [f.result(timeout=600) for f in futures]
        with lock:
            results.extend(values)

    threads = [threading.Thread(target=client, args=(1000 * t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted((1000 * t + i) ** 2 for t in range(4) for i in range(100))


def test_submit_after_shutdown(cache_dir):
    ex = HogExecutor("local", cache_dir=cache_dir)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(basic.square, 1)
    with pytest.raises(RuntimeError):
        ex.options(walltime=3).submit(basic.square, 1)


def test_a_map_behind_one_idle_runner_uses_every_worker(cache_dir):
    import hogtest_warm as warm

    with HogExecutor("local", max_workers=2, cache_dir=cache_dir) as ex:
        first = ex.submit(warm.pid).result(timeout=300)  # one runner, idle now
        # Two calls of its key at once: the idle runner takes one, a second runner the other.
        pids = list(ex.map(warm.pid_after, [1.0, 1.0], chunksize=1))
    assert len(set(pids)) == 2 and first in pids
