"""Retries of infrastructure failures: a call whose process died runs again."""

from __future__ import annotations

import hogtest_basic as basic
import hogtest_warm as warm
import pytest

from hog_executor import HogExecutor, RemoteProcessError, WalltimeExceeded
from hog_executor.errors import ConfigError
from hog_executor.executor import submit_calls
from hog_executor.retries import RetryPolicy, is_infrastructure


def test_what_counts_as_an_infrastructure_failure():
    assert is_infrastructure(RemoteProcessError("x", returncode=-9))
    assert is_infrastructure(RemoteProcessError("x", returncode=137))
    assert is_infrastructure(RemoteProcessError("x", returncode=1, state="NODE_FAIL"))
    assert not is_infrastructure(RemoteProcessError("x", returncode=1))
    assert not is_infrastructure(WalltimeExceeded("x", returncode=124))
    assert not is_infrastructure(ValueError("x"))
    policy = RetryPolicy(2)
    assert policy.decide(RemoteProcessError("x", returncode=-9), 0) == (True, True)
    assert policy.decide(RemoteProcessError("x", returncode=-9), 2) == (False, True)
    preempted = RemoteProcessError("x", returncode=0, state="PREEMPTED")
    assert policy.decide(preempted, 5) == (True, False)  # does not use the budget
    assert policy.decide(ValueError("x"), 0) == (False, False)
    assert RetryPolicy(1, (ValueError,)).decide(ValueError("x"), 0) == (True, True)
    assert RetryPolicy(1, lambda e: "again" in str(e)).decide(KeyError("again"), 0)[0]


def test_bad_retry_settings_are_config_errors():
    with pytest.raises(ConfigError, match="retries"):
        HogExecutor("local", retries=-1)
    with pytest.raises(ConfigError, match="retry_on"):
        HogExecutor("local", retry_on=("ValueError",))


@pytest.mark.slow
def test_a_thousand_calls_with_killed_processes_all_succeed(cache_dir, tmp_path):
    doomed = set(range(3, 1000, 10))  # 10% of the calls lose their warm runner once
    with HogExecutor("local", max_workers=2, cache_dir=cache_dir, retries=2) as ex:
        futures = submit_calls(ex, warm.die_once,
                               [((i, doomed, str(tmp_path)), {}) for i in range(1000)],
                               chunksize=50)
        assert [f.result(timeout=600) for f in futures] == list(range(1000))
    assert {i for i, f in enumerate(futures) if f.attempts > 1} == doomed
    assert all(f.attempts == 2 for f in futures if f.attempts > 1)


@pytest.mark.slow
def test_a_killed_one_shot_chunk_runs_its_calls_again(cache_dir, tmp_path):
    doomed = {5, 55}  # a process per chunk: each death takes its chunk down
    with HogExecutor("local", max_workers=2, cache_dir=cache_dir, retries=1,
                     fresh_process=True) as ex:
        futures = submit_calls(ex, warm.die_once,
                               [((i, doomed, str(tmp_path)), {}) for i in range(100)],
                               chunksize=10)
        assert [f.result(timeout=600) for f in futures] == list(range(100))
    again = {i for i, f in enumerate(futures) if f.attempts > 1}
    assert again == set(range(0, 10)) | set(range(50, 60))  # the two chunks, whole


def test_without_retries_or_for_exceptions_nothing_runs_again(executor, tmp_path):
    f = executor.submit(warm.die_once, 1, {1}, str(tmp_path))
    with pytest.raises(RemoteProcessError):
        f.result(timeout=120)
    assert f.attempts == 1
    with HogExecutor("local", max_workers=1, cache_dir=executor.endpoint.values["cache_dir"],
                     retries=3) as ex:
        g = ex.submit(basic.fail_value, "no")
        with pytest.raises(ValueError):
            g.result(timeout=120)
        assert g.attempts == 1  # it raised: not an infrastructure failure
        h = ex.options(retry_on=(ValueError,)).submit(basic.fail_value, "again")
        with pytest.raises(ValueError):
            h.result(timeout=120)
        assert h.attempts == 4


def test_map_runs_a_killed_call_again(cache_dir, tmp_path):
    # map reorders the futures list it gets back; the retry must still find its own call
    with HogExecutor("local", max_workers=2, cache_dir=cache_dir, retries=1) as ex:
        args = range(6)
        assert list(ex.map(warm.die_once, args, [{4}] * 6, [str(tmp_path)] * 6,
                           chunksize=1)) == list(args)
    assert (tmp_path / "died-4").exists()
