"""Frames: a protocol 5 pickle and its out-of-band buffers, serialized as one object.

Layout: `MAGIC`; little-endian u64s: the pickle's length, the number of buffers, then one
length per buffer; the pickle; each buffer, starting at a multiple of `ALIGN` bytes from the
frame's start (padded with zeros).

Standard library only: the runner imports this remotely.
"""

from __future__ import annotations

import pickle
import struct
from typing import TYPE_CHECKING, Any

from ..runner import STORE_FRAME_MAGIC

if TYPE_CHECKING:
    from collections.abc import Sequence

#: The first bytes of a frame (anything else is read as a plain pickle).
MAGIC = STORE_FRAME_MAGIC
#: Buffers start at multiples of this many bytes from the frame's start.
ALIGN = 64
#: One length field of the header.
_U64 = struct.Struct("<Q")
#: The fixed part of the header after `MAGIC`: the pickle's length, the number of buffers.
_COUNTS = struct.Struct("<QQ")


def frame_parts(meta: bytes, buffers: Sequence[pickle.PickleBuffer] = ()) -> list[Any]:
    """The pieces of the frame holding ``meta`` (a protocol 5 pickle) and its out-of-band
    ``buffers``, to be written one after another (the buffers are not copied)."""
    views = [b.raw() for b in buffers]
    head = MAGIC + struct.pack(f"<{2 + len(views)}Q", len(meta), len(views),
                               *(v.nbytes for v in views))
    parts: list[Any] = [head, meta]
    offset = len(head) + len(meta)
    for view in views:
        pad = -offset % ALIGN
        if pad:
            parts.append(bytes(pad))
        parts.append(view)
        offset += pad + view.nbytes
    return parts


def frame_size(parts: Sequence[Any]) -> int:
    """The number of bytes of a frame's `frame_parts`."""
    return sum(memoryview(p).nbytes for p in parts)


def split_frame(data: Any) -> tuple[memoryview, list[Any]]:
    """The pickle and the buffers of a frame (or of a plain pickle: no buffers).

    Buffers are views of ``data`` when it is writable (read from a file store: no copy),
    else writable copies: arrays unpickled from them are writable either way.
    """
    view = memoryview(data).cast("B")
    if bytes(view[:len(MAGIC)]) != MAGIC:
        return view, []
    at = len(MAGIC)
    meta_len, count = _COUNTS.unpack_from(view, at)
    at += _COUNTS.size
    lengths = struct.unpack_from(f"<{count}Q", view, at)
    at += _U64.size * count
    meta = view[at:at + meta_len]
    at += meta_len
    buffers: list[Any] = []
    for n in lengths:
        at += -at % ALIGN
        part = view[at:at + n]
        buffers.append(part if not view.readonly else bytearray(part))
        at += n
    if at != view.nbytes:
        raise ValueError(f"a stored frame is {view.nbytes:,} bytes, expected {at:,}")
    return meta, buffers


def loads_frame(data: Any) -> Any:
    """Unpickle a frame (or a plain pickle) with the standard unpickler."""
    meta, buffers = split_frame(data)
    return pickle.loads(meta, buffers=buffers)


def _loads_parts(meta: bytes, buffers: list[Any]) -> Any:
    """Rebuild an object from a pickle and its buffers (an argument kept inline)."""
    return pickle.loads(meta, buffers=buffers)
