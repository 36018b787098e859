"""The remote-side program: run one chunk of calls and print a framed result.

This file travels inside every bundle and runs in the call's environment. It imports only the
standard library and cloudpickle before the user's code (and, when arguments wait in a file
store, ``hog_executor.store``, which imports only the standard library), so starting it stays
cheap.

Usage: ``python runner.py PAYLOAD``. The payload is one JSON header line (``marker``,
``script``, ``by_value``, ``count``; with a store ``threshold`` and ``store_optional``;
``prefetch``, files of a file store to start reading before the script is imported;
``result_keys``, one path or null per call: where a call's result is also put, as a file
store frame, for calls that depend on it; a call that fails puts nothing there)
followed by a pickle of ``(function_bytes, [item_bytes, ...])``. The result frame, written
to the original stdout after everything else, is (the pickled list holds one outcome per
call, then a dict of timings: see `process_times`, plus ``calls``, each call's start and end)::

    @@HOG-RESULT <marker>@@
    <base64 of a pickled list of outcomes>
    @@HOG-END <marker>@@

Each outcome is ``(0, value_bytes)``, ``(2, store_key_bytes, size)`` (a result over the
payload's ``threshold`` put into the store whose pickled ProxyStore connector spec, a
``("module:Class", config)`` pair, is the optional third body element; the key is pickled
in the form of ``hog_executor.store.RawKey``) or
``(1, exception_bytes_or_None, type_name, message, traceback_text)``.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import struct
import sys
import time
import traceback

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: the runner must start fast
    from collections.abc import Iterator
    from typing import Any

# -- the protocol between client and runner -------------------------------------------------
# Every constant the two sides must agree on lives here, on the runner's side (this file
# travels alone and imports only the standard library); the client imports them from here.

#: The module name the user's script is imported as remotely (its ``__main__`` guard stays
#: unexecuted); objects of the script travel as references into it.
SCRIPT_MODULE = "__hog_script__"
#: The pickle protocol of payloads, outcomes and store frames.
PROTOCOL = 5
#: Set for the user's code: a remote call is running (see hog_executor.decorators).
REMOTE_CALL_ENV = "HOG_IN_REMOTE_CALL"
#: When set, results are also printed readably after the frame (``hog bundle`` sets it).
PRINT_RESULT_ENV = "HOG_PRINT_RESULT"
#: The lines around a result frame: ``BEGIN <marker>@@`` and ``END <marker>@@``.
RESULT_BEGIN = b"@@HOG-RESULT "
RESULT_END = b"@@HOG-END "
#: Outcome tags: the first element of each outcome tuple.
OUTCOME_VALUE = 0
OUTCOME_ERROR = 1
OUTCOME_STORED = 2
#: The first bytes of a store frame (a pickle and its out-of-band buffers).
STORE_FRAME_MAGIC = b"HOGPKL5\n"
#: Exit statuses with a meaning of their own. A bundle's call over its walltime exits as
#: coreutils ``timeout`` does; the others are distinct from each other and from signals.
EXIT_WALLTIME = 124
EXIT_ENV_FAILED = 96
EXIT_SETUP_FAILED = 97
#: A Slurm job script that failed before running its bundles.
EXIT_WRAPPER_FAILED = 95
#: The environment's Python could not import cloudpickle: the runner removed the
#: environment's `ENV_OK_NAME`, so the next bundle checks it and rebuilds it.
EXIT_RUNTIME_FAILED = 98
#: In a cached environment: written once its Python imported cloudpickle (see the bundle).
ENV_OK_NAME = ".hog-ok"


#: Set by the bundle: when it started (the end of any queue wait), when the environment was
#: ready (epoch seconds), and "1" when this bundle built it.
JOB_STARTED_ENV = "HOG_JOB_STARTED"
ENV_READY_ENV = "HOG_ENV_READY"
ENV_BUILT_ENV = "HOG_ENV_BUILT"


def frame_lines(marker: bytes) -> tuple[bytes, bytes]:
    """The begin and end lines (with their newlines) of the result frame for ``marker``."""
    return (b"\n" + RESULT_BEGIN + marker + b"@@\n", b"\n" + RESULT_END + marker + b"@@\n")


#: The file name cloudpickle (3.1.3 and later) gives code it sends by value.
DYNAMIC_CODE = "<dynamic-code>"


def code_with_source(code: Any, filename: str, lines: list[str] | None) -> Any:
    """Unpickles a function's code sent by value with its file name, and its source lines
    known to ``linecache``: tracebacks show the user's file, line and source."""
    if lines:
        import linecache

        # mtime None: checkcache() keeps the entry although the file may not exist here.
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    return code.replace(co_filename=filename)


