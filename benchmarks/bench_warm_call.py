"""One trivial call with ``fresh_process=True`` (a bash bundle and a Python per call) on the
``local`` endpoint, environment cached, against two baselines measured in this run.

Warm runners (the default) are measured by ``bench_warm_runners.py``; this benchmark keeps
the one-process-per-call path honest.

- floor: ``bash -c "python -c 'import cloudpickle'"`` with the environment's own interpreter:
  the least any bash bundle that runs a Python needing cloudpickle can cost. Goal: a call
  costs at most 1.2x the floor.
- groundhog-hpc ``.local()``: the same trivial function through groundhog (installed into a
  throwaway venv under ``.bench/groundhog``; the row is skipped, with the reason, if that
  fails). Goal: hog-executor at least 6x faster.

Each figure is the median of ``--repeat`` calls after one warm-up call; the three are measured
interleaved (one of each per round), so that load on the machine hits them alike. Run:
``python benchmarks/bench_warm_call.py``.
"""

from __future__ import annotations

import glob
import json
import os
import queue
import shlex
import subprocess
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Remote environments get hog-executor from this checkout (set before importing hog_executor).
os.environ.setdefault("HOG_EXECUTOR_REQUIREMENT", f"-e {shlex.quote(str(REPO_ROOT))}")

import _common as c  # noqa: E402
import benchfuncs  # noqa: E402

from hog_executor import HogExecutor  # noqa: E402

#: The groundhog release compared against (DESIGN.md's anchor); override to try another.
GROUNDHOG = os.environ.get("HOG_BENCH_GROUNDHOG", "groundhog-hpc==0.9.3")
GOAL_FLOOR = 1.2
GOAL_GROUNDHOG = 6.0

GROUNDHOG_SCRIPT = """\
# /// script
# requires-python = ">=3.10"
# dependencies = []
#
# [tool.uv]
# python-preference = "only-system"  # groundhog defaults to managed Pythons (downloads)
# ///
import groundhog_hpc as hog


@hog.function()
def noop(x=None):
    return x
"""

GROUNDHOG_DRIVER = """\
import json, sys, time
sys.path.insert(0, sys.argv[1])
import groundhog_hpc  # installs the import hook that marks the script safe for .local()
import gh_bench_funcs

noop = gh_bench_funcs.noop
t = time.perf_counter(); first = noop.local(0); first_t = time.perf_counter() - t
noop.local(1)  # warm-up
print("@@READY " + json.dumps({"first": first_t, "ok": first == 0,
                               "version": groundhog_hpc.__version__}), flush=True)
for line in sys.stdin:  # one timed call per line, so that the benchmark can interleave
    i = int(line)
    t = time.perf_counter(); value = noop.local(i); elapsed = time.perf_counter() - t
    print("@@CALL " + json.dumps({"seconds": elapsed, "ok": value == i}), flush=True)
"""


def env_python(cache_dir: Path) -> str:
    """The interpreter of the most recently used environment in ``cache_dir``."""
    pythons = glob.glob(str(cache_dir / "hog-*" / "envs" / "*" / "bin" / "python"))

    def last_used(py: str) -> float:
        marker = Path(py).parent.parent / ".last-used"
        return marker.stat().st_mtime if marker.exists() else 0.0

    if not pythons:
        raise RuntimeError(f"no environment found under {cache_dir}")
    return max(pythons, key=last_used)


def floor_call(python: str) -> None:
    subprocess.run(["bash", "-c", f"{shlex.quote(python)} -c 'import cloudpickle'"],
                   stdin=subprocess.DEVNULL, capture_output=True, check=True)


def _tail(text: str, lines: int = 6) -> str:
    return " / ".join(ln.strip() for ln in text.strip().splitlines()[-lines:] if ln.strip())


