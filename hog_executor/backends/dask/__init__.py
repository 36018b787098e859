"""The ``dask`` backend: bundles run as bash subprocesses on the workers of a Dask cluster.

See ``docs/distributed.md``. :mod:`.worker` is what runs on the workers (stdlib only, shipped
by value); :mod:`.backend` ties it to the :class:`~hog_executor.backends.Backend` interface.
"""

from __future__ import annotations

from .backend import DaskBackend

__all__ = ["DaskBackend"]
