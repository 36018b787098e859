"""Live progress of many calls, and a status line per ``.remote()`` call.

Everything goes through the standard `logging` module, to the ``hog_executor`` logger:
progress updates are ordinary log records carrying a ``hog_progress`` attribute. The
`ConsoleHandler` draws them as a bar redrawn in place when its stream is a terminal, and
writes them as plain log lines otherwise (one every `PLAIN_INTERVAL` seconds, plus the
final summary). When nothing else handles the ``hog_executor`` logger, `ensure_console`
installs a `ConsoleHandler` on stderr the first time progress is shown.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import IO, Any, TypeVar

__all__ = [
    "ConsoleHandler",
    "Counts",
    "Tracker",
    "count",
    "ensure_console",
    "format_bar",
    "format_counts",
    "set_default",
    "track",
    "wait_with_status",
]

T = TypeVar("T")

logger = logging.getLogger("hog_executor")
output_logger = logging.getLogger("hog_executor.output")

#: Seconds between redraws of a bar on a terminal.
LIVE_INTERVAL = 0.2
#: Seconds between plain progress lines when the output is not a terminal.
PLAIN_INTERVAL = 10.0

_default_progress = False


def set_default(enabled: bool) -> None:
    """Whether ``map(progress=None)`` shows progress (``hog run`` turns it on in a terminal)."""
    global _default_progress
    _default_progress = enabled


@dataclass(frozen=True)
class Counts:
    """A snapshot of a group of calls.

    Attributes:
        total: calls tracked.
        done: calls that returned a value.
        failed: calls that raised or were cancelled.
        running: calls running now.
        queued: calls not started yet.
        elapsed: seconds since tracking began.
    """

    total: int
    done: int
    failed: int
    running: int
    queued: int
    elapsed: float

    @property
    def finished(self) -> int:
        """Calls that are over, successfully or not."""
        return self.done + self.failed

    @property
    def rate(self) -> float:
        """Finished calls per second so far."""
        return self.finished / self.elapsed if self.elapsed > 0 else 0.0


def count(futures: Iterable[Future[Any]], elapsed: float = 0.0) -> Counts:
    """Count ``futures`` by state."""
    total = done = failed = running = 0
    for f in futures:
        total += 1
        if f.done():
            if f.cancelled() or f.exception() is not None:
                failed += 1
            else:
                done += 1
        elif f.running():
            running += 1
    return Counts(total, done, failed, running, total - done - failed - running, elapsed)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def format_counts(c: Counts) -> str:
    """``12/100 done, 4 running, 84 queued, 0 failed, 3.1/s, ETA 28.4s`` (pure)."""
    text = (f"{c.done}/{c.total} done, {c.running} running, {c.queued} queued, "
            f"{c.failed} failed, {c.rate:.1f}/s")
    remaining = c.total - c.finished
    if remaining and c.rate > 0:
        text += f", ETA {_duration(remaining / c.rate)}"
    elif not remaining:
        text += f", {_duration(c.elapsed)}"
    return text


def format_bar(label: str, c: Counts, width: int = 30) -> str:
    """A one-line bar: ``label [#####>....] counts`` (pure)."""
    width = max(5, width)
    filled = int(width * c.finished / c.total) if c.total else width
    active = min(width - filled, round(width * c.running / c.total)) if c.total else 0
    bar = "#" * filled + ">" * active + "." * (width - filled - active)
    return f"{label} [{bar}] {format_counts(c)}"


class ConsoleHandler(logging.Handler):
    """Writes ``hog_executor`` records; draws progress records in place on a terminal.

    Args:
        stream: where to write (default: ``sys.stderr`` at each write).
        terminal: draw in place; default: whether the stream is a terminal.
    """

    def __init__(self, stream: IO[str] | None = None, terminal: bool | None = None) -> None:
        super().__init__()
        self._stream = stream
        self._terminal = terminal
        self._line = ""  # the transient line on screen

    @property
    def stream(self) -> IO[str]:
        """The stream written to."""
        return self._stream if self._stream is not None else sys.stderr

    @property
    def terminal(self) -> bool:
        """Whether progress is drawn in place."""
        if self._terminal is not None:
            return self._terminal
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            transient = getattr(record, "hog_transient", False)
            text = self.format(record) if not transient else record.getMessage()
            stream = self.stream
            with self.lock or threading.RLock():
                if self.terminal:
                    width = _columns()
                    if self._line:
                        stream.write("\r\x1b[K")
                    if transient:
                        self._line = text[: width - 1]
                        stream.write(self._line)
                    else:
                        stream.write(text + "\n")
                        if self._line and not getattr(record, "hog_final", False):
                            stream.write(self._line)
                        else:
                            self._line = ""
                elif not transient:
                    stream.write(text + "\n")
                stream.flush()
        except Exception:
            self.handleError(record)


def _columns() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 100


_console_lock = threading.Lock()


def ensure_console() -> None:
    """Show ``hog_executor`` INFO records on stderr unless logging is configured already."""
    with _console_lock:
        if logger.handlers or logging.getLogger().handlers:
            return
        handler = ConsoleHandler()
        handler.setFormatter(logging.Formatter("hog: %(message)s"))
        logger.addHandler(handler)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)


