"""A cold first call that needs a new dependency, against building that environment by hand.

- ours: ``HogExecutor("local", cache_dir=<fresh empty dir>, dependencies=[DEP])`` and one call
  that imports DEP: the bundle builds the environment (``uv venv``, ``uv sync --script``,
  ``uv pip install --no-deps`` of cloudpickle and hog-executor) and runs the call.
- baseline: ``uv venv DIR`` + ``uv pip install --python DIR/bin/python DEP`` by hand, with the
  same uv binary and interpreter request, into a fresh directory.

Every run starts from an empty environment cache of its own; uv's download cache is shared and
warm for both sides (one untimed run of each comes first). Goal: at most 1.3x the baseline.

Two extra rows, without a goal: installing by hand exactly what hog-executor installs (DEP,
cloudpickle and the hog-executor requirement, e.g. ``-e <checkout>``), which separates the cost
of the packages from the cost of the machinery; and hog-executor getting itself from a wheel
(built from the checkout with ``uv build``), as users of a release do. Each figure is the median
of ``--repeat`` runs, the rows measured interleaved. Run:
``python benchmarks/bench_cold_env.py``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Remote environments get hog-executor from this checkout (set before importing hog_executor).
os.environ.setdefault("HOG_EXECUTOR_REQUIREMENT", f"-e {shlex.quote(str(REPO_ROOT))}")

import _common as c  # noqa: E402
import benchfuncs  # noqa: E402

from hog_executor import HogExecutor  # noqa: E402

#: A small pure-Python distribution whose import name is its distribution name.
DEP = os.environ.get("HOG_BENCH_COLD_DEP", "six")
GOAL = 1.3
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"  # what hog-executor requests


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{proc.stderr}")


def by_hand(uv: str, where: Path, packages: list[str]) -> None:
    """``uv venv`` + ``uv pip install`` into ``where`` (removed first)."""
    shutil.rmtree(where, ignore_errors=True)
    run([uv, "venv", "--quiet", "--python-preference", "system", "--python", PYTHON, str(where)])
    run([uv, "pip", "install", "--quiet", "--python", str(where / "bin" / "python"), *packages])


def main() -> None:
    args = c.parse_args(__doc__.splitlines()[0], repeat=3)
    bytecode = c.configure_bytecode(args.no_bytecode)
    uv = c.uv_bin()
    scratch = c.fresh_dir(c.BENCH_DIR / "cold" / uuid.uuid4().hex[:8])
    from hog_executor.environment import REQUIREMENT_ENV, runtime_requirements

    runtime = list(runtime_requirements())
    c.header("bench_cold_env", f"cold first call needing `{DEP}`, fresh environment cache",
             [bytecode, c.uv_version(uv), f"uv download cache: shared and warm ({uv} cache dir)",
              f"hog-executor runtime requirements: {shlex.join(runtime)}",
              f"scratch: {scratch} (removed at the end)"])

    def ours() -> None:
        cache = scratch / f"hog-{uuid.uuid4().hex[:8]}"
        with HogExecutor("local", max_workers=2, cache_dir=str(cache),
                         script=benchfuncs.__file__, dependencies=[DEP]) as ex:
            future = ex.submit(benchfuncs.dependency_version, DEP)
            future.result()
        shutil.rmtree(cache, ignore_errors=True)

    def baseline() -> None:
        by_hand(uv, scratch / "by-hand", [DEP])

    def same_packages() -> None:
        by_hand(uv, scratch / "same-packages", [DEP, *runtime])

    def ours_from_wheel() -> None:
        saved = os.environ[REQUIREMENT_ENV]
        os.environ[REQUIREMENT_ENV] = shlex.quote(str(wheel))
        runtime_requirements.cache_clear()
        try:
            ours()
        finally:
            os.environ[REQUIREMENT_ENV] = saved
            runtime_requirements.cache_clear()

    hog: list[float] = []
    base: list[float] = []
    same: list[float] = []
    from_wheel: list[float] = []
    wheel: Path | None = None
    wheel_note = ""
    try:
        c.progress("building a wheel of the checkout")
        try:
            run([uv, "build", "--quiet", "--wheel", "--out-dir", str(scratch / "wheel"),
                 str(REPO_ROOT)])
            wheel = next((scratch / "wheel").glob("*.whl"))
            wheel_note = f"HOG_EXECUTOR_REQUIREMENT={wheel.name}"
        except (RuntimeError, StopIteration) as exc:
            wheel_note = f"skipped: `uv build --wheel` failed: {str(exc).strip()[-300:]}"
        c.progress("warming uv's download cache (one untimed run of each)")
        baseline()
        same_packages()
        ours()
        if wheel:
            ours_from_wheel()
        c.progress(f"timing {args.repeat} rounds")
        for _ in range(args.repeat):
            base.append(c.timed(baseline))
            hog.append(c.timed(ours))
            same.append(c.timed(same_packages))
            if wheel:
                from_wheel.append(c.timed(ours_from_wheel))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    base_med = c.Row("", base).median
    hog_med = c.Row("", hog).median
    same_med = c.Row("", same).median
    rows = [
        c.Row(f"by hand: `uv venv` + `uv pip install {DEP}`", base, ratio="1.00x baseline"),
        c.Row(f"hog-executor: first call with `dependencies=[\"{DEP}\"]`", hog,
              ratio=f"{c.ratio(hog_med, base_med):.2f}x baseline", goal=f"<= {GOAL:g}x baseline",
              met=c.ratio(hog_med, base_med) <= GOAL,
              note=f"{c.ratio(hog_med, same_med):.2f}x installing the same packages by hand"),
        c.Row(f"by hand, same packages: `uv pip install {DEP} {shlex.join(runtime)}`", same,
              ratio=f"{c.ratio(same_med, base_med):.2f}x baseline"),
        c.Row("hog-executor, itself installed from a wheel (as a release)", from_wheel,
              ratio=(f"{c.ratio(c.Row('', from_wheel).median, base_med):.2f}x baseline"
                     if from_wheel else ""),
              note=wheel_note),
    ]
    c.print_table(rows)


if __name__ == "__main__":
    main()
