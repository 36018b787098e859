"""Progress of many calls and status lines, on a terminal and as plain log lines."""

from __future__ import annotations

import io
import logging
import threading
from concurrent.futures import Future

import hogtest_basic as basic
import pytest
from conftest import wait_for

from hog_executor import decorators, progress
from hog_executor.progress import ConsoleHandler, Counts, count, format_bar, format_counts


@pytest.fixture
def console():
    """Install a ConsoleHandler on the hog_executor logger; yield a factory of its output."""
    logger = logging.getLogger("hog_executor")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    handlers: list[ConsoleHandler] = []

    def install(terminal: bool) -> io.StringIO:
        stream = io.StringIO()
        handler = ConsoleHandler(stream, terminal=terminal)
        handler.setFormatter(logging.Formatter("hog: %(message)s"))
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
        handlers.append(handler)
        return stream

    yield install
    logger.setLevel(saved[0])
    logger.propagate = saved[1]
    logger.handlers[:] = saved[2]


@pytest.fixture
def decorated(cache_dir, monkeypatch):
    """The decorated test script, its executors building in the session cache."""
    import hogtest_decorated

    monkeypatch.setenv("HOG_CACHE_DIR", cache_dir)
    yield hogtest_decorated
    decorators.shutdown_executors()


def _futures(done: int, failed: int, running: int, queued: int) -> list[Future]:
    out: list[Future] = []
    for _ in range(done):
        f: Future = Future()
        f.set_result(1)
        out.append(f)
    for _ in range(failed):
        f = Future()
        f.set_exception(ValueError("x"))
        out.append(f)
    for _ in range(running):
        f = Future()
        f.set_running_or_notify_cancel()
        out.append(f)
    out.extend(Future() for _ in range(queued))
    return out


def test_count_by_state():
    futures = _futures(3, 1, 2, 4)
    futures[-1].cancel()
    c = count(futures, elapsed=2.0)
    assert (c.total, c.done, c.failed, c.running, c.queued) == (10, 3, 2, 2, 3)
    assert c.rate == 2.5


def test_formatting_is_pure_text():
    c = Counts(total=100, done=40, failed=0, running=10, queued=50, elapsed=10.0)
    assert format_counts(c) == "40/100 done, 10 running, 50 queued, 0 failed, 4.0/s, ETA 15.0s"
    bar = format_bar("map f", c, width=10)
    assert bar.startswith("map f [####>.....] 40/100 done")
    final = Counts(total=5, done=4, failed=1, running=0, queued=0, elapsed=75.0)
    assert format_counts(final).endswith("1 failed, 0.1/s, 1m15s")


def test_terminal_handler_redraws_in_place(console):
    stream = console(terminal=True)
    log = logging.getLogger("hog_executor")
    log.info("bar 1", extra={"hog_transient": True})
    log.info("bar 2", extra={"hog_transient": True})
    log.info("a message")
    log.info("done", extra={"hog_final": True})
    out = stream.getvalue()
    assert out.startswith("bar 1\r\x1b[Kbar 2\r\x1b[Khog: a message\nbar 2")
    assert out.endswith("\r\x1b[Khog: done\n")


def test_plain_handler_drops_transient_records(console):
    stream = console(terminal=False)
    log = logging.getLogger("hog_executor")
    log.info("bar", extra={"hog_transient": True})
    log.info("line")
    assert stream.getvalue() == "hog: line\n"


def test_tracker_plain_lines(console):
    stream = console(terminal=False)
    futures: list[Future] = [Future() for _ in range(3)]
    tracker = progress.track(futures, "map f", interval=0.05)
    futures[0].set_running_or_notify_cancel()
    futures[0].set_result(1)
    wait_for(lambda: "1/3 done" in stream.getvalue(), timeout=30)  # a line on the way
    futures[1].set_exception(ValueError("x"))
    futures[2].set_result(3)
    tracker.join(timeout=30)
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("hog: map f: 2/3 done, 0 running, 0 queued, 1 failed")
    assert any("1/3 done" in line for line in lines[:-1])  # a progress line on the way
    assert "\r" not in stream.getvalue()


def test_tracker_draws_a_bar_on_a_terminal(console):
    stream = console(terminal=True)
    futures: list[Future] = [Future() for _ in range(2)]
    tracker = progress.track(futures, "map g")
    wait_for(lambda: "0/2 done" in stream.getvalue(), timeout=30)  # a bar is drawn
    futures[0].set_result(0)
    futures[1].set_result(1)
    tracker.join(timeout=30)
    out = stream.getvalue()
    assert "map g [" in out and "0/2 done" in out
    assert "\r\x1b[K" in out
    assert out.endswith("\n")
    assert out.rsplit("\r\x1b[K", 1)[1].startswith("hog: map g: 2/2 done, 0 running")


def test_executor_map_shows_progress_when_asked(console, executor):
    stream = console(terminal=False)
    assert list(executor.map(basic.square, range(8), progress=True)) == [
        x * x for x in range(8)]
    wait_for(lambda: "8/8 done" in stream.getvalue(), timeout=5)
    assert "hog: map square: 8/8 done, 0 running, 0 queued, 0 failed" in stream.getvalue()


def test_executor_map_is_quiet_by_default(console, executor):
    stream = console(terminal=False)
    assert list(executor.map(basic.square, range(3))) == [0, 1, 4]
    assert stream.getvalue() == ""


def test_remote_status_line_and_replayed_output(console, decorated):
    stream = console(terminal=False)
    assert decorated.shout.remote("hi") == "HI"
    with pytest.raises(KeyError):
        decorated.fail.remote("k")
    lines = stream.getvalue().splitlines()
    status = [ln for ln in lines if ln.startswith("hog: shout @ site [task ")]
    assert len(status) == 1 and " done in " in status[0]
    assert "hog: [shout @ site stdout] out: hi" in lines
    assert "hog: [shout @ site stderr] err: hi" in lines
    assert any(ln.startswith("hog: fail @ site [task ") and "failed (KeyError)" in ln
               for ln in lines)


def test_remote_status_on_a_terminal_is_redrawn(console, decorated):
    stream = console(terminal=True)
    assert decorated.square.remote(3) == 9
    out = stream.getvalue()
    assert "square @ site [task " in out
    assert out.endswith("\n")
    assert " done in " in out.rsplit("\r\x1b[K", 1)[-1].splitlines()[0]


def test_dask_compute_progress_plain_and_on_a_terminal(console):
    dask = pytest.importorskip("dask")
    from hog_executor.dask_progress import DaskProgress

    def slow_inc(x):
        threading.Event().wait(0.01)
        return x + 1

    values = [dask.delayed(slow_inc)(i) for i in range(20)]
    stream = console(terminal=False)
    with DaskProgress("sim", interval=0.01):
        assert dask.compute(*values, scheduler="threads") == tuple(range(1, 21))
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("hog: sim: 20/20 done, 0 running, 0 queued, 0 failed")

    stream = console(terminal=True)
    with DaskProgress("sim"):
        dask.compute(*values, scheduler="sync")
    assert stream.getvalue().endswith("\n")
    assert "hog: sim: 20/20 done" in stream.getvalue()


def test_dask_progress_counts_failures(console):
    dask = pytest.importorskip("dask")
    from hog_executor.dask_progress import DaskProgress

    def boom(x):
        raise ValueError(x)

    stream = console(terminal=False)
    with DaskProgress("bad"), pytest.raises(ValueError):
        dask.compute(dask.delayed(boom)(1), scheduler="sync")
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith("hog: bad: 0/") and " 0 running, 0 queued, " in last
    assert "0 failed" not in last