def _live() -> bool:
    """Whether some handler of the ``hog_executor`` logger draws in place."""
    current: logging.Logger | None = logger
    while current is not None:
        if any(isinstance(h, ConsoleHandler) and h.terminal for h in current.handlers):
            return True
        current = current.parent if current.propagate else None
    return False


class Tracker:
    """Follows a group of calls and logs their progress until all are over.

    Progress records go to the ``hog_executor`` logger at INFO: transient ones (redrawn in
    place) every `LIVE_INTERVAL` seconds when a terminal shows them, plain lines every
    ``interval`` seconds otherwise, and a final summary line.

    Args:
        futures: the calls to follow.
        label: what the lines are about (``map simulate``).
        interval: seconds between plain lines (default `PLAIN_INTERVAL`).
        source: instead of futures, a function returning the counts for the seconds
            elapsed (the caller then calls `wake` on changes and `stop` at the end).
    """

    def __init__(self, futures: list[Future[Any]], label: str,
                 interval: float | None = None,
                 source: Callable[[float], Counts] | None = None) -> None:
        self.futures = futures
        self.label = label
        self.interval = interval
        self.start = time.monotonic()
        self._source = source
        self._stopped = False
        self._changed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hog-progress", daemon=True)
        for f in futures:
            f.add_done_callback(lambda _f: self._changed.set())

    def counts(self) -> Counts:
        """The current snapshot."""
        elapsed = time.monotonic() - self.start
        if self._source is not None:
            return self._source(elapsed)
        return count(self.futures, elapsed)

    def wake(self) -> None:
        """Something changed: look again now."""
        self._changed.set()

    def stop(self) -> None:
        """End following: the final line is written with the current counts."""
        self._stopped = True
        self._changed.set()

    def begin(self) -> Tracker:
        """Start following (in a daemon thread); return self."""
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        """Wait until the final line is written."""
        self._thread.join(timeout)

    def _run(self) -> None:
        live = _live()
        interval = LIVE_INTERVAL if live else (self.interval or PLAIN_INTERVAL)
        last_plain = time.monotonic()
        while True:
            c = self.counts()
            if self._stopped or (self._source is None and c.finished >= c.total):
                break
            if live:
                self._log(c, transient=True)
            elif time.monotonic() - last_plain >= interval:
                self._log(c)
                last_plain = time.monotonic()
            self._changed.wait(LIVE_INTERVAL if live else min(interval, 1.0))
            self._changed.clear()
        self._log(self.counts(), final=True)

    def _log(self, c: Counts, *, transient: bool = False, final: bool = False) -> None:
        extra = {"hog_progress": c, "hog_transient": transient, "hog_final": final}
        if transient:
            logger.info(format_bar(self.label, c, 30), extra=extra)
        else:
            split = total_split(self.futures) if final else ""
            logger.info("%s: %s%s", self.label, format_counts(c),
                        f" (summed over calls: {split})" if split else "", extra=extra)