def _dumps(obj: object, buffers: list[pickle.PickleBuffer] | None = None) -> bytes:
    """Plain pickle when it can (cheap: no cloudpickle import), cloudpickle when it must.

    With ``buffers``, out-of-band buffers (contiguous arrays...) are appended to it instead
    of being copied into the pickle.
    """
    callback = None if buffers is None else buffers.append
    try:
        return pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=callback)
    except Exception:
        import cloudpickle

        if buffers is not None:
            del buffers[:]
        data: bytes = cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=callback)
        return data


def _error(exc: BaseException) -> tuple[object, ...]:
    """An error outcome: the pickled exception (when it survives a round trip) and its text."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next  # hide the runner's own frame
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    try:
        data = _dumps(exc)
        pickle.loads(data)
    except Exception:
        data = None
    exc_type = type(exc)
    name = f"{exc_type.__module__}.{exc_type.__qualname__}"
    try:
        message = str(exc)
    except Exception:
        message = "<str() failed>"
    return (OUTCOME_ERROR, data, name, message, text)


#: Scripts imported by this process (a warm runner imports its script once): path -> the
#: module, or the exception its import raised.
_imported: dict[str, object] = {}


def _import_script(path: str, by_value: bool) -> object:
    done = _imported.get(path)
    if isinstance(done, BaseException):
        raise done
    if done is not None:
        return done
    try:
        module = _load_script(path, by_value)
    except Exception as exc:
        _imported[path] = exc
        raise
    _imported[path] = module
    _times["imported"] = time.time()
    return module


def _import_chunk_script(header: dict[str, Any], where: str) -> object:
    """Import the script a chunk's ``header`` names (its file is in ``where``)."""
    return _import_script(os.path.join(where, header["script"]), header.get("by_value", False))


def _load_chunk(header: dict[str, Any], body: bytes,
                where: str) -> tuple[Any, list[Any], list[Any]]:
    """The chunk's function, its calls and the rest of its body, once its script (if any)
    is imported."""
    if header.get("script"):
        _import_chunk_script(header, where)
    fn_bytes, items, *extra = pickle.loads(body)
    return pickle.loads(fn_bytes), items, extra


#: When this process got ready (the frame's or the ready message's timing record).
_times: dict[str, Any] = {}


def process_times() -> dict[str, Any]:
    """This runner's start-up, for the client's per-call timings: when the environment was
    ready (and whether this bundle built it), when the script was imported, and where."""
    ready = os.environ.get(ENV_READY_ENV, "")
    began = os.environ.get(JOB_STARTED_ENV, "")
    return {
        "job_started": float(began.replace(",", ".")) if began else None,
        "env_ready": float(ready.replace(",", ".")) if ready else None,
        "env_built": os.environ.get(ENV_BUILT_ENV) == "1",
        "imported": _times.get("imported"),
        "worker": f"{os.uname().nodename}:{os.getpid()}",
    }


