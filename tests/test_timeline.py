"""The timeline of per-call timings: HTML rendered by a real browser, images, the command."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from concurrent.futures import Future
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from hog_executor import timeline
from hog_executor.cli import main

CHROMIUM = "/usr/bin/chromium"
T0 = 1_767_000_000.0  # an epoch time; records carry absolute times


def need(what: str, why: str) -> None:
    """Skip with one line, or fail in CI (CI=true), where everything must be installed."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs {what}: {why}")
    pytest.skip(why)


def make_records(workers: int = 3, per_worker: int = 4) -> list[dict[str, Any]]:
    """Calls one after another on each worker; each worker's first call builds the
    environment, the others find it cached; one call fails."""
    records = []
    for w in range(workers):
        t = T0 + 0.05 * w
        for k in range(per_worker):
            n = w * per_worker + k
            built = k == 0
            queued = t + 0.01 + 0.1 * (k + 1)
            env = queued + (1.5 if built else 0.05)
            started = env + 0.2 + 0.002
            finished = started + 0.3 + 0.01 * n
            records.append({
                "call": f"job{n:02d}:0", "description": "analysis.py:simulate",
                "worker": f"node{w}:{4000 + w}", "submitted": t, "sent": t + 0.01,
                "queued": queued, "env_ready": env, "env_built": built,
                "imported": env + 0.2, "started": started, "finished": finished,
                "received": finished + 0.04, "ok": n != 7,
            })
            t = finished + 0.04
    return records


