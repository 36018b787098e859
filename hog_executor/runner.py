"""The remote-side program: run one chunk of calls and print a framed result.

This file travels inside every bundle and runs in the call's environment. It imports only the
standard library and cloudpickle before the user's code (and, when arguments wait in a file
store, ``hog_executor.store``, which imports only the standard library), so starting it stays
cheap.

Usage: ``python runner.py PAYLOAD``. The payload is one JSON header line (``marker``,
``script``, ``by_value``, ``count``; with a store ``threshold`` and ``store_optional``;
``prefetch``, files of a file store to start reading before the script is imported)
followed by a pickle of ``(function_bytes, [item_bytes, ...])``. The result frame, written
to the original stdout after everything else, is::

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
import sys
import traceback

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: the runner must start fast
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


def frame_lines(marker: bytes) -> tuple[bytes, bytes]:
    """The begin and end lines (with their newlines) of the result frame for ``marker``."""
    return (b"\n" + RESULT_BEGIN + marker + b"@@\n", b"\n" + RESULT_END + marker + b"@@\n")


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


def _import_script(path: str, by_value: bool) -> object:
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
    if header.get("prefetch"):  # arguments in a file store: read them while importing
        try:
            from hog_executor.store import prefetch

            prefetch(header["prefetch"])
        except Exception:
            pass
    try:
        if header.get("script"):
            _import_script(os.path.join(where, header["script"]), header.get("by_value", False))
        fn_bytes, items, *extra = pickle.loads(body)
        fn = pickle.loads(fn_bytes)
    except Exception as exc:
        failure = _error(exc)
        return [failure] * header["count"]
    results = _ResultStore(extra[0] if extra else None, header.get("threshold") or 0,
                           header.get("store_optional", False))
    outcomes = []
    for item in items:
        try:
            args, kwargs = pickle.loads(item)
            value = fn(*args, **kwargs)
        except (KeyboardInterrupt, SystemExit):
            raise  # a signal or sys.exit() ends the process, as it would locally
        except BaseException as exc:  # also asyncio.CancelledError and user BaseExceptions
            outcomes.append(_error(exc))
            continue
        buffers: list[pickle.PickleBuffer] | None = [] if results.active else None
        try:
            data = _dumps(value, buffers)
        except Exception as exc:
            wrapped = TypeError(
                f"the result ({type(value).__qualname__}) cannot be pickled: {exc}"
            )
            outcomes.append(_error(wrapped))
            continue
        try:
            outcomes.append(results.outcome(value, data, buffers or []))
        except Exception as exc:
            outcomes.append(_error(exc))
        del value, data, buffers
    return outcomes


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


def main(argv: list[str]) -> int:
    out = os.fdopen(os.dup(1), "wb")  # the frame goes here even if the user redirects fd 1
    os.environ[REMOTE_CALL_ENV] = "1"  # decorated functions refuse nested remote calls
    with open(argv[1], "rb") as f:
        data = f.read()
    line, _, body = data.partition(b"\n")
    header = json.loads(line)
    outcomes = run(header, body, os.path.dirname(os.path.abspath(argv[1])))
    frame = base64.b64encode(pickle.dumps(outcomes, protocol=PROTOCOL))
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
