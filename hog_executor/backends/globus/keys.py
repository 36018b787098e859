"""Configuration keys of the ``globus`` backend and how their values are checked."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from ...config import Key, positive_int
from ...errors import ConfigError

__all__ = ["GLOBUS_KEYS", "PASSTHROUGH", "resource_specification", "user_endpoint_config"]

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

#: Ports the Globus Compute result service listens on.
AMQP_PORTS = (443, 5671, 5672)


def _uuid(value: Any) -> str:
    if not isinstance(value, str) or not _UUID.match(value):
        raise ValueError(f"expected a Globus Compute endpoint UUID, got {value!r}")
    return value.lower()


def _json_table(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError("expected a table of values")
    if not all(isinstance(k, str) for k in value):
        raise ValueError("keys must be strings")
    try:
        return dict(json.loads(json.dumps(dict(value))))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"values must be JSON-compatible ({exc})") from None


def _json_value(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"expected a JSON-compatible value ({exc})") from None


def _resource_specification(value: Any) -> dict[str, Any]:
    table = _json_table(value)
    for name in ("num_nodes", "ranks_per_node", "num_ranks"):
        if name in table:
            positive_int(table[name])
    return table


def _amqp_port(value: Any) -> int:
    if isinstance(value, bool) or value not in AMQP_PORTS:
        raise ValueError(f"expected one of {', '.join(map(str, AMQP_PORTS))}, got {value!r}")
    return int(value)


def _sdk_executor(value: Any) -> Any:
    if isinstance(value, (str, bytes, int, float, dict, list)) or not all(
        hasattr(value, name) for name in ("submit", "register_function", "client")
    ):
        raise ValueError(
            "expected a globus_compute_sdk.Executor object, passed as a keyword argument "
            "(HogExecutor(..., globus_executor=Executor(client=...)))"
        )
    return value


def _retries(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10:
        raise ValueError(f"expected a whole number from 0 to 10, got {value!r}")
    return value


def _key(name: str, doc: str, check: Any, per_call: bool = False) -> Key:
    return Key(name, doc, check, per_call=per_call)


#: Keys copied into ``user_endpoint_config`` (the endpoint's template decides what they mean).
PASSTHROUGH = ("account", "partition", "qos", "scheduler_options")

GLOBUS_KEYS: dict[str, Key] = {
    k.name: k
    for k in [
        _key("endpoint", "the Globus Compute endpoint UUID", _uuid),
        _key("user_endpoint_config",
             "values for the endpoint's configuration template (JSON-compatible table)",
             _json_table, per_call=True),
        *(_key(name, f"user_endpoint_config value {name!r} (passed through)", _json_value,
               per_call=True) for name in PASSTHROUGH),
        _key("resource_specification",
             "MPI resources for each call (num_nodes, ranks_per_node, ...)",
             _resource_specification, per_call=True),
        _key("nodes", "with ranks > 1: nodes the call's ranks spread over (num_nodes of "
             "resource_specification; default 1)", positive_int, per_call=True),
        _key("ranks_per_node", "with ranks > 1: ranks on each node (ranks_per_node of "
             "resource_specification)", positive_int, per_call=True),
        _key("amqp_port", "port for results (443, 5671 or 5672)", _amqp_port),
        _key("retries", "times a call is sent again when the service refused its request "
             "(default 0; a call that ran and failed is never repeated)", _retries),
        _key("batch_size", "most calls sent in one request (default 128)", positive_int),
        _key("max_workers", "calls the endpoint runs at once (sizes map chunks; default 16)",
             positive_int),
        _key("globus_executor",
             "a globus_compute_sdk.Executor to submit through (keyword argument only)",
             _sdk_executor),
    ]
}


def user_endpoint_config(values: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``user_endpoint_config`` a call's resolved ``values`` ask for (None: none)."""
    config = dict(values.get("user_endpoint_config") or {})
    for name in PASSTHROUGH:
        if name in values:
            config[name] = values[name]
    return config or None


def resource_specification(values: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``resource_specification`` a call's resolved ``values`` ask for (None: none).

    A call with ``ranks > 1`` fills in ``num_ranks``, ``num_nodes`` and ``ranks_per_node``
    (what a ``GlobusMPIEngine`` endpoint reads to compose the task's launcher prefix) from
    ``ranks``, ``nodes`` and ``ranks_per_node``, besides any other values of the table.

    Raises:
        ConfigError: the table and the ranks keys disagree.
    """
    spec = dict(values.get("resource_specification") or {})
    ranks = values.get("ranks") or 1
    if ranks <= 1:
        return spec or None
    if spec.get("num_ranks") not in (None, ranks):
        raise ConfigError(f"resource_specification num_ranks = {spec['num_ranks']!r} disagrees "
                          f"with ranks = {ranks}: set one of them")

    def pick(key: str, name: str) -> Any:
        mine, theirs = values.get(key), spec.get(name)
        if mine is not None and theirs is not None and mine != theirs:
            raise ConfigError(f"resource_specification {name} = {theirs!r} disagrees with "
                              f"{key} = {mine!r}: set one of them")
        return mine if mine is not None else theirs

    per_node = pick("ranks_per_node", "ranks_per_node")
    nodes = pick("nodes", "num_nodes") or (math.ceil(ranks / per_node) if per_node else 1)
    spec.update(num_ranks=ranks, num_nodes=nodes,
                ranks_per_node=per_node or math.ceil(ranks / nodes))
    return spec
