"""Where the time of calls goes: per-call timing records drawn as a timeline.

Each call's future carries a timing record (``future.timings``); `timings_of` collects them.
A record is a plain dict; times are seconds since the epoch, None where the backend cannot
know that moment::

    {"call": "<job id>:<index>", "description": "script.py:fn", "worker": "host:pid",
     "submitted": t, "sent": t, "queued": t, "env_ready": t, "env_built": True,
     "imported": t, "started": t, "finished": t, "received": t, "ok": True}

`timeline_html` draws them as one standalone HTML page (no network, no script): one row per
worker (per job when the worker is unknown), one bar per call, coloured by phase, with the
exact durations in each bar's hover title. `write_timeline` writes that page, or a PNG or
SVG image through matplotlib. In a notebook, ``show(futures)`` displays the timeline.

The phases of a call, between consecutive known moments:

| phase | span |
|---|---|
| sending | submitted → sent: the client pickled the call, the backend took it |
| queue wait | sent → queued (or → started when the backend cannot tell) |
| environment build | queued → env_ready, when the environment was built for this call |
| environment (cached) | queued → env_ready, when it was found already built |
| import | env_ready → imported: the runner imported the script |
| waiting | imported → started: reading arguments; in a chunk, earlier calls |
| run | started → finished: the function itself |
| result transfer | finished → received: from the end of the call to the client |

Where a moment in between is unknown, the span is drawn as *start-up* or *remote* (not
broken down). Calls of one chunk share their process: each call's bar starts where the
previous call of its chunk finished, so the chunk reads as one bar cut into calls; the hover
title still gives every phase of the call. Only the standard library is imported here;
matplotlib is imported when an image is written.
"""

from __future__ import annotations

import html
import itertools
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MOMENTS",
    "PHASES",
    "Phase",
    "Timeline",
    "read_records",
    "show",
    "timeline_html",
    "timings_of",
    "write_records",
    "write_timeline",
]

#: The moments of a record, in the order they happen.
MOMENTS = ("submitted", "sent", "queued", "env_ready", "imported", "started", "finished",
           "received")


@dataclass(frozen=True)
class Phase:
    """One kind of segment of a call's bar.

    Attributes:
        key: short name, also the CSS class suffix (``p-<key>``).
        label: the legend's text.
        colour: fill colour (``#rrggbb``).
        meaning: what the span is, shown when hovering over the legend.
    """

    key: str
    label: str
    colour: str
    meaning: str


#: Every phase, in legend order.
PHASES: dict[str, Phase] = {p.key: p for p in (
    Phase("send", "sending", "#b8b8b8",
          "submitted → sent: the client pickled the call and handed its job to the backend"),
    Phase("queue", "queue wait", "#f0e442",
          "sent → queued (or started): waiting for the scheduler or a free worker"),
    Phase("startup", "start-up (not broken down)", "#8e9aa6",
          "from the queue to the call's start, where the backend reports no moment between"),
    Phase("env_build", "environment build", "#d55e00",
          "queued → env_ready: the environment was built for this call"),
    Phase("env_cached", "environment (cached)", "#f3c78f",
          "queued → env_ready: the environment was found already built"),
    Phase("env", "environment", "#e69f00",
          "queued → env_ready: found or built, the backend did not say which"),
    Phase("import", "import", "#cc79a7",
          "env_ready → imported: the runner imported the script"),
    Phase("wait", "waiting", "#e3e3e3",
          "imported → started: reading the arguments and, in a chunk, earlier calls"),
    Phase("run", "run", "#009e73",
          "started → finished: the function itself"),
    Phase("transfer", "result transfer", "#56b4e9",
          "finished → received: the result travelling back to the client"),
    Phase("remote", "remote (not broken down)", "#5f6b77",
          "a remote span whose start or end the backend does not report"),
)}

# The moment before each one, and the phase of the span between them when both are known.
_NATURAL = {"sent": ("submitted", "send"), "queued": ("sent", "queue"),
            "env_ready": ("queued", "env"), "imported": ("env_ready", "import"),
            "started": ("imported", "wait"), "finished": ("started", "run"),
            "received": ("finished", "transfer")}
# Drawing order when bars overlap: what a worker does lies above the waits.
_LAYER = {"send": 1, "queue": 1, "wait": 2, "transfer": 2, "startup": 3, "remote": 3,
          "env": 4, "env_build": 4, "env_cached": 4, "import": 4, "run": 5}
