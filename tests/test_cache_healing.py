"""Cached environments that break heal: each is moved aside and built again, once.

Real uv environments in a cache of this module's own. Every case breaks the environment a
previous call built (or used), then checks that the next call succeeds.
"""

from __future__ import annotations

import getpass
import os
import shutil
import stat
from pathlib import Path

import hogtest_basic as basic
import pytest
from conftest import wait_for

from hog_executor import HogExecutor, RemoteProcessError
from hog_executor.cli.envcache import prune
from hog_executor.runner import ENV_OK_NAME, EXIT_RUNTIME_FAILED, EXIT_SETUP_FAILED


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("healing")


def _root(cache: Path) -> Path:
    return cache / f"hog-{os.environ.get('USER') or getpass.getuser()}"


def _envs(cache: Path) -> Path:
    return _root(cache) / "envs"


def _call(cache: Path, x: int = 3, **config):
    """One call in a process of its own (a warm runner would not look at the cache again)."""
    with HogExecutor("local", cache_dir=str(cache), fresh_process=True, **config) as ex:
        f = ex.submit(basic.square, x)
        f.exception(timeout=300)
        return f


def _env(cache: Path) -> Path:
    """The environment of ``basic`` (built by a call if needed)."""
    assert _call(cache).result() == 9
    (env,) = [p for p in _envs(cache).iterdir() if not p.name.startswith(".")]
    return env


def _site(env: Path) -> Path:
    (site,) = env.glob("lib/python*/site-packages")
    return site


def _no_leftovers(cache: Path) -> bool:
    return not [p for p in _envs(cache).iterdir()
                if p.name.startswith((".broken-", ".build-"))]


def _heals(cache: Path, why: str) -> None:
    f = _call(cache)
    assert f.result() == 9, f.stderr
    assert f"is unusable ({why}); moving it aside" in f.stderr
    assert "building environment" in f.stderr
    assert (_env(cache) / ENV_OK_NAME).is_file()
    assert wait_for(lambda: _no_leftovers(cache), timeout=30)  # the old one is removed


@pytest.mark.slow
def test_deleted_python(cache):
    (_env(cache) / "bin" / "python").unlink()
    _heals(cache, "its bin/python is missing, or points to a Python that is gone")


@pytest.mark.slow
def test_python_symlink_to_a_base_python_that_moved(cache):
    python = _env(cache) / "bin" / "python"
    python.unlink()
    python.symlink_to("/no/such/base/python3")
    _heals(cache, "its bin/python is missing, or points to a Python that is gone")


@pytest.mark.slow
def test_environment_slot_is_a_regular_file(cache):
    env = _env(cache)
    shutil.rmtree(env)
    env.write_text("not an environment\n")
    _heals(cache, "it is not a directory")


@pytest.mark.slow
def test_cloudpickle_missing(cache):
    shutil.rmtree(_site(_env(cache)) / "cloudpickle")
    _heals(cache, "its Python cannot import cloudpickle")


@pytest.mark.slow
def test_environment_without_its_record_is_checked_once_not_rebuilt(cache):
    env = _env(cache)
    (env / ENV_OK_NAME).unlink()  # as left by an older hog-executor
    f = _call(cache)
    assert f.result() == 9
    assert "building environment" not in f.stderr and "unusable" not in f.stderr
    assert (env / ENV_OK_NAME).read_text().strip().endswith("cloudpickle/__init__.py")


@pytest.mark.slow
def test_cloudpickle_failing_at_import_rebuilds_on_the_next_call(cache):
    # Present (the warm path sees its files) but broken: the runner reports it.
    (_site(_env(cache)) / "cloudpickle" / "cloudpickle.py").unlink()
    with HogExecutor("local", cache_dir=str(cache), fresh_process=True,
                     script=basic.__file__) as ex:
        f = ex.submit(lambda: 1)  # travels by value: loading it needs cloudpickle
        with pytest.raises(RemoteProcessError) as info:
            f.result(timeout=300)
    assert info.value.returncode == EXIT_RUNTIME_FAILED
    assert "cannot import cloudpickle" in info.value.stderr_tail
    assert "the next call rebuilds it" in info.value.stderr_tail
    _heals(cache, "its Python cannot import cloudpickle")


