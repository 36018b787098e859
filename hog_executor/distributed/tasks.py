"""Reading the tasks a Dask worker hands over: plain calls, data moves, task trees.

Functions over ``dask._task_spec`` nodes, and the message distributed's worker expects
back for a task's outcome.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

try:
    from dask._task_spec import Alias, DataNode, GraphNode, NestedContainer, Task, TaskRef
except ImportError as exc:  # pragma: no cover - older dask
    raise ImportError(
        "hog_executor.distributed needs dask and distributed 2025.1 or later "
        "(pip install -U 'hog-executor[dask]')"
    ) from exc

#: Top-level packages whose functions need dask remotely.
DASK_PACKAGES = ("dask", "distributed")


def is_plain(value: Any, depth: int = 0) -> bool:
    """Whether a literal argument holds no graph node (so it needs no dask remotely)."""
    if isinstance(value, (GraphNode, TaskRef)):
        return False
    if depth > 3:
        return True
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(is_plain(v, depth + 1) for v in value.values())
    return True


def is_data(node: Any) -> bool:
    """Whether evaluating ``node`` only moves data around (runs no user function)."""
    if isinstance(node, (TaskRef, DataNode, Alias)):
        return True
    if isinstance(node, NestedContainer):
        return all(is_data(a) for a in node.args)
    if isinstance(node, GraphNode):
        return False
    return is_plain(node)


def value_of(arg: Any, data: Mapping[Any, Any]) -> Any:
    """The value of a simple argument, its dependencies taken from ``data``."""
    if isinstance(arg, TaskRef):
        return data[arg.key]
    if isinstance(arg, GraphNode):
        return arg({k: data[k] for k in arg.dependencies})
    return arg


def is_simple_call(task: Any) -> bool:
    """Whether ``task`` is one plain function applied to data (no dask needed remotely)."""
    if type(task) is not Task:
        return False
    module = getattr(task.func, "__module__", None) or ""
    if module.split(".", 1)[0] in DASK_PACKAGES:
        return False
    return all(is_data(a) for a in (*task.args, *task.kwargs.values()))


def user_functions(node: Any, out: list[Any], depth: int = 0) -> None:
    """Collect the functions of a task tree that are not dask's own (depth first)."""
    if depth > 50:
        return
    if isinstance(node, Task):
        module = getattr(node.func, "__module__", None) or ""
        if (not isinstance(node, NestedContainer) and callable(node.func)
                and module.split(".", 1)[0] not in (*DASK_PACKAGES, "builtins", "operator")
                and node.func not in out):
            out.append(node.func)
        for a in (*node.args, *node.kwargs.values()):
            user_functions(a, out, depth + 1)
    elif isinstance(node, (list, tuple, set, frozenset)):
        for a in node:
            user_functions(a, out, depth + 1)
    elif isinstance(node, dict):
        for a in node.values():
            user_functions(a, out, depth + 1)


def make_node_runner(module: str | None) -> Callable[..., Any]:
    def run_task_tree(node: Any, data: dict[Any, Any]) -> Any:
        return node(data)

    if module:
        run_task_tree.__module__ = module
    return run_task_tree


def task_message(start: float, delay: float, result: Any = None,
             error: BaseException | None = None) -> dict[str, Any]:
    """What distributed's ``_run_task_simple`` returns to the worker, for one outcome."""
    stop = time.time()
    msg: dict[str, Any]
    if error is None:
        from dask.sizeof import sizeof

        msg = {
            "op": "task-finished",
            "status": "OK",
            "result": result,
            "nbytes": sizeof(result),
            "type": type(result) if result is not None else None,
        }
    else:
        from distributed.core import error_message

        msg = dict(error_message(error))
        msg["op"] = "task-erred"
        msg["actual_exception"] = error
    msg["start"] = start + delay
    msg["stop"] = stop + delay
    msg["thread"] = threading.get_ident()
    return msg