def _load_script(path: str, by_value: bool) -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location(SCRIPT_MODULE, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the script {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[SCRIPT_MODULE] = module
    sys.argv = [path]
    spec.loader.exec_module(module)
    if by_value:
        import cloudpickle

        cloudpickle.register_pickle_by_value(module)
    return module


class _ResultStore:
    """Puts results over the threshold into the store (``hog_executor.store.put_frame``).

    The pickle and its out-of-band buffers are written as one frame: a file store is written
    directly, other connectors are rebuilt from ``("module:Class", config)`` (their
    ``from_config``), importing proxystore only then. When the store was not asked for
    explicitly (``store_optional``) and it cannot be reached for want of a package, results
    stay inline.
    """

    def __init__(self, config: bytes | None, threshold: int, optional: bool) -> None:
        self.config = config
        self.spec = pickle.loads(config) if config is not None else None
        self.threshold = threshold
        self.optional = optional

    @property
    def active(self) -> bool:
        return self.spec is not None

    def outcome(self, value: object, data: bytes,
                buffers: list[pickle.PickleBuffer]) -> tuple[object, ...]:
        size = len(data) + sum(b.raw().nbytes for b in buffers)
        if self.spec is None or size <= self.threshold:
            return (OUTCOME_VALUE, _dumps(value) if buffers else data)
        try:
            from hog_executor.store import frame_parts, put_frame

            key = put_frame(self.spec, frame_parts(data, buffers))
        except ImportError:
            if self.optional:
                return (OUTCOME_VALUE, _dumps(value))
            raise
        return (OUTCOME_STORED, pickle.dumps(key, protocol=PROTOCOL), size)


def run(header: dict[str, Any], body: bytes, where: str) -> list[tuple[object, ...]]:
    """Run every call of the chunk; return the list of outcomes."""
    return [outcome for _, outcome in run_calls(header, body, where)]


def run_calls(header: dict[str, Any], body: bytes, where: str,
              start: int = 0) -> Iterator[tuple[int, tuple[object, ...]]]:
    """Run the calls of the chunk from index ``start``; yield ``(index, outcome)`` for each
    as it finishes. ``SystemExit`` from a call, and ``KeyboardInterrupt`` from a real SIGINT,
    propagate."""
    if header.get("prefetch"):  # arguments in a file store: read them while importing
        try:
            from hog_executor.store import prefetch

            prefetch(header["prefetch"])
        except Exception:
            pass
    try:
        fn, items, extra = _load_chunk(header, body, where)
    except Exception as exc:
        _runtime_failed(exc)
        failure = _error(exc)
        for index in range(start, header["count"]):
            yield index, failure
        return
    results = _ResultStore(extra[0] if extra else None, header.get("threshold") or 0,
                           header.get("store_optional", False))
    keys = header.get("result_keys") or ()
    for index in range(start, len(items)):
        yield index, _call(fn, items[index], results,
                           keys[index] if index < len(keys) else None)


#: Whether a real SIGINT arrived (see `_watch_sigint`).
_sigint: list[int] = []
_watching_sigint = False


def _watch_sigint() -> None:
    """Tell a real SIGINT from a ``KeyboardInterrupt`` the function raises itself."""
    global _watching_sigint
    _watching_sigint = True
    import signal

    def on_sigint(signum: int, frame: Any) -> None:
        _sigint.append(signum)
        signal.default_int_handler(signum, frame)

    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: a SIGINT cannot be told apart
        pass


def _runtime_failed(exc: BaseException) -> None:
    """Exit with `EXIT_RUNTIME_FAILED` when ``exc`` says cloudpickle cannot be imported."""
    if not (isinstance(exc, ImportError)
            and (exc.name or "").partition(".")[0] == "cloudpickle"):
        return
    try:
        os.unlink(os.path.join(sys.prefix, ENV_OK_NAME))
        note = "the next call rebuilds it"
    except OSError:
        note = f"delete it to rebuild it: rm -rf '{sys.prefix}'"
    print(f"hog: the environment {sys.prefix} cannot import cloudpickle ({exc}); {note}",
          file=sys.stderr, flush=True)
    raise SystemExit(EXIT_RUNTIME_FAILED)


def _put_result(path: str, data: bytes, buffers: list[pickle.PickleBuffer]) -> None:
    """Put a call's result at ``path`` of a file store (a ``result_keys`` entry)."""
    from hog_executor.store.files import write_file
    from hog_executor.store.frames import frame_parts

    write_file(os.path.dirname(path), frame_parts(data, buffers), os.path.basename(path))


def _call(fn: Any, item: bytes, results: _ResultStore,
          key: str | None = None) -> tuple[object, ...]:
    """Run one call; its outcome. With ``key``, its result is also put there."""
    if not _watching_sigint:
        _watch_sigint()
    try:
        args, kwargs = pickle.loads(item)
        value = fn(*args, **kwargs)
    except SystemExit:
        raise  # sys.exit() ends the process, as it would locally
    except KeyboardInterrupt as exc:
        if _sigint:
            raise  # a real SIGINT ends the process, as it would locally
        return _error(exc)  # raised by the function: its exception, like any other
    except BaseException as exc:  # also asyncio.CancelledError and user BaseExceptions
        _runtime_failed(exc)
        return _error(exc)
    buffers: list[pickle.PickleBuffer] | None = [] if results.active else None
    try:
        data = _dumps(value, buffers)
    except Exception as exc:
        _runtime_failed(exc)
        return _error(TypeError(
            f"the result ({type(value).__qualname__}) cannot be pickled: {exc}"))
    if key and type(value).__module__ != "hog_executor.checkpoint":
        try:
            _put_result(key, data, buffers or [])
        except Exception as exc:
            return _error(OSError(f"the result could not be put at {key}: {exc}"))
    try:
        return results.outcome(value, data, buffers or [])
    except Exception as exc:
        return _error(exc)


def _show(outcomes: list[tuple[object, ...]]) -> int:
    """Print each result (repr) or remote traceback readably, for bundles run by hand."""
    failed = 0
    for outcome in outcomes:
        if outcome[0] == OUTCOME_VALUE:
            try:
                print(repr(pickle.loads(outcome[1])))  # type: ignore[arg-type]
            except Exception as exc:
                print(f"<result not printable: {exc}>")
        else:
            failed += 1
            print(outcome[4], end="", file=sys.stderr)
    sys.stdout.flush()
    return 1 if failed else 0


# -- serving: a warm runner ----------------------------------------------------------------
# ``python runner.py --serve PAYLOAD`` runs the chunk of PAYLOAD like the one-shot mode, then
# keeps the script imported and serves more chunks read from stdin, until stdin ends or it
# has run ``HOG_MAX_CALLS`` calls. Messages both ways are a 8-byte big-endian length and
# that many bytes. A request is a 4-byte index (the first call to run: calls before it
# already ran elsewhere) and a chunk payload. The answers, pickled tuples, on the original
# stdout:
#   (MSG_READY, pid, times)                   the script is imported, calls start; ``times``
#                                             as in `process_times`
#   (MSG_CALL, index, outcome, out, err, t0, t1)  one call finished; its own stdout/stderr
#   (MSG_DONE,)                               every call of the chunk has an answer
#   (MSG_EXIT, index, out, err, code)         call ``index`` ended the process (sys.exit())
#   (MSG_RETIRE, index)                       ``HOG_MAX_CALLS`` reached: calls from
#                                             ``index`` on were not run; the process exits
# While serving, fds 1 and 2 point to private spool files, emptied after each call, so
# what a call prints (also from C code and subprocesses) is that call's own.

MSG_READY = "ready"
MSG_CALL = "call"
MSG_DONE = "done"
MSG_EXIT = "exit"
MSG_RETIRE = "retire"
#: Environment variables a serving runner reads: calls before it exits (0: no limit).
MAX_CALLS_ENV = "HOG_MAX_CALLS"
#: The index of the first call to run of the chunk in the payload file.
SERVE_START_ENV = "HOG_SERVE_START"
#: Bytes of one call's stdout (and of its stderr) sent back; the tail is kept.
OUTPUT_CAP = 8 * 1024 * 1024
# Formats, not struct.Struct objects: this module also travels by value (to Dask workers).
_LENGTH = ">Q"
_INDEX = ">I"
_LENGTH_SIZE = 8
_INDEX_SIZE = 4


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        data = os.read(fd, min(n, 1 << 20))
        if not data:
            return None
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


def read_message(fd: int) -> bytes | None:
    """One length-prefixed message from ``fd`` (None: the channel ended)."""
    head = _read_exact(fd, _LENGTH_SIZE)
    if head is None:
        return None
    return _read_exact(fd, struct.unpack(_LENGTH, head)[0])


def message(data: bytes) -> bytes:
    """``data`` framed as a message."""
    return struct.pack(_LENGTH, len(data)) + data


def request(start: int, payload: bytes) -> bytes:
    """The message asking a serving runner to run a chunk's calls from index ``start``."""
    return message(struct.pack(_INDEX, start) + payload)


def capped_output(fd: int, size: int, start: int = 0) -> bytes:
    """Bytes ``start:size`` of ``fd`` as the client keeps them (one-shot bundles too): past
    `OUTPUT_CAP`, a note of what was dropped and the tail."""
    n = size - start
    if n <= OUTPUT_CAP:
        return os.pread(fd, n, start)
    note = f"[hog: {n - OUTPUT_CAP:,} earlier bytes of this call's output dropped]\n"
    return note.encode() + os.pread(fd, OUTPUT_CAP, size - OUTPUT_CAP)


def _take(fd: int) -> bytes:
    """What was written to spool ``fd`` since the last take (its tail past `OUTPUT_CAP`)."""
    size = os.fstat(fd).st_size
    if not size:
        return b""
    data = capped_output(fd, size)
    os.ftruncate(fd, 0)
    return data


class _Server:
    def __init__(self, where: str) -> None:
        self.where = where
        self.out = os.dup(1)
        self.channel = os.dup(0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # the user's code cannot read the channel
        os.close(null)
        self.spools = []
        for fd, name in ((1, ".hog_out"), (2, ".hog_err")):
            spool = os.open(os.path.join(where, name),
                            os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
            os.dup2(spool, fd)
            os.close(spool)
            self.spools.append(fd)
        self.max_calls = int(os.environ.get(MAX_CALLS_ENV) or 0)
        self.calls = 0
        self.busy = True  # running a chunk (False: waiting for the next request)
        self.hung_up = False  # the client's end of the channel closed
        self.baseline: set[int] = set()  # children of the script's import, left alone

    def send(self, *answer: object) -> None:
        """Write an answer at once: one that waited could be lost with the process, and the
        client must know which call was running when a runner dies."""
        view = memoryview(message(pickle.dumps(answer, protocol=PROTOCOL)))
        while view:
            view = view[os.write(self.out, view):]

    def output(self) -> tuple[bytes, bytes]:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # the user replaced or closed them: fds 1 and 2 still count
            pass
        return _take(1), _take(2)

    def serve_chunk(self, header: dict[str, Any], body: bytes, start: int) -> bool:
        """Run one chunk from ``start``; False: the runner retires (max calls reached)."""
        index = start
        calls = run_calls(header, body, self.where, start)
        try:
            while True:
                if self.max_calls and self.calls >= self.max_calls \
                        and index < header["count"]:
                    self.send(MSG_RETIRE, index)
                    return False
                t0 = time.time()
                step = next(calls, None)
                if step is None:
                    break
                index, outcome = step
                end_children(self.baseline)  # what the call left running ends with it
                out, err = self.output()
                self.send(MSG_CALL, index, outcome, out, err, t0, time.time())
                self.calls += 1
                index += 1
        except SystemExit as exc:
            out, err = self.output()
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            self.send(MSG_EXIT, index, out, err, code)
            raise
        self.send(MSG_DONE)
        return True


# -- what a call leaves behind ---------------------------------------------------------------
# The runner makes itself a subreaper (Linux): processes a call started, and their children
# once orphaned (also those that started a session of their own), are its children, and are
# killed when the call ends, so that neither its result nor its slot waits for them.

_PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except Exception:  # no prctl: children that leave the session may outlive the call
        return
    import signal

    def on_term(signum: int, frame: Any) -> None:  # a walltime or a stop: children first
        end_children(set())
        os._exit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        pass


#: Open ``/proc/self/task/<tid>/children`` files, by thread id: re-read in place each call.
_child_files: dict[int, int] = {}


def children() -> set[int]:
    """This process's children, as its Python threads started them (Linux ``/proc``;
    elsewhere none are known)."""
    found: set[int] = set()
    threading = sys.modules.get("threading")  # not imported: one thread, the main one
    tids = ({t.native_id for t in threading.enumerate() if t.native_id is not None}
            if threading is not None else {os.getpid()})
    for tid in [t for t in _child_files if t not in tids]:
        os.close(_child_files.pop(tid))
    for tid in tids:
        fd = _child_files.get(tid)
        if fd is None:
            try:
                fd = _child_files[tid] = os.open(f"/proc/self/task/{tid}/children", os.O_RDONLY)
            except OSError:  # no /proc, or a kernel without children files
                continue
        try:
            found.update(int(p) for p in os.pread(fd, 1 << 16, 0).split())
        except OSError:  # the thread ended meanwhile
            continue
    return found


def end_children(keep: set[int], rounds: int = 20) -> None:
    """Kill this process's children but ``keep`` and reap them; orphans that come to this
    process meanwhile (it is a subreaper) are killed in the next round."""
    for _ in range(rounds):
        doomed = children() - keep
        if not doomed:
            return
        for pid in doomed:
            try:
                os.kill(pid, 9)
            except OSError:  # it exited meanwhile
                continue
        for pid in doomed:
            try:
                os.waitpid(pid, 0)
            except OSError:  # reaped elsewhere (a Popen of the user's)
                continue


def _end_session() -> None:
    """Kill what this runner's call started (every process of the bundle's session but the
    bundle's bash), then exit: bash then removes the bundle's temporary directory."""
    sid = os.getsid(0)
    spare = {os.getpid(), os.getppid()}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit() and int(entry) not in spare:
            try:
                if os.getsid(int(entry)) == sid:
                    os.kill(int(entry), 9)
            except OSError:  # it exited meanwhile
                continue
    os._exit(137)


def _watch_client(server: _Server) -> None:
    """End the session as soon as the client's end of the channel closes during a call (the
    client died).

    Polls for a hang-up only, never reading: between calls the main loop reads the channel
    and leaves at its end; this thread covers a client that goes away while a call runs.
    """
    import select
    import threading

    def watch() -> None:
        poller = select.poll()
        poller.register(server.channel, 0)  # no events: only POLLHUP and POLLERR come back
        poller.poll()
        # The main loop sets busy, then looks at hung_up; this sets hung_up, then looks at
        # busy: a request the client sent just before it died is never run unwatched.
        server.hung_up = True
        if server.busy:
            _end_session()

    threading.Thread(target=watch, name="hog-client-watch", daemon=True).start()


def serve(argv: list[str]) -> int:
    """Serve chunks: the first from the payload file, the next ones from stdin."""
    os.environ[REMOTE_CALL_ENV] = "1"
    path = argv[-1]
    where = os.path.dirname(os.path.abspath(path))
    server = _Server(where)
    _become_subreaper()
    with open(path, "rb") as f:
        line, _, body = f.read().partition(b"\n")
    header = json.loads(line)
    if header.get("script"):
        try:
            _import_chunk_script(header, where)
        except Exception:  # every call of every chunk reports it
            pass
    server.baseline = children()  # started by the import: they stay
    _watch_client(server)
    server.send(MSG_READY, os.getpid(), process_times())
    start = int(os.environ.pop(SERVE_START_ENV, "") or 0)
    while server.serve_chunk(header, body, start):
        if server.max_calls and server.calls >= server.max_calls:
            return 0  # retire between chunks: the client sees the channel end after DONE
        server.busy = False
        data = read_message(server.channel)
        if data is None:
            return 0
        server.busy = True
        if server.hung_up:  # sent by a client that is gone since: nobody wants the answer
            return 0
        start = struct.unpack_from(_INDEX, data)[0]
        line, _, body = data[_INDEX_SIZE:].partition(b"\n")
        header = json.loads(line)
    return 0


#: Modes of ``python runner.py MODE ...`` besides serving (filled in by the ranks section).
_MODES: dict[str, Any] = {}

# -- ranks: one call on many processes ------------------------------------------------------
# (Bundles of calls on one process carry this file without this section: see
# hog_executor.bundle.runner_source.)
# ``python runner.py --rank-mode N ALL PAYLOAD`` is what a launcher starts on each of N
# ranks. A rank learns its number from the launcher's environment (`RANK_VARIABLES`; MPI
# is not imported here), runs every call of the chunk and appends each outcome, as a
# message ``(index, outcome)``, to ``.hog_rank-<rank>`` beside the payload. With ALL = 0
# only rank 0 keeps its value (the others send ``b""``); with ALL = 1 every rank sends its
# value inline. A call raising on a rank is marked with the rank (attribute ``hog_rank``,
# a note); when the rank has MPI initialized (mpi4py), it then aborts the MPI job, since
# the other ranks may wait for it in a collective.
#
# ``python runner.py --merge-ranks N ALL STATUS PAYLOAD`` runs once the launcher has
# ended (with exit status STATUS): it reads the ranks' files and prints the one result
# frame: for each call the error of the lowest rank that raised, else rank 0's value (ALL
# = 0) or the list of every rank's value in rank order (ALL = 1).

#: Environment variables launchers set to tell a process its rank, most specific first
#: (inside a Slurm job, SLURM_PROCID is the batch step's 0 for ranks mpiexec starts).
RANK_VARIABLES = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK",
                  "SLURM_PROCID")
#: The file of rank ``r``'s outcomes, beside the payload.
RANK_FILE = ".hog_rank-{}"
#: The attribute naming the rank on an exception a rank raised.
RANK_ATTRIBUTE = "hog_rank"


def rank_from_env(environ: Any = None) -> tuple[int, str] | None:
    """This process's rank and the variable it came from (None: no launcher said)."""
    environ = os.environ if environ is None else environ
    for name in RANK_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value), name
    return None


def _mark_rank(exc: BaseException, rank: int, ranks: int) -> None:
    """Say on ``exc`` which rank raised it (attribute and note; both survive pickling)."""
    try:
        setattr(exc, RANK_ATTRIBUTE, rank)
        note = f"raised on rank {rank} of {ranks}"
        if hasattr(exc, "add_note"):
            exc.add_note(note)
        else:  # Python 3.10: kept, but not shown by traceback
            exc.__notes__ = [*getattr(exc, "__notes__", []), note]  # type: ignore[attr-defined]
    except Exception:  # an exception without a __dict__ (slots)
        pass


def _rank_error(exc: BaseException, rank: int, ranks: int) -> tuple[object, ...]:
    _mark_rank(exc, rank, ranks)
    outcome = _error(exc)
    text = outcome[4]
    if not hasattr(exc, "add_note"):
        text = f"[raised on rank {rank} of {ranks}]\n{text}"
    return (*outcome[:3], f"{outcome[3]} (rank {rank} of {ranks})", text)


def _mpi_world() -> Any:
    """mpi4py's COMM_WORLD when the user's code initialized MPI (None otherwise)."""
    mpi = sys.modules.get("mpi4py.MPI")
    try:
        if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
            return mpi.COMM_WORLD
    except Exception:
        pass
    return None


def _rank_call(fn: Any, item: bytes, results: _ResultStore | None, rank: int,
               ranks: int) -> tuple[tuple[object, ...], bool]:
    """One call on this rank: its outcome, and whether it raised."""
    try:
        args, kwargs = pickle.loads(item)
        value = fn(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        return _rank_error(exc, rank, ranks), True
    world = _mpi_world()
    if world is not None and world.Get_size() != ranks:
        return _rank_error(RuntimeError(
            f"the launcher started {ranks} processes, but MPI sees a world of "
            f"{world.Get_size()}: the launcher and the MPI library do not share a process "
            "manager (PMI). With srun, choose the PMI the library speaks "
            "(launcher_flags=[\"--mpi=pmi2\"] for the mpich wheel); else use the "
            "library's own mpiexec (launcher=\"mpiexec\")"), rank, ranks), True
    if results is None:  # another rank's value is not kept
        return (OUTCOME_VALUE, b""), False
    buffers: list[pickle.PickleBuffer] | None = [] if results.active else None
    try:
        data = _dumps(value, buffers)
    except Exception as exc:
        return _rank_error(TypeError(
            f"the result ({type(value).__qualname__}) cannot be pickled: {exc}"), rank,
            ranks), True
    try:
        return results.outcome(value, data, buffers or []), False
    except Exception as exc:
        return _rank_error(exc, rank, ranks), True


def rank_main(argv: list[str]) -> int:
    """One rank: run the chunk's calls, write each outcome to this rank's file."""
    ranks, all_ranks, path = int(argv[2]), argv[3] == "1", argv[-1]
    found = rank_from_env()
    if found is None:
        print(f"hog: cannot tell this process's rank: the launcher set none of "
              f"{', '.join(RANK_VARIABLES)}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    rank, variable = found
    if rank >= ranks:
        print(f"hog: {variable}={rank}, but the call runs on {ranks} ranks", file=sys.stderr)
        return EXIT_SETUP_FAILED
    where = os.path.dirname(os.path.abspath(path))
    try:
        fd = os.open(os.path.join(where, RANK_FILE.format(rank)),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"hog: rank {rank} ({variable}) was started twice: the launcher did not give "
              "each process a rank of its own", file=sys.stderr)
        return EXIT_SETUP_FAILED
    os.environ[REMOTE_CALL_ENV] = "1"
    with open(path, "rb") as f:
        line, _, body = f.read().partition(b"\n")
    header = json.loads(line)

    def record(index: int, outcome: object, *times: float) -> None:
        data = message(pickle.dumps((index, outcome, *times), protocol=PROTOCOL))
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    try:
        fn, items, extra = _load_chunk(header, body, where)
    except Exception as exc:
        _runtime_failed(exc)  # an environment without cloudpickle: rebuilt next time
        failure = _rank_error(exc, rank, ranks)
        for index in range(header["count"]):
            record(index, failure)
        return 0
    record(-1, process_times())  # this rank's start-up, for the call's timings
    results: _ResultStore | None = None
    if all_ranks:  # every value inline: the merge puts the list into the store if large
        results = _ResultStore(None, 0, False)
    elif rank == 0:
        results = _ResultStore(extra[0] if extra else None, header.get("threshold") or 0,
                               header.get("store_optional", False))
    try:
        began = time.time()
        for index, item in enumerate(items):
            outcome, raised = _rank_call(fn, item, results, rank, ranks)
            ended = time.time()
            record(index, outcome, began, ended)
            began = ended
            world = _mpi_world() if raised else None
            if world is not None and ranks > 1:
                _abort(world, fd)
    finally:
        os.close(fd)
    return 0


def _abort(world: Any, fd: int) -> None:
    """End every rank of the MPI job: the others may wait for this one in a collective."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    os.close(fd)
    try:
        world.Abort(1)
    finally:
        os._exit(1)  # some process managers return from MPI_Abort: this rank ends anyway


def _read_rank_file(path: str) -> dict[int, Any]:
    """The records of a rank by call index, each ``(outcome, started, ended)``; index -1:
    its start-up times. A record cut short by the rank's end is dropped."""
    found: dict[int, Any] = {}
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return found
    try:
        while True:
            data = read_message(fd)
            if data is None:
                break
            try:
                index, *rest = pickle.loads(data)
            except Exception:
                break
            found[index] = rest[0] if index < 0 else tuple(rest)
    finally:
        os.close(fd)
    return found


def _gathered(values: list[bytes], header: dict[str, Any], where: str) -> list[object]:
    """The ranks' values unpickled (the script is imported only when a value needs it)."""
    try:
        return [pickle.loads(v) for v in values]
    except Exception:
        if not header.get("script"):
            raise
    _import_chunk_script(header, where)
    return [pickle.loads(v) for v in values]


def merge_ranks(argv: list[str]) -> int:
    """Merge the ranks' outcome files into the call's result frame (see above)."""
    ranks, all_ranks, status, path = int(argv[2]), argv[3] == "1", int(argv[4]), argv[-1]
    out = os.fdopen(os.dup(1), "wb")
    where = os.path.dirname(os.path.abspath(path))
    with open(path, "rb") as f:
        line, _, body = f.read().partition(b"\n")
    header = json.loads(line)
    count = header["count"]
    records = [_read_rank_file(os.path.join(where, RANK_FILE.format(r))) for r in range(ranks)]
    per_rank = [{i: rec[0] for i, rec in found.items() if i >= 0} for found in records]
    if not any(per_rank):
        print("hog: no rank recorded a result", file=sys.stderr)
        return status or EXIT_SETUP_FAILED
    results = None
    first_error: tuple[int, int] | None = None  # (call, rank)
    outcomes: list[tuple[object, ...]] = []
    for index in range(count):
        got = [per_rank[r].get(index) for r in range(ranks)]
        failed = [r for r, o in enumerate(got) if o is not None and o[0] == OUTCOME_ERROR]
        missing = [r for r, o in enumerate(got) if o is None]
        if failed:
            if first_error is None:
                first_error = (index, failed[0])
            outcomes.append(got[failed[0]])  # type: ignore[arg-type]
            continue
        if missing:
            if first_error is not None:
                what = (f"not run: rank {first_error[1]} raised in call {first_error[0]} of "
                        "this chunk, and the ranks were stopped")
            else:
                names = ", ".join(map(str, missing))
                what = (f"rank{'s' if len(missing) > 1 else ''} {names} of {ranks} ended "
                        f"without a result for this call (the launcher's exit status was "
                        f"{status}; the ranks' stderr is above)")
            outcomes.append(_error(RuntimeError(what)))
            continue
        if not all_ranks:
            outcomes.append(got[0])  # type: ignore[arg-type]
            continue
        try:
            values = _gathered([o[1] for o in got], header, where)  # type: ignore[index]
            if results is None:
                extra = pickle.loads(body)[2:]
                results = _ResultStore(extra[0] if extra else None,
                                       header.get("threshold") or 0,
                                       header.get("store_optional", False))
            buffers: list[pickle.PickleBuffer] | None = [] if results.active else None
            data = _dumps(values, buffers)
            outcomes.append(results.outcome(values, data, buffers or []))
        except Exception as exc:
            outcomes.append(_error(RuntimeError(
                f"the values of the ranks could not be gathered: {type(exc).__name__}: {exc}")))
    # Timings as the one-process frame has them: rank 0's start-up (its script import), and
    # each call from its start on rank 0 (or the first rank) to its end on the last rank.
    times = {**process_times(), **(records[0].get(-1) or {})}
    calls = []
    for index in range(count):
        ran = [rec[index] for rec in records if index in rec]
        first = records[0][index][1] if index in records[0] else min(
            (r[1] for r in ran), default=None)
        if first is not None and times.get("imported"):
            first = max(first, times["imported"])
        calls.append((first, max((r[2] for r in ran), default=None)))
    times["calls"] = calls
    frame = base64.b64encode(pickle.dumps([*outcomes, times], protocol=PROTOCOL))
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    begin, end = frame_lines(header["marker"].encode())
    out.write(begin + frame + end)
    out.flush()
    if os.environ.get(PRINT_RESULT_ENV):
        return _show(outcomes)
    return 0


_MODES.update({"--rank-mode": rank_main, "--merge-ranks": merge_ranks})
# -- end of ranks ---------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    if len(argv) > 2 and argv[1] == "--serve":
        return serve(argv)
    if len(argv) > 2 and argv[1] in _MODES:
        return int(_MODES[argv[1]](argv))
    out = os.fdopen(os.dup(1), "wb")  # the frame goes here even if the user redirects fd 1
    os.environ[REMOTE_CALL_ENV] = "1"  # decorated functions refuse nested remote calls
    with open(argv[1], "rb") as f:
        data = f.read()
    line, _, body = data.partition(b"\n")
    header = json.loads(line)
    _become_subreaper()
    if os.environ.get("HOG_SIGNAL_LEAD"):
        from hog_executor.checkpoint import watch
        watch(os.path.dirname(os.path.abspath(argv[1])))
    outcomes: list[tuple[object, ...]] = []
    calls = []
    began = time.time()
    for _, outcome in run_calls(header, body, os.path.dirname(os.path.abspath(argv[1]))):
        ended = time.time()
        calls.append((max(began, _times.get("imported") or began), ended))
        outcomes.append(outcome)
        began = ended
    end_children(set())  # the result waits for nothing the calls left running
    times = {**process_times(), "calls": calls}
    frame = base64.b64encode(pickle.dumps([*outcomes, times], protocol=PROTOCOL))
    marker = header["marker"].encode()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    begin, end = frame_lines(marker)
    out.write(begin + frame + end)
    out.flush()
    if os.environ.get(PRINT_RESULT_ENV):
        return _show(outcomes)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
