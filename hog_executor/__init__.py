"""hog-executor: run Python functions on HPC endpoints as ``concurrent.futures``.

Each call is wrapped in a self-contained bash bundle that rebuilds the environment declared
in the script's PEP 723 block with uv, runs on an endpoint (this machine, a Globus Compute
endpoint, a Slurm cluster, a Dask cluster) and comes back as a standard future.

Importing this package is cheap: everything is loaded on first use.

The path of one call::

    ex.submit(fn, *args)                                   executor.py   HogExecutor
      |  which script and environment: one decision        context.py    script_for, CallContext
      |  pickle the call; large objects into the store     payload.py, store.py
      |  pack calls into chunks, one job each              chunks.py
      v
    Job  (bash text: bundle head + payload line + tail)    bundle.py, runner.py
      |  a backend runs it somewhere                       backends/     local, slurm, globus, dask
      v
    Output  (returncode, stdout, stderr, state)            backends/__init__.py
      |  split off the result frame                        bundle.parse_output
      v
    Frame  (the runner's outcomes + the user's output)
      |  one outcome per call; no frame: process_error     results.py    JobResults
      v
    Outcome  (value | original exception | stored handle)  payload.decode_outcome
      |  settle the call's future                          futures.py    settle
      v
    HogFuture  (a concurrent.futures.Future)

A *call* is one function invocation; a *chunk* is the calls packed into one payload; a
*job* is what a backend runs: one bundle carrying one chunk. The constants both sides of
the wire agree on (frame markers, outcome tags, exit statuses) live in `runner`, the
standard-library-only program that runs remotely.
"""

from __future__ import annotations

from ._version import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing at runtime would double the package's import time
    from typing import Any

    from .checkpoint import Continue, RequeueLimitExceeded, stopping, time_is_up
    from .decorators import function, harness
    from .errors import (
        BackendError,
        ConfigError,
        DependencyError,
        HogError,
        MetadataError,
        PayloadTooLargeError,
        RemoteError,
        RemoteProcessError,
        SerializationError,
        UndeclaredImportError,
        WalltimeExceeded,
    )
    from .executor import HogExecutor
    from .futures import HogFuture

__all__ = [
    "BackendError",
    "ConfigError",
    "Continue",
    "DependencyError",
    "HogError",
    "HogExecutor",
    "HogFuture",
    "MetadataError",
    "PayloadTooLargeError",
    "RemoteError",
    "RemoteProcessError",
    "RequeueLimitExceeded",
    "SerializationError",
    "UndeclaredImportError",
    "WalltimeExceeded",
    "__version__",
    "function",
    "harness",
    "stopping",
    "time_is_up",
]

_LAZY = {
    "HogExecutor": "executor",
    "HogFuture": "futures",
    "function": "decorators",
    "harness": "decorators",
    **{name: "checkpoint" for name in ("Continue", "RequeueLimitExceeded", "stopping",
                                        "time_is_up")},
    **{
        name: "errors"
        for name in (
            "BackendError", "ConfigError", "DependencyError", "HogError", "MetadataError",
            "PayloadTooLargeError",
            "RemoteError", "RemoteProcessError", "SerializationError", "UndeclaredImportError",
            "WalltimeExceeded",
        )
    },
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hog_executor' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
