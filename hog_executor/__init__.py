"""hog-executor: run Python functions on HPC endpoints as ``concurrent.futures``.

Each call is wrapped in a self-contained bash bundle that rebuilds the environment declared
in the script's PEP 723 block with uv, runs on an endpoint (this machine, a Globus Compute
endpoint, a Slurm cluster, a Dask cluster) and comes back as a standard future.

Importing this package is cheap: everything is loaded on first use.
"""

from __future__ import annotations

from ._version import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing at runtime would double the package's import time
    from typing import Any

    from .decorators import function, harness
    from .errors import (
        BackendError,
        ConfigError,
        HogError,
        MetadataError,
        PayloadTooLargeError,
        RemoteError,
        RemoteProcessError,
        SerializationError,
        WalltimeExceeded,
    )
    from .executor import HogExecutor, HogFuture

__all__ = [
    "BackendError",
    "ConfigError",
    "HogError",
    "HogExecutor",
    "HogFuture",
    "MetadataError",
    "PayloadTooLargeError",
    "RemoteError",
    "RemoteProcessError",
    "SerializationError",
    "WalltimeExceeded",
    "__version__",
    "function",
    "harness",
]

_LAZY = {
    "HogExecutor": "executor",
    "HogFuture": "executor",
    "function": "decorators",
    "harness": "decorators",
    **{
        name: "errors"
        for name in (
            "BackendError", "ConfigError", "HogError", "MetadataError", "PayloadTooLargeError",
            "RemoteError", "RemoteProcessError", "SerializationError", "WalltimeExceeded",
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
