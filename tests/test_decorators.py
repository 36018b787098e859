"""The decorator API on the local endpoint: real bundles, real environments, real processes."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
from conftest import ROOT, SCRIPTS, session_processes, wait_for

import hog_executor as hog
from hog_executor import HogFuture, decorators


@pytest.fixture(autouse=True)
def shared_cache(cache_dir, monkeypatch):
    """Decorated functions build their environments in the session cache."""
    monkeypatch.setenv("HOG_CACHE_DIR", cache_dir)
    yield
    decorators.shutdown_executors(wait=True, cancel_futures=True, terminate=True)


@hog.function("local", walltime=120)
def doubled(x):
    """Defined in a module without a PEP 723 block: travels by value."""
    return 2 * x


@pytest.fixture
def mod():
    import hogtest_decorated

    return hogtest_decorated


@pytest.fixture
def script_env(cache_dir):
    """The environment of a separate Python process: this checkout, the session cache."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "HOG_CACHE_DIR": cache_dir}


def test_package_exports_the_decorators_lazily():
    code = ("import sys, hog_executor as hog; assert 'hog_executor.decorators' not in sys.modules;"
            " f = hog.function; assert 'hog_executor.executor' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    assert out.stdout.strip() == "ok"


def test_calling_runs_in_process_and_the_function_is_unchanged(mod):
    assert mod.square(3) == 9
    assert mod.square.__name__ == "square"
    assert mod.where() == (None, None)  # in this process: no remote-call marker
    assert repr(mod.square.hog) == "<hog function square @ site>"


def test_decorated_functions_pickle_by_reference(mod):
    data = pickle.dumps(mod.square)
    assert b"hogtest_decorated" in data and len(data) < 100
    assert pickle.loads(data) is mod.square


def test_remote_returns_the_value_on_the_endpoint(mod):
    assert mod.square.remote(7) == 49
    site, marker = mod.where.remote()
    assert site == "decorated"  # the env of [tool.hog.site]
    assert marker == "1"


def test_submit_returns_a_future(mod):
    f = mod.square.submit(5)
    assert isinstance(f, HogFuture)
    assert f.result(timeout=120) == 25
    assert f.task_id


def test_map_keeps_order(mod):
    assert list(mod.square.map(range(6))) == [0, 1, 4, 9, 16, 25]


def test_script_classes_and_exception_types_survive(mod):
    out = mod.swap.remote(mod.Pair(1, 2))
    assert type(out) is mod.Pair and out == mod.Pair(2, 1)
    with pytest.raises(KeyError, match="missing"):
        mod.fail.remote("missing")


def test_one_shared_executor_per_endpoint_and_config(mod):
    assert mod.square.hog.executor() is mod.swap.hog.executor()
    assert mod.square.hog.executor() is not mod.where.hog.executor()  # walltime differs


def test_local_runs_through_a_bundle_even_for_a_remote_endpoint(mod):
    # on_globus names a Globus Compute endpoint; .local() runs it here, in a bundle.
    marker, value = mod.on_globus.local(41)
    assert (marker, value) == ("1", 42)
    ex = mod.on_globus.hog.local_executor()
    assert ex.endpoint.backend == "local"
    assert ex.endpoint.values["walltime"] == 30


def test_local_fails_on_a_bad_key_as_the_remote_call_would(mod):
    import hog_executor as hog

    def double(x):
        return 2 * x

    bad = hog.function(mod.on_globus.hog.endpoint, walltim=60)(double)
    with pytest.raises(hog.ConfigError, match="walltim"):
        bad.local(2)
    with pytest.raises(hog.ConfigError, match="walltim"):
        bad.submit(2)


def test_nested_remote_call_is_refused_with_a_clear_error(mod):
    with pytest.raises(RuntimeError, match="nested remote calls"):
        mod.nested.remote(3)
    # calling a decorated function directly inside a remote call is fine
    assert mod.calls_plain.remote(3) == 10


def test_refused_on_a_process_marked_as_a_remote_call(mod, monkeypatch):
    monkeypatch.setenv("HOG_IN_REMOTE_CALL", "1")
    with pytest.raises(RuntimeError, match=r"square\.submit\(\) was called inside a remote"):
        mod.square.submit(1)


def test_decorator_misuse_is_a_type_error():
    with pytest.raises(TypeError, match="parentheses"):
        hog.function(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="non-empty"):
        hog.function("")


def test_harness_marks_entry_points(mod):
    assert list(decorators.harnesses(mod)) == ["main", "one", "sleepy", "direct"]


def test_remote_from_a_script_run_with_python(script_env):
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "hogtest_decorated.py"), "6"],
        capture_output=True, text=True, env=script_env, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["remote=36", "pair=2"]
    assert "square @ site [task " in proc.stderr  # the status line (logging, stderr)


def test_function_outside_any_script_travels_by_value():
    assert doubled.remote(21) == 42
    assert list(doubled.map([1, 2])) == [2, 4]


def test_interrupting_remote_stops_the_running_call(script_env):
    """Ctrl-C during .remote() ends the call's processes too, and hog exits at once."""
    import signal
    import uuid

    marker = f"hog-nap-{uuid.uuid4().hex}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hog_executor", "run", str(SCRIPTS / "hogtest_decorated.py"),
         "sleepy", "--", "120", marker],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=script_env,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout.readline() == "started\n"
        started = wait_for(lambda: session_processes(marker), timeout=120, interval=0.1)
        assert started, "the remote call never started"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "hog: interrupted" in err
    wait_for(lambda: not session_processes(marker), timeout=30, interval=0.1)
    assert session_processes(marker) == []
