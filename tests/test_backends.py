"""Backends come from the ``hog_executor.backends`` entry-point group; sites can add their own."""

from __future__ import annotations

import sys
import textwrap

import hogtest_basic as basic
import pytest

from hog_executor import ConfigError, HogExecutor
from hog_executor.backends import backend_names

BACKEND = '''
import os
import subprocess
from hog_executor.backends import Backend, Output
from hog_executor.backends.local import same_machine_hints
from hog_executor.config import Key


class InlineBackend(Backend):
    """Runs each bundle synchronously at submit time (a site backend in twenty lines)."""

    keys = {"greeting": Key("greeting", "a site-specific key", str)}
    submitted = []

    @property
    def workers(self):
        return 1

    def submit(self, jobs):
        for job in jobs:
            InlineBackend.submitted.append((job.id, self.endpoint.values.get("greeting")))
            job.future.set_running_or_notify_cancel()
            job.on_start()
            proc = subprocess.run(["bash", "-c", job.bundle], capture_output=True,
                                  env={**os.environ, **same_machine_hints()})
            job.future.set_result(Output(proc.returncode, proc.stdout, proc.stderr))

    def cancel(self, job):
        return job.future.cancel()

    def shutdown(self, wait=True, *, cancel=False):
        pass
'''


@pytest.fixture
def site_backend(tmp_path, monkeypatch):
    (tmp_path / "site_backend.py").write_text(BACKEND)
    dist = tmp_path / "site_backend-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: site-backend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent("""\
            [hog_executor.backends]
            inline = site_backend:InlineBackend
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("site_backend", None)


def test_entry_point_backend_runs_real_bundles(site_backend, cache_dir, tmp_path, monkeypatch):
    assert "inline" in backend_names()
    config = tmp_path / "config.toml"
    config.write_text('[mysite]\nbackend = "inline"\ngreeting = "hello"\n')
    monkeypatch.setenv("HOG_CONFIG_FILE", str(config))
    with HogExecutor("mysite", cache_dir=cache_dir) as ex:
        assert ex.submit(basic.square, 12).result() == 144
        assert list(ex.map(basic.square, range(4), chunksize=2)) == [0, 1, 4, 9]
    import site_backend

    assert [g for _, g in site_backend.InlineBackend.submitted] == ["hello"] * 3


def test_backend_keys_are_validated(site_backend, cache_dir):
    with pytest.raises(ConfigError, match=r"unknown key 'max_workers'.*greeting"):
        HogExecutor("inline", max_workers=2, cache_dir=cache_dir)


def test_unknown_backend_in_a_table(cache_dir, tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text('[mysite]\nbackend = "nope"\n')
    monkeypatch.setenv("HOG_CONFIG_FILE", str(config))
    with pytest.raises(ConfigError, match=r"no backend named 'nope' is installed.*local"):
        HogExecutor("mysite")


def test_unknown_endpoint_name_from_the_executor():
    with pytest.raises(ConfigError, match=r"unknown endpoint 'nowhere'; known endpoints: .*local"):
        HogExecutor("nowhere")


# -- what every backend shares (hog_executor.backends.lifecycle) ------------------------------

def test_resolve_is_quiet_about_futures_done_already():
    from concurrent.futures import Future

    from hog_executor.backends import Output
    from hog_executor.backends.lifecycle import resolve

    out = Output(0, b"", b"")
    f: Future[Output] = Future()
    assert resolve(f, out)
    assert not resolve(f, error=RuntimeError("late"))  # resolved already: no exception
    assert f.result() is out
    assert not resolve(f, cancel=True)
    failed: Future[Output] = Future()
    assert resolve(failed, error=RuntimeError("boom"))
    assert isinstance(failed.exception(), RuntimeError)


def test_a_future_cancelled_through_resolve_wakes_its_waiters():
    from concurrent.futures import Future, wait

    from hog_executor.backends import Output
    from hog_executor.backends.lifecycle import mark_running, resolve

    f: Future[Output] = Future()
    assert resolve(f, cancel=True)
    assert resolve(f, cancel=True)  # cancelled it stays
    assert wait([f], timeout=1).done == {f}  # notified: wait() counts it as done
    assert not resolve(f, Output(0, b"", b""))
    assert not mark_running(f)  # no RuntimeError for a future notified already
    plain: Future[Output] = Future()
    plain.cancel()  # cancelled, as anyone may, but not notified
    assert not resolve(plain, Output(0, b"", b""))
    assert wait([plain], timeout=1).done == {plain}
    running: Future[Output] = Future()
    assert mark_running(running) and running.running()
    assert not mark_running(running)
    assert not resolve(running, cancel=True)  # a running future is not cancelled


EXIT_SCRIPT = '''
import gc
from hog_executor.backends import Backend
from hog_executor.backends.lifecycle import at_exit_after, stop_at_exit
from hog_executor.config import Endpoint


class Recording(Backend):
    drains_at_exit = False

    def __init__(self, name):
        super().__init__(Endpoint(name, "recording"))
        self.name = name

    @property
    def workers(self):
        return 1

    def submit(self, jobs):
        pass

    def cancel(self, job):
        return False

    def shutdown(self, wait=True, *, cancel=False):
        print(f"shutdown {self.name} wait={wait} cancel={cancel}", flush=True)


class Draining(Recording):
    drains_at_exit = True


class Store:
    def __init__(self, name):
        self.name = name

    def close(self):
        print(f"close {self.name}", flush=True)


draining, cancelling, unregistered = Draining("d"), Recording("c"), Recording("u")
stop_at_exit(draining)
stop_at_exit(cancelling)
stores = [Store("d-store"), Store("u-store"), Store("dropped")]
at_exit_after(draining, stores[0].close)
at_exit_after(unregistered, stores[1].close)
at_exit_after(cancelling, stores[2].close)
at_exit_after(cancelling, lambda: print("lambda after c", flush=True))
del stores[2]  # a bound method is held weakly: its object may go
gc.collect()
collected = Recording("gone")
stop_at_exit(collected)  # a backend collected before exit is not shut down
del collected
gc.collect()
print("exit", flush=True)
'''


def test_backends_are_drained_or_cancelled_at_exit_and_callbacks_run_after(tmp_path):
    import subprocess

    script = tmp_path / "exits.py"
    script.write_text(EXIT_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "exit",
        "shutdown d wait=True cancel=False",
        "close d-store",
        "shutdown c wait=True cancel=True",
        "lambda after c",
        "close u-store",
    ]