def track(futures: list[Future[Any]], label: str, interval: float | None = None) -> Tracker:
    """Show the progress of ``futures`` (see `Tracker`) and return the running tracker."""
    ensure_console()
    return Tracker(futures, label, interval).begin()


def track_map(futures: list[Future[Any]], progress: bool | None, fn: Any,
              results: Iterator[T]) -> Iterator[T]:
    """The ``HogExecutor.map`` hook: track ``futures`` when ``progress`` (None: the default)
    says so, and return ``results``, which then ends only after the final progress line."""
    if progress is None:
        progress = _default_progress
    if not progress or not futures:
        return results
    label = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    tracker = track(futures, f"map {label}")

    def follow() -> Iterator[T]:
        try:
            yield from results
        finally:
            results.close()  # type: ignore[attr-defined]
            tracker.join(timeout=5)

    return follow()


def _state(future: Future[Any]) -> str:
    if future.running():
        return "running"
    if future.done():
        return "done"
    return "queued"


def phase_split(timings: Any) -> str:
    """``queue 1.2s, env 3.4s, import 0.1s, run 2.0s`` from a call's `CallTimings` ("" when
    none are known)."""
    if timings is None:
        return ""
    parts = timings.split()
    return ", ".join(f"{name} {_duration(parts[name])}"
                     for name in ("queue", "env", "import", "run") if name in parts)


def total_split(futures: list[Future[Any]]) -> str:
    """The phases of ``futures`` added up (see `phase_split`); "" when none are known."""
    totals: dict[str, float] = {}
    for f in futures:
        timings = getattr(f, "timings", None)
        if timings is not None:
            for name, seconds in timings.split().items():
                totals[name] = totals.get(name, 0.0) + seconds
    return ", ".join(f"{name} {_duration(totals[name])}"
                     for name in ("queue", "env", "import", "run") if name in totals)


def wait_with_status(future: Future[Any], label: str) -> Any:
    """Wait for one call, showing its state; return its value or raise its exception.

    Logs one status line (function, task id, outcome, total and running time) and replays
    what the call printed, each line prefixed by its source, on the ``hog_executor.output``
    logger. A KeyboardInterrupt stops the call, also when it is already running.
    """
    ensure_console()
    start = time.monotonic()
    started: float | None = None
    task = (getattr(future, "task_id", None) or "")[:8]
    where = f"{label} [task {task}]" if task else label
    live = _live()
    try:
        while True:
            try:
                future.exception(timeout=LIVE_INTERVAL if live else 0.1)
                break
            except FutureTimeout:
                pass
            if started is None and future.running():
                started = time.monotonic()
            if live:
                elapsed = time.monotonic() - start
                logger.info("%s %s %s", where, _state(future), _duration(elapsed),
                            extra={"hog_transient": True})
    except KeyboardInterrupt:
        _stop(future)
        raise
    except BaseException:  # cancelled
        pass
    end = time.monotonic()
    if future.cancelled():
        outcome = "cancelled"
    else:
        exc = future.exception()
        outcome = "done" if exc is None else f"failed ({type(exc).__name__})"
    split = phase_split(getattr(future, "timings", None))
    if split:
        ran = f" ({split})"
    else:
        ran = f", running {_duration(end - started)}" if started is not None else ""
    logger.info("%s %s in %s%s", where, outcome, _duration(end - start), ran,
                extra={"hog_final": True})
    _replay(future, label)
    return future.result()


def _stop(future: Future[Any]) -> None:
    """Cancel a call; stop its job when it is running and carries only this call."""
    stop = getattr(future, "stop", None)  # a HogFuture
    if stop is not None:
        stop()
    else:
        future.cancel()


def _replay(future: Future[Any], label: str) -> None:
    for stream in ("stdout", "stderr"):
        text = getattr(future, stream, None)
        if not text:
            continue
        for line in text.rstrip("\n").splitlines():
            output_logger.info("[%s %s] %s", label, stream, line)
