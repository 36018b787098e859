"""Draw the recorded benchmark tables as charts: one SVG per benchmark.

Each benchmark records its tables in ``.bench/results/<bench>.json`` (see ``_common.py``);
this draws each file as horizontal bars of the ratio of every row against its baseline, with
the row's goal marked across its bar, into ``docs/images/bench-<bench>.svg``. Green: goal
met; red: missed; blue: no goal; grey: a baseline (1x).

    python benchmarks/plot.py                       # every file in .bench/results
    python benchmarks/plot.py .bench/results/map.json --out /tmp/charts

Needs matplotlib. Not a benchmark (``nox -s bench`` runs it after them). The SVG files are
reproducible: the same figures give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c

OUT_DIR = c.REPO_ROOT / "docs" / "images"

TIMES = "\u00d7"  # the multiplication sign
COLOURS = {True: "#009e73", False: "#d55e00", "none": "#56b4e9", "baseline": "#b8b8b8"}


def chart_path(out_dir: Path, bench: str) -> Path:
    return out_dir / f"bench-{bench.replace('_', '-')}.svg"


def _label(text: str, width: int = 34) -> str:
    lines = textwrap.wrap(text.replace("`", ""), width, break_long_words=False) or [""]
    return "\n".join(lines[:2]) + ("…" if len(lines) > 2 else "")


def _times(text: str) -> str:
    """``<= 2x pool`` with the signs for at most and times."""
    return re.sub(r"(\d)x\b", "\\1" + TIMES, text.replace("<=", "\u2264").replace(">=", "\u2265"))


def _tick(value: float, _: Any = None) -> str:
    if value >= 1e5:
        return f"1e{round(math.log10(value))}{TIMES}"
    return f"{value:,g}{TIMES}"


def plot(result: dict[str, Any], path: Path) -> Path:
    """Draw one benchmark's record (the JSON of ``_common.record_table``) into ``path``."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    rows: list[dict[str, Any] | None] = []
    for table in result.get("tables", []):
        shown = [r for r in table["rows"] if r.get("ratio") is not None]
        if shown:
            if rows:
                rows.append(None)  # a gap between tables
            rows.extend(shown)
    if not rows:
        raise ValueError(f"{result.get('bench')}: no row has a ratio to draw")
    drawn = [r for r in rows if r is not None]
    values = [r["ratio"] for r in drawn] + [r["goal"] for r in drawn if r.get("goal")]
    log = max(values) / max(min(values), 1e-12) >= 30
    low = min(values) / 3 if log else 0.0

    with matplotlib.rc_context({"svg.hashsalt": "hog-bench", "svg.fonttype": "none",
                                "font.size": 9}):
        fig = Figure(figsize=(7.2, 1.3 + 0.42 * len(rows)), layout="constrained")
        canvas = FigureCanvasAgg(fig)  # measures the texts below
        fig.patch.set_facecolor("white")
        ax = fig.add_subplot()
        ticks, labels, notes = [], [], []
        for y, r in enumerate(rows):
            if r is None:
                continue
            baseline = r.get("goal") is None and abs(r["ratio"] - 1) < 0.005
            key = "baseline" if baseline else r.get("met") if r.get("goal") else "none"
            colour = COLOURS.get(key, COLOURS["none"])
            ax.barh(y, r["ratio"] - low, left=low, height=0.62, color=colour)
            text = f"{r['ratio']:,g}{TIMES} {r.get('unit') or ''}".rstrip()
            if r.get("goal"):
                ax.plot([r["goal"]] * 2, [y - 0.42, y + 0.42], color="#222222",
                        linestyle=(0, (3, 2)), linewidth=1.6)
                text += f"  (goal {_times(r['direction'] or '')} {r['goal']:,g}{TIMES})"
            notes.append(ax.annotate(text, (max(r["ratio"], r.get("goal") or 0), y),
                                     xytext=(5, 0), textcoords="offset points", va="center",
                                     fontsize=8, annotation_clip=False))
            ticks.append(y)
            labels.append(_label(r["label"]))
        ax.axvline(1, color="#888888", linewidth=0.8)
        ax.set_yticks(ticks, labels)
        ax.set_ylim(len(rows) - 0.4, -0.6)
        if log:
            ax.set_xscale("log")
            ax.set_xlim(low, max(values) * 2)
        else:
            ax.set_xlim(0, max(values) * 1.1)
        ax.xaxis.set_major_formatter(FuncFormatter(_tick))
        ax.set_xlabel("ratio to the baseline, in the unit of each row's label"
                      + (" (log scale)" if log else ""))
        ax.grid(axis="x", color="#e4e4e4", linewidth=0.6)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        title = f"{result.get('bench', '')}: {result.get('title', '')}".replace("`", "")
        ax.set_title(title, loc="left", fontsize=10)
        handles = [Patch(color=COLOURS[True], label="goal met"),
                   Patch(color=COLOURS[False], label="goal missed"),
                   Patch(color=COLOURS["none"], label="no goal"),
                   Patch(color=COLOURS["baseline"], label="baseline"),
                   Line2D([], [], color="#222222", linestyle=(0, (3, 2)), label="goal")]
        fig.legend(handles=handles, loc="outside lower center", ncols=5, frameon=False,
                   fontsize=8)
        _fit_notes(fig, ax, canvas, notes, log, ax.get_xlim()[1])
        if result.get("machine"):
            fig.text(0.995, 0.005, str(result["machine"]), ha="right", va="bottom",
                     fontsize=6, color="#777777")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="svg", metadata={"Date": None})
    return path


def _fit_notes(fig: Any, ax: Any, canvas: Any, notes: list[Any], log: bool,
               least: float) -> None:
    """End the x axis where the text after every bar fits (and not before ``least``)."""
    for _ in range(4):
        fig.draw_without_rendering()
        renderer = canvas.get_renderer()
        box = ax.get_window_extent(renderer)
        lo, hi = ax.get_xlim()
        need = least
        for note in notes:
            x = note.xy[0]
            width = note.get_window_extent(renderer).x1 - ax.transData.transform((x, 0))[0]
            room = max(1 - width / box.width, 0.2) / 1.02  # the axis fraction left for x
            need = max(need, lo * (x / lo) ** (1 / room) if log else lo + (x - lo) / room)
        if abs(need - hi) <= 0.005 * (hi - lo):
            return
        ax.set_xlim(lo, need)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="*", type=Path,
                        help=f"recorded results (default: every {c.RESULTS_DIR}/*.json)")
    parser.add_argument("--out", type=Path, default=OUT_DIR,
                        help=f"directory of the charts (default: {OUT_DIR})")
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("plot.py needs matplotlib: pip install matplotlib", file=sys.stderr)
        return 1
    files = args.results or sorted(c.RESULTS_DIR.glob("*.json"))
    if not files:
        print(f"no recorded results in {c.RESULTS_DIR}: run the benchmarks first",
              file=sys.stderr)
        return 1
    for file in files:
        result = json.loads(file.read_text(encoding="utf-8"))
        try:
            out = plot(result, chart_path(args.out, result.get("bench") or file.stem))
        except ValueError as exc:
            print(f"skipped {file}: {exc}", file=sys.stderr)
            continue
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
