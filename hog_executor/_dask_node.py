"""The remote side of a Dask task that is more than one plain function call.

Kept apart so that running it needs only ``dask`` (added to the call's environment), never
``distributed`` or the client's modules.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_node"]


def run_node(node: Any, data: dict[Any, Any]) -> Any:
    """Evaluate a ``dask._task_spec`` node with the values of its dependencies."""
    return node(data)