class Groundhog:
    """groundhog-hpc in a throwaway venv, driven call by call from a long-lived process."""

    def __init__(self, uv: str, base_python: str) -> None:
        self.uv = uv
        self.base_python = base_python
        self.where = c.BENCH_DIR / "groundhog"
        self.venv = self.where / "venv"
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - lives as long as the driver
        self.error = ""  # why the row is skipped
        self.first = 0.0
        self.version = GROUNDHOG
        self.ok = True
        self.samples: list[float] = []

    def install(self) -> bool:
        python = self.venv / "bin" / "python"
        stamp = self.venv / ".hog-bench-installed"
        if stamp.exists() and stamp.read_text() == f"{GROUNDHOG}\n{self.base_python}":
            return True
        c.progress(f"installing {GROUNDHOG} into {self.venv}")
        c.fresh_dir(self.where)
        try:
            subprocess.run([self.uv, "venv", "--quiet", "--python", self.base_python,
                            str(self.venv)], capture_output=True, text=True, check=True,
                           timeout=120)
            subprocess.run([self.uv, "pip", "install", "--quiet", "--python", str(python),
                            GROUNDHOG], capture_output=True, text=True, check=True, timeout=300)
        except subprocess.CalledProcessError as exc:
            self.error = f"installing {GROUNDHOG} failed: {_tail(exc.stderr or exc.stdout or '')}"
            return False
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.error = f"installing {GROUNDHOG} failed: {exc}"
            return False
        stamp.write_text(f"{GROUNDHOG}\n{self.base_python}")
        return True

    def start(self) -> bool:
        """Install, start the driver, wait for its first call and warm-up call."""
        if not self.install():
            return False
        (self.where / "gh_bench_funcs.py").write_text(GROUNDHOG_SCRIPT)
        (self.where / "drive.py").write_text(GROUNDHOG_DRIVER)
        uv_cache = subprocess.run([self.uv, "cache", "dir"], capture_output=True,
                                  text=True).stdout.strip()
        env = dict(
            os.environ,
            # groundhog looks for uv on PATH (else bootstraps it with pip)
            PATH=f"{self.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            GROUNDHOG_CACHE_DIR=str(self.where / "cache"),  # its environments: private
        )
        if uv_cache:
            env["UV_CACHE_DIR"] = uv_cache  # the same (warm) download cache as ours
        env.pop("VIRTUAL_ENV", None)
        c.progress("starting groundhog (its first call builds its environment if absent)")
        self.proc = subprocess.Popen(
            [str(self.venv / "bin" / "python"), str(self.where / "drive.py"), str(self.where)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
            env=env, cwd=self.where,
        )
        threading.Thread(target=self._read, daemon=True).start()
        ready = self._expect("@@READY ", timeout=600)
        if ready is None:
            return False
        self.first, self.ok, self.version = ready["first"], ready["ok"], ready["version"]
        return True

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")  # EOF

    def _expect(self, tag: str, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.fail(f"groundhog gave no answer in {timeout:g} s")
                return None
            if line == "":
                self.stderr.seek(0)
                self.fail(f"groundhog .local() failed: {_tail(self.stderr.read())}")
                return None
            if line.startswith(tag):
                return json.loads(line[len(tag):])

    def call(self, i: int) -> None:
        if self.error or self.proc is None or self.proc.stdin is None:
            return
        try:
            self.proc.stdin.write(f"{i}\n")
            self.proc.stdin.flush()
        except OSError as exc:
            self.fail(f"groundhog driver died: {exc}")
            return
        answer = self._expect("@@CALL ", timeout=120)
        if answer is not None:
            self.samples.append(answer["seconds"])
            self.ok = self.ok and answer["ok"]

    def fail(self, reason: str) -> None:
        self.error = reason
        self.samples = []
        self.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main() -> None:
    args = c.parse_args(__doc__.splitlines()[0], repeat=20)
    bytecode = c.configure_bytecode(args.no_bytecode)
    uv = c.uv_bin()
    cache_dir = c.BENCH_DIR / "hog-cache"
    c.header("bench_warm_call", "one warm trivial call on the `local` endpoint",
             [bytecode, c.uv_version(uv),
              f"HOG_EXECUTOR_REQUIREMENT={os.environ['HOG_EXECUTOR_REQUIREMENT']}",
              f"hog-executor env cache: {cache_dir}"])

    n = args.repeat
    ours: list[float] = []
    floor: list[float] = []
    ok = True
    with HogExecutor("local", max_workers=2, cache_dir=str(cache_dir), fresh_process=True,
                     script=benchfuncs.__file__) as ex:
        c.progress("first hog-executor call (builds the environment if absent)")
        first = c.timed(lambda: ex.submit(benchfuncs.noop, 0).result())
        python = env_python(cache_dir)
        base = os.path.realpath(python)
        ex.submit(benchfuncs.noop, 1).result()  # warm-up
        floor_call(python)  # warm-up
        gh = Groundhog(uv, base)
        gh.start()
        c.progress(f"timing {n} rounds: hog-executor call, floor, groundhog call")
        for i in range(n):
            start = time.perf_counter()
            value = ex.submit(benchfuncs.noop, i).result()
            ours.append(time.perf_counter() - start)
            ok = ok and value == i
            floor.append(c.timed(lambda: floor_call(python)))
            gh.call(i)
        gh.close()

    floor_med = c.Row("", floor).median
    ours_med = c.Row("", ours).median
    rows = [
        c.Row("floor: `bash -c \"python -c 'import cloudpickle'\"`", floor, ratio="1.00x floor",
              note=f"python = {python} -> {base}"),
        c.Row("hog-executor `ex.submit(noop, i).result()`, `fresh_process=True`", ours,
              ratio=f"{c.ratio(ours_med, floor_med):.2f}x floor",
              goal=f"<= {GOAL_FLOOR:g}x floor",
              met=c.ratio(ours_med, floor_med) <= GOAL_FLOOR,
              note=f"first call (builds the environment if absent): {c.fmt_time(first)}"
                   + ("" if ok else "; WRONG RESULTS returned")),
    ]
    goal = f"ours >= {GOAL_GROUNDHOG:g}x faster"
    if gh.error or not gh.samples:
        rows.append(c.Row(f"groundhog `.local()` ({GROUNDHOG})", goal=goal,
                          note=f"skipped: {gh.error or 'no calls timed'}"))
    else:
        gh_row = c.Row(f"groundhog {gh.version} `.local()`", gh.samples, goal=goal,
                       note=f"first call (builds groundhog's environment if absent): "
                            f"{c.fmt_time(gh.first)}" + ("" if gh.ok else "; WRONG RESULTS"))
        speedup = c.ratio(gh_row.median, ours_med)
        gh_row.ratio = f"{c.ratio(gh_row.median, floor_med):.2f}x floor; ours {speedup:.2f}x faster"
        gh_row.met = speedup >= GOAL_GROUNDHOG
        rows.append(gh_row)
    c.print_table(rows)


if __name__ == "__main__":
    main()