class _Dom(HTMLParser):
    """The elements of a page, each as (tag, attributes)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def with_class(self, name: str) -> list[dict[str, str]]:
        return [a for _, a in self.elements if name in a.get("class", "").split()]


def parse(text: str) -> _Dom:
    dom = _Dom()
    dom.feed(text)
    return dom


# Appended to the page under test: after layout, every bar records its rendered box
# relative to its track, so that the dumped DOM shows what the browser drew.
MEASURE = """<script>
for (const bar of document.querySelectorAll('.hog-call')) {
  const b = bar.getBoundingClientRect(), t = bar.parentElement.getBoundingClientRect();
  bar.dataset.box = [b.left - t.left, b.width, t.width, b.height].map(Math.round).join(',');
}
</script>"""


def dump_dom(page: Path, tmp_path: Path) -> str:
    """The DOM of ``page`` after headless Chromium loaded and laid it out."""
    if not os.path.exists(CHROMIUM):
        need("chromium", f"{CHROMIUM} is missing: apt-get install chromium")
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--window-size=1200,900",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "</html>" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.parametrize("build", [True, False], ids=["env-built", "env-cached"])
def test_html_in_chromium(tmp_path: Path, build: bool) -> None:
    records = make_records()
    if not build:
        for r in records:
            r["env_built"] = False
    page = tmp_path / "timeline.html"
    text = timeline.timeline_html(records, title="12 calls")
    assert "http://" not in text and "https://" not in text and "<script" not in text
    page.write_text(text.replace("</body>", MEASURE + "</body>"), encoding="utf-8")

    dom = parse(dump_dom(page, tmp_path))
    bars = dom.with_class("hog-call")
    assert len(bars) == 12
    assert sorted(b["data-call"] for b in bars) == sorted(r["call"] for r in records)
    for bar in bars:  # laid out: a visible bar inside its track
        left, width, track, height = map(int, bar["data-box"].split(","))
        assert width >= 1 and height >= 5 and left >= 0 and left + width <= track + 1, bar
        assert "total:" in bar["title"] and "run:" in bar["title"]
    assert len(dom.with_class("hog-failed")) == 1
    assert len(dom.with_class("hog-track")) == 3  # one row per worker

    legend = dom.with_class("hog-legend")
    assert len(legend) == 1
    phases = {a["data-phase"] for a in dom.with_class("hog-key") if "data-phase" in a}
    assert {"send", "queue", "env_cached", "import", "wait", "run", "transfer"} <= phases
    assert ("env_build" in phases) is build
    labels = [timeline.PHASES[k].label for k in phases]
    assert all(label in text for label in labels)


@pytest.mark.slow
def test_png_through_matplotlib(tmp_path: Path) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        need("matplotlib", "writing a PNG timeline needs matplotlib")
    out = timeline.write_timeline(make_records(), tmp_path / "timeline.png")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 800 and height > 200
    svg = timeline.write_timeline(make_records(), tmp_path / "timeline.svg").read_text()
    assert "environment build" in svg and "seconds from the first submission" in svg


def test_image_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        timeline.write_timeline(make_records(), tmp_path / "t.png")
    with pytest.raises(ValueError, match=r"\.html"):
        timeline.write_timeline(make_records(), tmp_path / "t.txt")
    assert timeline.write_timeline(make_records(), tmp_path / "t.html").stat().st_size > 0


class _Timings:
    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def as_dict(self) -> dict[str, Any]:
        return dict(self.record)


def test_timings_of_and_show() -> None:
    records = make_records(2, 2)
    futures: list[Any] = []
    for i, r in enumerate(records):
        f: Future[Any] = Future()
        f.timings = _Timings(r) if i % 2 else r  # type: ignore[attr-defined]
        futures.append(f)
    futures += [Future(), object()]  # no timings: skipped
    assert timeline.timings_of(futures) == records
    # A record without the call's identity or outcome (as a bare timing object gives it):
    # the future fills them in.
    bare = {k: v for k, v in records[0].items() if k not in ("call", "description", "ok")}
    chunk: list[Any] = []
    for _ in range(3):
        g: Future[Any] = Future()
        g.timings = _Timings(bare)  # type: ignore[attr-defined]
        g.job_id = "abc"  # type: ignore[attr-defined]
        chunk.append(g)
    chunk[0].set_result(1)
    chunk[1].set_exception(ValueError())
    filled = timeline.timings_of(chunk)
    assert [(r["call"], r["ok"]) for r in filled] == [
        ("abc:0", True), ("abc:1", False), ("abc:2", None)]
    shown = timeline.show(futures, title="notebook")
    assert shown.records == records
    fragment = shown._repr_html_()
    assert fragment.startswith("<div class=\"hog-timeline\">") and "<html" not in fragment
    assert len(parse(fragment).with_class("hog-call")) == 4
    assert shown.html().startswith("<!DOCTYPE html>")


def test_phases_when_the_backend_knows_less() -> None:
    # A service that reports only when the call ran: sent -> started is queue wait.
    r = {"call": "t:0", "worker": None, "submitted": T0, "sent": T0 + 0.1, "queued": None,
         "env_ready": None, "env_built": None, "imported": None, "started": T0 + 2,
         "finished": T0 + 3, "received": T0 + 3.5, "ok": True}
    lay = timeline._layout([r])
    assert [p for p, *_ in lay.calls[0].phases] == ["send", "queue", "run", "transfer"]
    assert lay.rows[0].name == "job t"  # no worker: one row per job
    # A remote clock behind the client's: times never go backwards.
    skewed = dict(r, started=T0 - 5, finished=T0 + 1)
    phases = timeline._layout([skewed]).calls[0].phases
    assert all(stop > start for _, start, stop in phases)
    # Nothing but the submission: one thin bar, nothing dropped.
    lone = {"call": "u:0", "submitted": T0}
    assert len(parse(timeline.timeline_html([lone])).with_class("hog-call")) == 1


def test_chunk_reads_as_one_bar() -> None:
    """Calls of one chunk: each drawn from where the previous one finished, in one lane."""
    records, started = [], T0 + 1.0
    for i in range(5):
        records.append({"call": f"chunk:{i}", "worker": "n:1", "submitted": T0,
                        "sent": T0 + 0.01, "queued": T0 + 0.5, "env_ready": T0 + 0.6,
                        "env_built": False, "imported": T0 + 0.9, "started": started,
                        "finished": started + 0.2, "received": T0 + 2.5, "ok": True})
        started += 0.25
    lay = timeline._layout(records)
    calls = sorted(lay.calls, key=lambda c: c.index)
    assert {c.lane for c in calls} == {0}
    for a, b in itertools.pairwise(calls):
        assert a.hi == b.lo == a.moments["finished"]
    assert calls[-1].drawn[-1][0] == "transfer" and calls[0].drawn[0][0] == "send"
    # every phase of every call is still in its hover title
    assert all("queue wait:" in timeline._title(c) for c in calls)


def test_records_files(tmp_path: Path) -> None:
    records = make_records(1, 3)
    path = timeline.write_records(records, tmp_path / "t.jsonl")
    assert timeline.read_records(path) == records
    listed = tmp_path / "t.json"
    listed.write_text(json.dumps(records))
    assert timeline.read_records(listed) == records
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(records[0]) + "\n[1]\n")
    with pytest.raises(ValueError, match="line 2"):
        timeline.read_records(bad)


def test_hog_timeline_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = timeline.write_records(make_records(), tmp_path / "timings.jsonl")
    assert main(["timeline", str(src)]) == 0
    page = tmp_path / "timings.html"
    assert len(parse(page.read_text()).with_class("hog-call")) == 12
    assert "wrote" in capsys.readouterr().err
    out = tmp_path / "t.html"
    assert main(["timeline", str(src), "-o", str(out), "--title", "my run"]) == 0
    assert "<h1>my run</h1>" in out.read_text()

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["timeline", str(empty)]) == 1
    assert "no timing records" in capsys.readouterr().err
    assert main(["timeline", str(src), "-o", str(tmp_path / "t.txt")]) == 1
    assert ".html" in capsys.readouterr().err


def test_benchmark_tables_as_charts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A benchmark's printed table is recorded as numbers and drawn by benchmarks/plot.py."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        need("matplotlib", "benchmarks/plot.py needs matplotlib")
    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))
    import _common as c  # type: ignore[import-not-found]
    import plot  # type: ignore[import-not-found]

    monkeypatch.setattr(c, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setitem(c._record, "tables", [])
    c.header("bench_demo", "a demonstration")
    c.print_table([
        c.Row("baseline", [0.08], ratio="1.00x floor"),
        c.Row("ours", [0.09], ratio="1.07x floor", goal="<= 3x floor", met=True),
        c.Row("theirs", [0.5], ratio="6.34x floor; ours 5.91x faster",
              goal="ours >= 6x faster", met=False),
        c.Row("skipped", goal="<= 2x", note="no cluster"),
    ])
    record = json.loads((tmp_path / "results" / "demo.json").read_text())
    rows = record["tables"][0]["rows"]
    assert [(r["ratio"], r["goal"], r["direction"]) for r in rows] == [
        (1.0, None, None), (1.07, 3.0, "<="), (5.91, 6.0, ">="), (None, 2.0, "<=")]
    assert plot.main([str(tmp_path / "results" / "demo.json"), "--out", str(tmp_path)]) == 0
    svg = (tmp_path / "bench-demo.svg").read_text()
    assert "5.91" in svg and "goal missed" in svg and "skipped" not in svg
    capsys.readouterr()
