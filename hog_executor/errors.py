"""The error taxonomy: every error raised by hog-executor subclasses `HogError`."""

from __future__ import annotations

import concurrent.futures

__all__ = [
    "BackendError",
    "ConfigError",
    "DependencyError",
    "HogError",
    "MetadataError",
    "PayloadTooLargeError",
    "RemoteError",
    "RemoteProcessError",
    "RemoteTraceback",
    "SerializationError",
    "UndeclaredImportError",
    "WalltimeExceeded",
]


class HogError(Exception):
    """Base class of every error hog-executor raises."""


class ConfigError(HogError, ValueError):
    """An endpoint name, configuration key or value is unknown or invalid."""


class MetadataError(ConfigError):
    """A script's PEP 723 inline metadata block is malformed."""


class UndeclaredImportError(MetadataError):
    """A script imports a package its PEP 723 block does not declare.

    Raised at submit time, before anything is sent, when the package is installed on the
    client (so the script works here) but would be missing from the remote environment. A
    `MetadataError`: the block is incomplete. The message names each import, its
    distribution and the client's version, and the fix (``hog add script.py NAME``).

    Attributes:
        script: the script's path.
        missing: one `hog_executor.imports.Undeclared` per undeclared import (module,
            distribution, version, file, line).
    """

    def __init__(self, message: str, *, script: str = "",
                 missing: tuple[object, ...] = ()) -> None:
        super().__init__(message)
        self.script = script
        self.missing = tuple(missing)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_undeclared, (str(self), self.script, self.missing))


def _rebuild_undeclared(message: str, script: str,
                        missing: tuple[object, ...]) -> UndeclaredImportError:
    return UndeclaredImportError(message, script=script, missing=missing)


class SerializationError(HogError, TypeError):
    """A function, argument or result cannot be serialized."""


class PayloadTooLargeError(HogError, ValueError):
    """A serialized call is larger than the endpoint accepts.

    Attributes:
        size: the payload size in bytes.
        limit: the configured limit in bytes.
    """

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_payload_error, (str(self), self.size, self.limit))


def _rebuild_payload_error(message: str, size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(message, size=size, limit=limit)


class BackendError(HogError, RuntimeError):
    """A backend could not accept a submission (sbatch failed, service refused, ...)."""


class DependencyError(HogError, RuntimeError):
    """A future passed as an argument failed or was cancelled: the call never ran.

    ``__cause__`` is the upstream call's exception (its root cause when the upstream call
    failed for a dependency of its own; a ``CancelledError`` when it was cancelled).

    Attributes:
        upstream: the ``task_id`` of the upstream call, when known.
    """

    def __init__(self, message: str, *, upstream: str | None = None) -> None:
        super().__init__(message)
        self.upstream = upstream

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_dependency_error, (str(self), self.upstream))


def _rebuild_dependency_error(message: str, upstream: str | None) -> DependencyError:
    return DependencyError(message, upstream=upstream)


class RemoteProcessError(HogError, RuntimeError):
    """The remote process ended without producing a result.

    Attributes:
        returncode: the exit status of the bundle (negative: killed by that signal), or None.
        stderr_tail: the last lines the process wrote to stderr.
        state: a scheduler state when one is known (for example ``"OUT_OF_MEMORY"``).
        stdout: everything the process wrote to stdout.
        stderr: everything the process wrote to stderr.
    """

    def __init__(
        self,
        message: str,
        *,
        returncode: int | None = None,
        stderr_tail: str = "",
        state: str | None = None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.state = state
        self.stdout = stdout
        self.stderr = stderr

    def __str__(self) -> str:
        text = super().__str__()
        if self.stderr_tail:
            text += "\n--- stderr (last lines) ---\n" + self.stderr_tail
        return text


_TIMEOUT_BASES: tuple[type[BaseException], ...] = (TimeoutError,)
if concurrent.futures.TimeoutError is not TimeoutError:  # type: ignore[comparison-overlap]
    _TIMEOUT_BASES = (concurrent.futures.TimeoutError, TimeoutError)


class WalltimeExceeded(RemoteProcessError, *_TIMEOUT_BASES):  # type: ignore[misc]
    """The remote call ran longer than its ``walltime`` and was killed.

    Attributes:
        walltime: the limit in seconds, when known.
    """

    def __init__(self, message: str, *, walltime: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.walltime = walltime


class RemoteError(HogError):
    """A remote exception that could not be re-created on the client.

    Attributes:
        type_name: the qualified name of the remote exception's type.
        message: ``str()`` of the remote exception.
        traceback: the remote traceback text.
    """

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}\n\nRemote traceback:\n{self.traceback}"

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message, self.traceback))


class RemoteTraceback(Exception):
    """Carries a remote traceback; attached as ``__cause__`` of re-raised remote exceptions."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'
