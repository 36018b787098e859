"""Real uv environments: dependencies from the package index, the cache, concurrent builds."""

from __future__ import annotations

import os

import hogtest_deps as deps
import pytest

from hog_executor import HogExecutor, RemoteProcessError

pytestmark = pytest.mark.slow



def _user():
    import getpass

    return getpass.getuser()


def test_dependency_from_the_index_and_tool_uv(tmp_path):
    cache = str(tmp_path / "cache")
    with HogExecutor("local", cache_dir=cache) as ex:
        f = ex.submit(deps.six_version)
        assert f.result(timeout=300) == "1.16.0"
        assert "building environment" in f.stderr
        again = ex.submit(deps.six_version)
        assert again.result() == "1.16.0"
        assert "building environment" not in again.stderr  # the warm path builds nothing
    root = os.path.join(cache, f"hog-{_user()}", "envs")
    envs = [n for n in os.listdir(root) if not n.startswith(".")]
    assert len(envs) == 1
    assert os.stat(os.path.join(cache, f"hog-{_user()}")).st_mode & 0o077 == 0


def test_concurrent_first_calls_build_one_environment(tmp_path):
    cache = str(tmp_path / "cache")
    with HogExecutor("local", max_workers=4, cache_dir=cache) as ex:
        futures = [ex.submit(deps.six_version) for _ in range(4)]
        assert [f.result(timeout=300) for f in futures] == ["1.16.0"] * 4
    root = os.path.join(cache, f"hog-{_user()}", "envs")
    names = os.listdir(root)
    assert len([n for n in names if not n.startswith(".")]) == 1
    assert [n for n in names if n.startswith(".build-")] == []  # no half-built env left


def test_dependencies_for_a_function_without_script(tmp_path):
    cache = str(tmp_path / "cache")
    with HogExecutor("local", cache_dir=cache, dependencies=["six==1.16.0"],
                     requires_python=">=3.10") as ex:
        assert ex.submit(_six_here).result(timeout=300) == "1.16.0"


def _six_here():
    import six

    return six.__version__


def test_environment_build_failure_is_reported(tmp_path):
    cache = str(tmp_path / "cache")
    with HogExecutor("local", cache_dir=cache,
                     dependencies=["hog-executor-no-such-package-anywhere==1.0"]) as ex:
        with pytest.raises(RemoteProcessError, match="could not build its environment") as info:
            ex.submit(_six_here).result(timeout=300)
        assert "hog-executor-no-such-package-anywhere" in info.value.stderr_tail
        assert info.value.returncode == 96
    root = os.path.join(cache, f"hog-{_user()}", "envs")
    assert [n for n in os.listdir(root) if not n.startswith(".")] == []


def test_cache_owned_by_someone_else_is_refused(tmp_path):
    cache = tmp_path / "cache"
    target = cache / f"hog-{_user()}"
    target.mkdir(parents=True)
    if os.getuid() != 0:
        pytest.skip("only root can give a directory to another user")
    os.chown(target, 12345, 12345)
    with HogExecutor("local", cache_dir=str(cache)) as ex:
        with pytest.raises(RemoteProcessError, match="failed before running") as info:
            ex.submit(_six_here).result(timeout=60)
        assert "belongs to another user" in info.value.stderr_tail
