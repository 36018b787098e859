"""``client.map`` through HogExecutor: a Dask cluster whose workers run tasks as hog calls.

`HogCluster` is a ``distributed.LocalCluster`` whose workers hand their tasks to a
`HogTaskExecutor`: each task becomes one call on the endpoint (its own process, its own uv
environment, the endpoint's machines), while the scheduler, the dashboard, ``as_completed``,
``gather``, ``scatter``, retries and annotations stay those of ``distributed``.

Importing this module imports ``distributed``; ``import hog_executor`` does not.
"""

from __future__ import annotations

from .cluster import EXECUTOR_NAME, HogCluster
from .executor import HogTaskExecutor

__all__ = ["EXECUTOR_NAME", "HogCluster", "HogTaskExecutor"]
