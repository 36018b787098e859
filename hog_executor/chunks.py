"""Packing calls into chunks: pure functions of sizes and limits.

A chunk is the calls one job carries (one payload, one runner process). ``map`` aims for
`CHUNKS_PER_WORKER` chunks per worker; every chunk stays under the payload limit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["CALL_OVERHEAD", "CHUNKS_PER_WORKER", "HEADER_OVERHEAD", "chunk_size",
           "payload_header", "plan_chunks"]

#: Chunks per worker that ``map`` aims for when ``chunksize`` is None.
CHUNKS_PER_WORKER = 2
#: Bytes a chunk's payload holds besides the function and its calls (header, framing).
HEADER_OVERHEAD = 200
#: Bytes of framing each call adds to a chunk's payload.
CALL_OVERHEAD = 16


def chunk_size(calls: int, workers: int) -> int:
    """Calls per chunk so that ``calls`` make about `CHUNKS_PER_WORKER` chunks per worker."""
    return max(1, math.ceil(calls / (max(1, workers) * CHUNKS_PER_WORKER)))


def plan_chunks(sizes: Sequence[int], size: int, fixed: int, limit: int) -> list[list[int]]:
    """Group call indices into chunks of at most ``size`` calls.

    ``sizes`` are the calls' pickled sizes; ``fixed`` is what every chunk carries besides
    them (the function); a chunk is closed early when the next call would take it over
    ``limit`` bytes. Every chunk holds at least one call.
    """
    header = HEADER_OVERHEAD + fixed
    chunks: list[list[int]] = []
    current: list[int] = []
    current_bytes = header
    for i, item in enumerate(sizes):
        if current and (len(current) >= size or current_bytes + item + CALL_OVERHEAD > limit):
            chunks.append(current)
            current, current_bytes = [], header
        current.append(i)
        current_bytes += item + CALL_OVERHEAD
    chunks.append(current)
    return chunks


def payload_header(marker: str, script_name: str | None, by_value: bool, count: int,
                   threshold: int | bool, optional: bool,
                   prefetch: list[str] | None = None) -> bytes:
    """The JSON header line of a chunk's payload (read by `hog_executor.runner`)."""
    header: dict[str, Any] = {
        "marker": marker,
        "script": script_name,
        "by_value": by_value,
        "count": count,
    }
    if threshold:
        header["threshold"] = int(threshold)
        header["store_optional"] = optional
    if prefetch:
        header["prefetch"] = prefetch
    return json.dumps(header).encode()