@pytest.mark.slow
def test_warm_runner_reports_the_broken_runtime_and_the_next_runner_heals(cache):
    (_site(_env(cache)) / "cloudpickle" / "cloudpickle.py").unlink()
    with HogExecutor("local", cache_dir=str(cache), max_workers=1,
                     script=basic.__file__) as ex:
        first = ex.submit(lambda: 1)
        with pytest.raises(RemoteProcessError) as info:
            first.result(timeout=300)
        assert info.value.returncode == EXIT_RUNTIME_FAILED
        second = ex.submit(lambda: 2)
        assert second.result(timeout=300) == 2
        assert "moving it aside" in second.stderr


@pytest.mark.slow
def test_concurrent_calls_heal_it_once(cache):
    (_env(cache) / "bin" / "python").unlink()
    with HogExecutor("local", cache_dir=str(cache), fresh_process=True, max_workers=3) as ex:
        futures = [ex.submit(basic.square, x) for x in range(3)]
        assert [f.result(timeout=300) for f in futures] == [0, 1, 4]
    assert sum("moving it aside" in f.stderr for f in futures) == 1
    assert wait_for(lambda: _no_leftovers(cache), timeout=30)


@pytest.mark.slow
def test_a_failed_rebuild_names_what_to_delete_and_prune_removes_it(cache, tmp_path):
    (_env(cache) / "bin" / "python").unlink()
    uv = tmp_path / "uv"
    uv.write_text("#!/bin/sh\necho 'uv: no network today' >&2\nexit 2\n")
    uv.chmod(0o755)
    f = _call(cache, env={"HOG_UV": str(uv)})
    with pytest.raises(RemoteProcessError) as info:
        f.result()
    err = info.value.stderr_tail
    assert info.value.returncode == 96
    assert "uv: no network today" in err
    (aside,) = [p for p in _envs(cache).iterdir() if p.name.startswith(".broken-")]
    assert f"rm -rf '{aside}'" in err
    # The slot is empty now: the next call builds it as on first use.
    f = _call(cache)
    assert f.result() == 9 and "unusable" not in f.stderr
    assert aside.exists()  # kept for inspection until pruned
    prune(_root(cache), older_than=30 * 86400)
    assert not aside.exists()
    assert _env(cache).is_dir()  # a used environment stays


@pytest.mark.parametrize("where", ["cache", "envs"])
def test_cache_writable_by_others_is_refused(tmp_path, where):
    root = _root(tmp_path)
    (root / "envs").mkdir(parents=True, mode=0o700)
    target = root if where == "cache" else root / "envs"
    target.chmod(0o777)
    f = _call(tmp_path)
    with pytest.raises(RemoteProcessError) as info:
        f.result()
    assert info.value.returncode == EXIT_SETUP_FAILED
    assert f"chmod go-w '{target}'" in info.value.stderr_tail
    assert "writable by other users" in info.value.stderr_tail
    assert stat.S_IMODE(target.stat().st_mode) == 0o777  # refused, not changed
    assert list((root / "envs").iterdir()) == []  # nothing was built there


@pytest.mark.slow
def test_work_directories_are_private(cache):
    def modes():
        import os
        import sys

        call_dir = os.path.dirname(os.path.abspath(sys.modules["__hog_script__"].__file__))
        return [os.stat(d).st_mode & 0o777 for d in (os.environ["HOG_WORK_DIR"], call_dir)]

    with HogExecutor("local", cache_dir=str(cache), script=basic.__file__) as ex:
        assert ex.submit(modes).result(timeout=300) == [0o700, 0o700]
