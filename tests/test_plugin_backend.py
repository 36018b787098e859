"""A backend plugin installed for real (tests/plugins/hog-thread-backend), found by entry point.

The package is built and installed with uv into a directory of its own, which is then put on
``sys.path``: hog-executor finds the backend through ``importlib.metadata``, as it would find
one installed by a site.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import hogtest_basic as basic
import pytest
from conftest import ROOT, install_package

from hog_executor import ConfigError, HogExecutor
from hog_executor.backends import backend_names

PLUGIN = ROOT / "tests" / "plugins" / "hog-thread-backend"
PAGE = ROOT / "docs" / "backends" / "writing.md"


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin, built and installed into a directory of its own."""
    return install_package(PLUGIN, tmp_path_factory.mktemp("plugin-site"))


@pytest.fixture
def installed(site_dir: Path, monkeypatch: pytest.MonkeyPatch):
    assert "thread" not in backend_names()
    monkeypatch.syspath_prepend(str(site_dir))
    yield site_dir
    sys.modules.pop("hog_thread_backend", None)


def test_the_installed_plugin_runs_calls(installed: Path, cache_dir: str) -> None:
    assert "thread" in backend_names()
    with HogExecutor("thread", threads=2, cache_dir=cache_dir) as ex:
        backend_file = Path(sys.modules[type(ex.backend).__module__].__file__ or "")
        assert backend_file.parent == installed  # the installed copy, not the source tree
        assert ex.backend.workers == 2
        assert ex.submit(basic.square, 12).result(timeout=300) == 144
        assert list(ex.map(basic.add, range(5), range(5), chunksize=2)) == [0, 2, 4, 6, 8]
        with pytest.raises(ValueError, match="boom"):
            ex.submit(basic.fail_value, "boom").result(timeout=300)


def test_an_endpoint_table_names_the_plugin(installed: Path, cache_dir: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[bench]\nbackend = "thread"\nthreads = 1\nenv = { WHO = "plugin" }\n')
    monkeypatch.setenv("HOG_CONFIG_FILE", str(config))
    with HogExecutor("bench", cache_dir=cache_dir) as ex:
        assert ex.backend.workers == 1
        assert ex.submit(basic.getenv, "WHO").result(timeout=300) == "plugin"


def test_its_keys_are_validated(installed: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'max_workers'.*threads"):
        HogExecutor("thread", max_workers=2)
    with pytest.raises(ConfigError, match="threads"):
        HogExecutor("thread", threads=0)


@pytest.mark.slow
def test_a_queued_call_is_cancelled(installed: Path, cache_dir: str) -> None:
    with HogExecutor("thread", threads=1, cache_dir=cache_dir) as ex:
        first = ex.submit(basic.sleep, 2, "slept")
        second = ex.submit(basic.square, 3)
        deadline = time.monotonic() + 120
        while not first.running() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first.running()
        assert second.cancel()
        assert first.result(timeout=300) == "slept"
        assert second.cancelled()


def test_the_page_shows_the_plugin_files() -> None:
    """The page includes the files themselves (snippets), so it cannot drift from them."""
    included = re.findall(r'^--8<-- "([^"]+)"$', PAGE.read_text(), flags=re.MULTILINE)
    plugin_files = {p.relative_to(ROOT).as_posix() for p in PLUGIN.iterdir() if p.is_file()}
    assert plugin_files <= set(included)