#: Bars a row stacks at most; beyond that, overlapping bars share lanes.
MAX_LANES = 24
_EPS = 1e-6


# -- records ------------------------------------------------------------------------------------

def _as_record(obj: Any) -> dict[str, Any] | None:
    """A record from a dict or an object with ``as_dict()``; None for anything else."""
    if isinstance(obj, Mapping):
        return dict(obj)
    as_dict = getattr(obj, "as_dict", None)
    if callable(as_dict):
        value = as_dict()
        if isinstance(value, Mapping):
            return dict(value)
    return None


def _ok(future: Any) -> bool | None:
    """Whether a done future has a value (None: not done, or not a future)."""
    try:
        if not future.done():
            return None
        return not future.cancelled() and future.exception(timeout=0) is None
    except Exception:
        return None


def _from_future(future: Any, seen: dict[str, int]) -> dict[str, Any] | None:
    """A future's timing record, with what the future itself knows filled in where the
    record lacks it: the call id (``<job id>:<index>``, counting the futures of each job in
    the order given), the description of its job while it is known, and ``ok``."""
    record = _as_record(getattr(future, "timings", None))
    if record is None:
        return None
    job = getattr(future, "job_id", None)
    if isinstance(job, str):
        index = seen.get(job, 0)
        seen[job] = index + 1
        record.setdefault("call", f"{job}:{index}")
    results = getattr(future, "_results", None)
    description = getattr(getattr(results, "job", None), "description", None)
    if isinstance(description, str):
        record.setdefault("description", description)
    if "ok" not in record:
        record["ok"] = _ok(future)
    return record


def timings_of(futures: Iterable[Any]) -> list[dict[str, Any]]:
    """The timing records of ``futures`` (`HogFuture` objects), as plain dicts.

    Each future's ``timings`` is an object with an ``as_dict()`` method, or a dict. Futures
    without timings (a plain ``concurrent.futures.Future``, a call not yet sent) are skipped.
    What the record leaves out and the future knows is added: ``call`` (the job id and the
    call's place among the given futures of that job, so pass a ``map``'s futures in
    order), ``description`` and ``ok``.
    """
    seen: dict[str, int] = {}
    return [r for f in futures if (r := _from_future(f, seen)) is not None]


def _records(items: Iterable[Any]) -> list[dict[str, Any]]:
    """Records from records, timing objects or futures, mixed."""
    out = []
    seen: dict[str, int] = {}
    for item in items:
        record = _as_record(item)
        if record is None:
            record = _from_future(item, seen)
        if record is not None:
            out.append(record)
    return out


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records from a JSON-lines file (one record per line), or a file holding one JSON list.

    Raises:
        ValueError: a line is not a JSON object.
    """
    text = Path(path).read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        data = json.loads(stripped)
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError(f"{path}: expected a list of JSON objects")
        return data
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, line {number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object (one record)")
        records.append(record)
    return records


def write_records(records: Iterable[Any], path: str | Path) -> Path:
    """Write records (or futures, see `timings_of`) as JSON lines, for ``hog timeline``."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for record in _records(records):
            f.write(json.dumps(record, default=str) + "\n")
    return path


# -- layout -------------------------------------------------------------------------------------

