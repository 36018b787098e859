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
