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


@pytest.fixture
def cache(tmp_path):
    """A cache of its own: each test here watches its environments being built."""
    return str(tmp_path / "cache")


def envs_dir(cache: str) -> str:
    """Where the environments of ``cache`` are."""
    return os.path.join(cache, f"hog-{_user()}", "envs")


def built_envs(cache: str) -> list[str]:
    """The environments built in ``cache`` (not locks, not builds under way)."""
    return [n for n in os.listdir(envs_dir(cache)) if not n.startswith(".")]


def test_dependency_from_the_index_and_tool_uv(cache):
    with HogExecutor("local", cache_dir=cache) as ex:
        f = ex.submit(deps.six_version)
        assert f.result(timeout=300) == "1.16.0"
        assert "building environment" in f.stderr
        again = ex.submit(deps.six_version)
        assert again.result() == "1.16.0"
        assert "building environment" not in again.stderr  # the warm path builds nothing
    assert len(built_envs(cache)) == 1
    assert os.stat(os.path.join(cache, f"hog-{_user()}")).st_mode & 0o077 == 0


def test_concurrent_first_calls_build_one_environment(cache):
    with HogExecutor("local", max_workers=4, cache_dir=cache) as ex:
        futures = [ex.submit(deps.six_version) for _ in range(4)]
        assert [f.result(timeout=300) for f in futures] == ["1.16.0"] * 4
    assert len(built_envs(cache)) == 1
    building = [n for n in os.listdir(envs_dir(cache)) if n.startswith(".build-")]
    assert building == []  # no half-built env left


def test_dependencies_for_a_function_without_script(cache):
    with HogExecutor("local", cache_dir=cache, dependencies=["six==1.16.0"],
                     requires_python=">=3.10") as ex:
        assert ex.submit(_six_here).result(timeout=300) == "1.16.0"


def _six_here():
    import six

    return six.__version__


def test_environment_build_failure_is_reported(cache):
    with HogExecutor("local", cache_dir=cache,
                     dependencies=["hog-executor-no-such-package-anywhere==1.0"]) as ex:
        with pytest.raises(RemoteProcessError, match="could not build its environment") as info:
            ex.submit(_six_here).result(timeout=300)
        assert "hog-executor-no-such-package-anywhere" in info.value.stderr_tail
        assert info.value.returncode == 96
    assert built_envs(cache) == []


def test_cache_owned_by_someone_else_is_refused(cache):
    if os.getuid() != 0:
        pytest.skip("only root can give a directory to another user")
    target = os.path.join(cache, f"hog-{_user()}")
    os.makedirs(target)
    os.chown(target, 12345, 12345)
    with HogExecutor("local", cache_dir=cache) as ex:
        with pytest.raises(RemoteProcessError, match="failed before running") as info:
            ex.submit(_six_here).result(timeout=60)
        assert "belongs to another user" in info.value.stderr_tail