def _time(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _phase_of(prev: str, end: str, env_built: Any) -> str:
    """The phase of the span from moment ``prev`` to moment ``end`` (nothing known between)."""
    natural, phase = _NATURAL[end]
    if prev == natural:
        if phase == "env" and env_built is not None:
            return "env_build" if env_built else "env_cached"
        return phase
    if end == "queued" or (end == "started" and prev in ("submitted", "sent")):
        return "queue"
    if end == "started" and prev == "env_ready":
        return "import"
    if end in ("finished", "received"):
        return "remote"
    return "startup"


Segment = tuple[str, float, float]  # phase key, start, end (seconds since the epoch)


@dataclass
class _Call:
    record: dict[str, Any]
    call: str
    job: str
    index: int
    row: str
    moments: dict[str, float]
    phases: list[Segment]
    lo: float = 0.0
    hi: float = 0.0
    drawn: list[Segment] = field(default_factory=list)
    lane: int = 0

    @property
    def ok(self) -> bool:
        return self.record.get("ok") is not False


@dataclass
class _Row:
    name: str
    calls: list[_Call]
    lanes: int


@dataclass
class _Layout:
    calls: list[_Call]
    rows: list[_Row]
    t0: float
    span: float
    skipped: int


def _make_call(record: dict[str, Any], position: int) -> _Call | None:
    known: list[tuple[str, float]] = []
    for key in MOMENTS:
        t = _time(record.get(key))
        if t is None:
            continue
        if known and t < known[-1][1]:
            t = known[-1][1]  # clocks of two machines: never draw time backwards
        known.append((key, t))
    if not known:
        return None
    phases: list[Segment] = []
    for (prev, start), (end, stop) in itertools.pairwise(known):
        if stop <= start:
            continue
        phase = _phase_of(prev, end, record.get("env_built"))
        if phases and phases[-1][0] == phase and phases[-1][2] == start:
            phases[-1] = (phase, phases[-1][1], stop)
        else:
            phases.append((phase, start, stop))
    call = str(record.get("call") or f"call {position}")
    job, sep, tail = call.rpartition(":")
    if not sep:
        job, tail = call, ""
    index = int(tail) if tail.isdigit() else position
    worker = record.get("worker")
    row = str(worker) if worker not in (None, "") else f"job {job}"
    moments = dict(known)
    return _Call(record, call, job, index, row, moments, phases,
                 lo=known[0][1], hi=known[-1][1])


def _clip(segments: list[Segment], lo: float, hi: float) -> list[Segment]:
    out = []
    for phase, start, stop in segments:
        start, stop = max(start, lo), min(stop, hi)
        if stop > start:
            out.append((phase, start, stop))
    return out


def _follows(a: _Call, b: _Call) -> bool:
    """Whether ``b`` ran after ``a`` in the same process (both times known)."""
    fin, start = a.moments.get("finished"), b.moments.get("started")
    return fin is not None and start is not None and start >= fin - _EPS


def _layout(records: Sequence[dict[str, Any]]) -> _Layout:
    calls = []
    skipped = 0
    for position, record in enumerate(records):
        c = _make_call(record, position)
        if c is None:
            skipped += 1
        else:
            calls.append(c)
    # Calls of one chunk share a process: each is drawn from the end of the one before.
    chunks: dict[tuple[str, str], list[_Call]] = {}
    for c in calls:
        chunks.setdefault((c.row, c.job), []).append(c)
    for members in chunks.values():
        members.sort(key=lambda c: (c.moments.get("started", math.inf), c.index))
        for a, b in itertools.pairwise(members):
            if _follows(a, b):
                a.hi = a.moments["finished"]
                b.lo = a.moments["finished"]
    for c in calls:
        c.hi = max(c.hi, c.lo)
        c.drawn = _clip(c.phases, c.lo, c.hi)
    by_row: dict[str, list[_Call]] = {}
    for c in sorted(calls, key=lambda c: (c.lo, c.index)):
        by_row.setdefault(c.row, []).append(c)
    rows = []
    for name, members in by_row.items():
        ends: list[float] = []
        for c in members:
            free = [i for i, end in enumerate(ends) if end <= c.lo + _EPS]
            if free:
                c.lane = free[0]
                ends[c.lane] = c.hi
            elif len(ends) < MAX_LANES:
                c.lane = len(ends)
                ends.append(c.hi)
            else:  # overlapping bars share the lane that frees first
                c.lane = min(range(len(ends)), key=ends.__getitem__)
                ends[c.lane] = max(ends[c.lane], c.hi)
        rows.append(_Row(name, members, max(1, len(ends))))
    t0 = min((min(c.moments.values()) for c in calls), default=0.0)
    end = max((c.hi for c in calls), default=t0)
    return _Layout(calls, rows, t0, max(end - t0, _EPS), skipped)


# -- formatting ---------------------------------------------------------------------------------

def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 100:
        return f"{seconds:.3f} s"
    return f"{seconds:.1f} s"


def _ticks(span: float) -> tuple[list[float], int]:
    """Tick positions (seconds from the start) and the decimals their labels need."""
    raw = span / 6
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    count = int(span / step + 1e-9)
    return [i * step for i in range(count + 1)], decimals


def _title(c: _Call) -> str:
    r = c.record
    lines = [c.call + (f"  {r['description']}" if r.get("description") else "")]
    if r.get("worker"):
        lines.append(f"worker: {r['worker']}")
    known = [m for m in MOMENTS if m in c.moments]
    lines.append(f"total: {_duration(c.moments[known[-1]] - c.moments[known[0]])} "
                 f"({known[0]} → {known[-1]})")
    for phase, start, stop in c.phases:
        lines.append(f"{PHASES[phase].label}: {_duration(stop - start)}")
    if r.get("ok") is False:
        lines.append("FAILED")
    return "\n".join(lines)


def _phase_totals(calls: Sequence[_Call]) -> list[tuple[Phase, list[float]]]:
    spans: dict[str, list[float]] = {}
    for c in calls:
        per: dict[str, float] = {}
        for phase, start, stop in c.phases:
            per[phase] = per.get(phase, 0.0) + stop - start
        for phase, seconds in per.items():
            spans.setdefault(phase, []).append(seconds)
    return [(p, spans[k]) for k, p in PHASES.items() if k in spans]


# -- HTML ---------------------------------------------------------------------------------------

_LANE = 14  # pixels per lane
_CSS = """
.hog-timeline{font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
 min-width:640px;margin:8px}
.hog-timeline h1{font-size:18px;margin:0 0 4px}
.hog-timeline .hog-summary{margin:0 0 8px;color:#555}
.hog-timeline .hog-legend{display:flex;flex-wrap:wrap;gap:4px 14px;margin:0 0 10px}
.hog-timeline .hog-key{display:inline-flex;align-items:center;gap:5px;cursor:help}
.hog-timeline .hog-key i{display:inline-block;width:14px;height:10px;border:1px solid #0003}
.hog-timeline .hog-key.hog-failed-key i{background:#fff;border:2px solid #c00}
.hog-timeline .hog-chart{display:grid;grid-template-columns:minmax(8em,max-content) 1fr;
 border-top:1px solid #ccc}
.hog-timeline .hog-label{padding:3px 8px 3px 0;border-bottom:1px solid #eee;white-space:nowrap;
 overflow:hidden;text-overflow:ellipsis;max-width:22em}
.hog-timeline .hog-label small{color:#777}
.hog-timeline .hog-track{position:relative;border-bottom:1px solid #eee;
 border-left:1px solid #ccc;margin-right:16px}
.hog-timeline .hog-axis{position:relative;height:20px;border-left:1px solid #ccc;
 margin-right:16px}
.hog-timeline .hog-axis span{position:absolute;top:2px;transform:translateX(-50%);
 color:#555;font-size:11px;white-space:nowrap}
.hog-timeline .hog-axis span:first-child{transform:none}
.hog-timeline .hog-grid{position:absolute;top:0;bottom:0;width:0;
 border-left:1px dashed #e4e4e4}
.hog-timeline .hog-call{position:absolute;height:10px;min-width:1px}
.hog-timeline .hog-call i{position:absolute;top:0;bottom:0;min-width:1px}
.hog-timeline .hog-call.hog-failed{outline:2px solid #c00;outline-offset:0;z-index:6}
.hog-timeline .hog-call:hover{outline:1px solid #000;z-index:7}
.hog-timeline table{border-collapse:collapse;margin-top:14px}
.hog-timeline td,.hog-timeline th{padding:2px 10px;border-bottom:1px solid #eee;
 text-align:right}
.hog-timeline td:first-child,.hog-timeline th:first-child{text-align:left}
"""


def _css() -> str:
    phases = "".join(f".hog-timeline .p-{p.key}{{background:{p.colour};"
                     f"z-index:{_LAYER[p.key]}}}\n" for p in PHASES.values())
    return _CSS + phases


def _pct(value: float) -> str:
    return f"{value * 100:.4f}".rstrip("0").rstrip(".") + "%"


def _fragment(records: Sequence[dict[str, Any]], title: str) -> str:
    """The timeline as an HTML fragment: a ``div.hog-timeline`` with its own scoped style."""
    lay = _layout(records)
    esc = html.escape
    out = [f"<div class=\"hog-timeline\"><style>{_css()}</style>", f"<h1>{esc(title)}</h1>"]
    failed = sum(not c.ok for c in lay.calls)
    summary = (f"{len(lay.calls)} call{'s' * (len(lay.calls) != 1)} on {len(lay.rows)} "
               f"row{'s' * (len(lay.rows) != 1)} over {_duration(lay.span)} from the first "
               f"submission")
    if failed:
        summary += f"; {failed} failed (outlined in red)"
    if lay.skipped:
        summary += f"; {lay.skipped} record(s) without any time left out"
    out.append(f"<p class=\"hog-summary\">{esc(summary)}</p>")

    totals = _phase_totals(lay.calls)
    out.append("<div class=\"hog-legend\">")
    for phase, _ in totals:
        out.append(f"<span class=\"hog-key\" data-phase=\"{phase.key}\" "
                   f"title=\"{esc(phase.meaning)}\"><i class=\"p-{phase.key}\"></i>"
                   f"{esc(phase.label)}</span>")
    if failed:
        out.append("<span class=\"hog-key hog-failed-key\" title=\"the call raised or its "
                   "process failed\"><i></i>failed</span>")
    out.append("</div>")

    ticks, decimals = _ticks(lay.span)
    grid = "".join(f"<b class=\"hog-grid\" style=\"left:{_pct(t / lay.span)}\"></b>"
                   for t in ticks)
    out.append("<div class=\"hog-chart\"><div class=\"hog-label\"><small>seconds from the "
               "first submission</small></div><div class=\"hog-axis\">")
    out.extend(f"<span style=\"left:{_pct(t / lay.span)}\">{t:.{decimals}f} s</span>"
               for t in ticks)
    out.append("</div>")
    for row in lay.rows:
        n = len(row.calls)
        out.append(f"<div class=\"hog-label\" title=\"{esc(row.name)}\">{esc(row.name)}<br>"
                   f"<small>{n} call{'s' * (n != 1)}</small></div>")
        out.append(f"<div class=\"hog-track\" style=\"height:{row.lanes * _LANE + 4}px\">"
                   + grid)
        for c in row.calls:
            width = c.hi - c.lo
            cls = "hog-call" if c.ok else "hog-call hog-failed"
            out.append(f"<div class=\"{cls}\" data-call=\"{esc(c.call)}\" "
                       f"title=\"{esc(_title(c))}\" style=\"left:"
                       f"{_pct((c.lo - lay.t0) / lay.span)};width:{_pct(width / lay.span)};"
                       f"top:{c.lane * _LANE + 3}px\">")
            for key, start, stop in c.drawn:
                left = (start - c.lo) / width if width > 0 else 0.0
                out.append(f"<i class=\"p-{key}\" style=\"left:{_pct(left)};"
                           f"width:{_pct((stop - start) / width if width > 0 else 1.0)}\">"
                           "</i>")
            out.append("</div>")
        out.append("</div>")
    out.append("</div>")

    if totals:
        out.append("<table class=\"hog-phases\"><tr><th>phase</th><th>calls</th>"
                   "<th>median</th><th>max</th><th>total</th><th>share</th></tr>")
        grand = sum(sum(s) for _, s in totals) or 1.0
        for phase, spans in totals:
            out.append(f"<tr><td><span class=\"hog-key\"><i class=\"p-{phase.key}\"></i>"
                       f"{esc(phase.label)}</span></td><td>{len(spans)}</td>"
                       f"<td>{_duration(statistics.median(spans))}</td>"
                       f"<td>{_duration(max(spans))}</td><td>{_duration(sum(spans))}</td>"
                       f"<td>{100 * sum(spans) / grand:.1f}%</td></tr>")
        out.append("</table>")
    out.append("</div>")
    return "\n".join(out)


def timeline_html(records: Iterable[Any], title: str = "hog-executor timeline") -> str:
    """A standalone HTML page drawing ``records`` as a timeline.

    Args:
        records: timing records (dicts), objects with ``as_dict()``, or futures carrying
            ``timings``; anything else is skipped.
        title: the page's title and heading.

    Returns:
        str: the page. It needs no network and runs no script: the bars are ``div``
        elements, one ``div.hog-call`` per call with its id in ``data-call`` and its phases
        in the hover title.
    """
    body = _fragment(_records(records), title)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title></head>\n<body>\n{body}\n</body></html>\n")


# -- images -------------------------------------------------------------------------------------

_IMAGE_SUFFIXES = (".png", ".svg", ".pdf")


def _draw_image(records: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        raise ImportError(f"writing {path.name} needs matplotlib: pip install matplotlib "
                          "(or write an .html timeline, which needs nothing)") from None
    lay = _layout(records)
    lanes = sum(r.lanes for r in lay.rows)
    lane_h = 0.22
    fig = Figure(figsize=(11, 1.6 + max(lanes, 1) * lane_h + 0.12 * len(lay.rows)),
                 layout="constrained")
    ax = fig.add_subplot()
    y = 0.0
    centres, names = [], []
    bars: dict[str, list[tuple[float, float, float]]] = {}
    failed: list[tuple[float, float, float]] = []
    for row in lay.rows:
        top = y
        for c in row.calls:
            lane_y = top + c.lane
            for phase, start, stop in c.drawn:
                bars.setdefault(phase, []).append((start - lay.t0, stop - start, lane_y))
            if not c.ok:
                failed.append((c.lo - lay.t0, c.hi - c.lo, lane_y))
        y += row.lanes + 0.5
        centres.append(top + (row.lanes - 1) / 2)
        names.append(f"{row.name} ({len(row.calls)})")
        ax.axhline(y - 0.75, color="#dddddd", linewidth=0.6)
    for key in sorted(bars, key=_LAYER.__getitem__):
        by_lane: dict[float, list[tuple[float, float]]] = {}
        for start, width, lane_y in bars[key]:
            by_lane.setdefault(lane_y, []).append((start, max(width, lay.span / 2000)))
        for lane_y, spans in by_lane.items():
            ax.broken_barh(spans, (lane_y - 0.4, 0.8), facecolors=PHASES[key].colour,
                           linewidth=0)
    for start, width, lane_y in failed:
        ax.broken_barh([(start, width)], (lane_y - 0.45, 0.9), facecolors="none",
                       edgecolors="#cc0000", linewidth=1.2)
    ax.set_yticks(centres, names, fontsize=8)
    ax.set_ylim(max(y - 0.5, 1.0), -1.0)
    ax.set_xlim(0, lay.span * 1.01)
    ax.set_xlabel("seconds from the first submission")
    ax.grid(axis="x", color="#e4e4e4", linestyle="--", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_title(f"{title}: {len(lay.calls)} calls over {_duration(lay.span)}", fontsize=11)
    handles = [Patch(facecolor=p.colour, label=p.label) for p, _ in _phase_totals(lay.calls)]
    if failed:
        handles.append(Patch(facecolor="none", edgecolor="#cc0000", label="failed"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5) or 1,
               fontsize=8, frameon=False)
    metadata = {"Date": None} if path.suffix.lower() == ".svg" else None
    fig.savefig(path, dpi=150, metadata=metadata)


def write_timeline(records: Iterable[Any], path: str | Path,
                   title: str = "hog-executor timeline") -> Path:
    """Write a timeline of ``records`` to ``path``: ``.html``, or ``.png``/``.svg``/``.pdf``.

    Records are as for `timeline_html` (dicts, timing objects or futures). HTML needs only
    the standard library; images need matplotlib.

    Raises:
        ImportError: an image was asked for and matplotlib is not installed (the message
            says ``pip install matplotlib``).
        ValueError: the file name ends in something else.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    items = _records(records)
    if suffix in (".html", ".htm"):
        path.write_text(timeline_html(items, title), encoding="utf-8")
    elif suffix in _IMAGE_SUFFIXES:
        _draw_image(items, path, title)
    else:
        raise ValueError(f"cannot write a timeline as {path.name!r}: name it .html, .png, "
                         ".svg or .pdf")
    return path


# -- notebooks ----------------------------------------------------------------------------------

class Timeline:
    """A timeline that Jupyter displays (``_repr_html_``); made by `show`.

    Attributes:
        records: the timing records drawn.
        title: the heading.
    """

    def __init__(self, records: list[dict[str, Any]], title: str) -> None:
        self.records = records
        self.title = title

    def html(self) -> str:
        """The standalone page (see `timeline_html`)."""
        return timeline_html(self.records, self.title)

    def save(self, path: str | Path) -> Path:
        """Write it to ``path`` (see `write_timeline`)."""
        return write_timeline(self.records, path, self.title)

    def _repr_html_(self) -> str:
        return _fragment(self.records, self.title)

    def __repr__(self) -> str:
        return f"<Timeline {self.title!r}: {len(self.records)} calls>"


def show(futures: Iterable[Any], title: str = "hog-executor timeline") -> Timeline:
    """A `Timeline` of ``futures`` for a notebook: ``show(futures)`` as a cell's last line.

    ``futures`` may also be timing records; futures without timings are skipped.
    """
    return Timeline(_records(futures), title)
