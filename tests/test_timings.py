"""Per-call timings: every phase a backend can know, monotonic, on every backend."""

from __future__ import annotations

import itertools

import hogtest_warm as warm
import pytest

from hog_executor import HogExecutor

ORDER = ("submitted", "sent", "queued", "env_ready", "imported", "started", "finished",
         "received")


def check(t, *, env=True, queued=True):
    """The phases that must be known are, and come in order."""
    d = t.as_dict()
    must = ["submitted", "sent", "started", "finished", "received"]
    if queued:
        must.append("queued")
    if env:
        must += ["env_ready", "imported"]
    missing = [k for k in must if d[k] is None]
    assert not missing, d
    known = [d[k] for k in ORDER if d[k] is not None]
    # The runner's clock is this machine's: allow a little skew between processes.
    assert all(b >= a - 0.05 for a, b in itertools.pairwise(known)), d
    assert d["worker"] and ":" in d["worker"]


def test_timings_on_local_warm_and_fresh(tmp_path):
    cache = str(tmp_path / "cache")  # a cache of its own: the first call builds
    with HogExecutor("local", max_workers=1, cache_dir=cache) as ex:
        first = ex.submit(warm.pid)
        first.result(timeout=300)
        check(first.timings)
        assert first.timings.env_built is True
        assert "env" in first.timings.split()
        second = ex.submit(warm.pid)
        second.result(timeout=60)
        check(second.timings, env=False)  # a warm runner: nothing started for it
        assert second.timings.env_built is None and "env" not in second.timings.split()
        fresh = ex.options(fresh_process=True).submit(warm.pid)
        fresh.result(timeout=60)
        check(fresh.timings)
        assert fresh.timings.env_built is False  # found, not built


def test_timings_of_a_fresh_chunk(executor):
    from hog_executor.executor import submit_calls

    futures = submit_calls(executor.options(fresh_process=True), warm.nap,
                           [((0.05, i), {}) for i in range(3)], chunksize=3)
    for f in futures:
        f.result(timeout=300)
        check(f.timings)
    starts = [f.timings.started for f in futures]
    assert starts == sorted(starts) and len(set(starts)) == 3  # each call its own start


def test_status_line_shows_the_split(executor, caplog):
    import logging

    from hog_executor.progress import phase_split, wait_with_status

    f = executor.submit(warm.nap, 0.2, 1)
    with caplog.at_level(logging.INFO, logger="hog_executor"):
        assert wait_with_status(f, "nap") == 1
    assert "run " in phase_split(f.timings)
    assert any("run " in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_timings_on_slurm(cache_dir, slurm_cluster, tmp_path):
    with HogExecutor("slurm", partition=slurm_cluster.partition, shared_dir=str(tmp_path),
                     cache_dir=cache_dir, poll_interval=0.2) as ex:
        f = ex.submit(warm.pid)
        f.result(timeout=300)
        check(f.timings)
