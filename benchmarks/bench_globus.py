"""Client-side cost of Globus Compute calls: hog-executor against groundhog-hpc's ``.submit()``.

Both sides talk to the same counting client (``_globus_counting.py``): the real SDK
``Executor`` builds and serializes every request, whose JSON body is built and counted, and
every task is answered at once with a canned result, so only the client side is timed
(serializing calls, rendering, registering functions, batching).

- hog-executor: ``ex.map`` over 10,000 trivial calls, and 10,000 ``ex.submit`` calls in a
  burst, through ``HogExecutor(<uuid>, globus_executor=Executor(client=counting))``; timed
  from the first call until every task is answered (``shutdown(wait=True)``).
- groundhog-hpc 0.9.3 ``.submit()`` (installed into a throwaway venv under
  ``.bench/groundhog``, shared with ``bench_warm_call.py``): one new SDK ``Executor`` per
  call, as groundhog does; its endpoint-metadata lookup goes to the same counting client.
  Fewer calls (``--gh-calls``, default 300) because each costs an executor start and stop;
  the figure is per call. If groundhog cannot be installed, the baseline is a naive path in
  this process (a new SDK ``Executor`` and a new ``ShellFunction`` holding the whole bundle per
  call), and the table says so.

Goals: at least 10x fewer requests per 1,000 calls and at least 5x less client time per call
than the baseline. Run: ``python benchmarks/bench_globus.py``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HOG_EXECUTOR_REQUIREMENT", f"-e {shlex.quote(str(REPO_ROOT))}")

import _common as c  # noqa: E402
import benchfuncs  # noqa: E402
from _globus_counting import CountingClient  # noqa: E402

from hog_executor import HogExecutor  # noqa: E402

N = 10_000
GROUNDHOG = os.environ.get("HOG_BENCH_GROUNDHOG", "groundhog-hpc==0.9.3")
GOAL_REQUESTS = 10.0
GOAL_TIME = 5.0
ENDPOINT = str(uuid.UUID(int=0x5AAFB4C127B240D8A038A0277611868F))

GROUNDHOG_SCRIPT = """\
# /// script
# requires-python = ">=3.10"
# dependencies = []
# ///
import groundhog_hpc as hog


@hog.function()
def inc(x):
    return x + 1
"""

GROUNDHOG_DRIVER = """\
import json, sys, time, uuid
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
n, endpoint = int(sys.argv[3]), sys.argv[4]
import groundhog_hpc  # installs the import hook that marks the script safe for .submit()
import groundhog_hpc.compute as ghc
from _globus_counting import CountingClient
import gh_globus_funcs

client = CountingClient()
ghc._get_compute_client = lambda: client  # endpoint metadata comes from the counting client
gh_globus_funcs.inc.submit(0, endpoint=endpoint, executor_kwargs={"client": client})  # warm-up
client.requests.clear()
t = time.perf_counter()
for i in range(n):
    gh_globus_funcs.inc.submit(i, endpoint=endpoint, executor_kwargs={"client": client})
elapsed = time.perf_counter() - t
print("@@RESULT " + json.dumps({"seconds": elapsed, "n": n, **client.summary(),
                                "version": groundhog_hpc.__version__}), flush=True)
"""


def install_groundhog(uv: str) -> tuple[Path | None, str]:
    """The venv's python (shared with bench_warm_call.py), or None and why not."""
    where = c.BENCH_DIR / "groundhog"
    venv = where / "venv"
    python = venv / "bin" / "python"
    base = os.path.realpath(sys.executable)
    stamp = venv / ".hog-bench-installed"
    if stamp.exists() and stamp.read_text().split("\n", 1)[0] == GROUNDHOG:
        return python, ""
    c.progress(f"installing {GROUNDHOG} into {venv}")
    c.fresh_dir(where)
    try:
        subprocess.run([uv, "venv", "--quiet", "--python", base, str(venv)],
                       capture_output=True, text=True, check=True, timeout=120)
        subprocess.run([uv, "pip", "install", "--quiet", "--python", str(python), GROUNDHOG],
                       capture_output=True, text=True, check=True, timeout=300)
    except subprocess.CalledProcessError as exc:
        return None, f"installing {GROUNDHOG} failed: {(exc.stderr or exc.stdout).strip()[-300:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"installing {GROUNDHOG} failed: {exc}"
    stamp.write_text(f"{GROUNDHOG}\n{base}")
    return python, ""


def groundhog_submit(python: Path, n: int) -> tuple[dict[str, object] | None, str]:
    where = c.BENCH_DIR / "groundhog"
    (where / "gh_globus_funcs.py").write_text(GROUNDHOG_SCRIPT)
    (where / "drive_globus.py").write_text(GROUNDHOG_DRIVER)
    env = dict(os.environ, PATH=f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("VIRTUAL_ENV", None)
    try:
        proc = subprocess.run(
            [str(python), str(where / "drive_globus.py"), str(where),
             str(Path(__file__).parent), str(n), ENDPOINT],
            capture_output=True, text=True, timeout=1800, env=env, cwd=where,
        )
    except subprocess.TimeoutExpired:
        return None, "groundhog's driver did not finish within 30 minutes"
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT "):
            return json.loads(line[len("@@RESULT "):]), ""
    return None, f"groundhog's driver failed: {proc.stderr.strip()[-400:]}"


def naive_submit(n: int) -> dict[str, object]:
    """One SDK Executor and one ShellFunction (the whole bundle) per call."""
    from globus_compute_sdk import Executor, ShellFunction

    from hog_executor import payload as hp
    from hog_executor.bundle import BundleSpec, render_bundle
    from hog_executor.environment import env_spec
    from hog_executor.script import load_script

    meta = load_script(benchfuncs.__file__)
    spec = BundleSpec(env=env_spec(meta), script_name="benchfuncs.py",
                      script_source=meta.source)
    client = CountingClient()
    fn_bytes = hp.dumps_function(benchfuncs.inc, None)
    start = time.perf_counter()
    for i in range(n):
        data = hp.pack_payload(b"{}", fn_bytes, [hp.dumps_call((i,), {}, None)], 10**7)
        text = render_bundle(spec, data).replace("{", "{{").replace("}", "}}")
        with Executor(ENDPOINT, client=client) as gce:
            gce.submit(ShellFunction(text))
    return {"seconds": time.perf_counter() - start, "n": n, **client.summary()}


def hog_run(kind: str, client: CountingClient) -> float:
    from globus_compute_sdk import Executor

    sdk = Executor(client=client)
    start = time.perf_counter()
    ex = HogExecutor(ENDPOINT, globus_executor=sdk, script=benchfuncs.__file__)
    if kind == "map":
        ex.map(benchfuncs.inc, range(N))
    else:
        for i in range(N):
            ex.submit(benchfuncs.inc, i)
    ex.shutdown(wait=True)  # every task answered
    elapsed = time.perf_counter() - start
    sdk.shutdown(wait=False)
    return elapsed


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each hog measurement")
    parser.add_argument("--gh-calls", type=int, default=300, help="groundhog .submit() calls")
    parser.add_argument("--no-bytecode", action="store_true", help="(accepted; no effect here)")
    args = parser.parse_args()
    uv = c.uv_bin()
    c.header("bench_globus", "client-side cost of Globus Compute calls",
             [f"counting client in place of the Globus Compute service; endpoint {ENDPOINT}",
              f"hog-executor: {N:,} calls per round; baseline: {args.gh_calls} calls"])

    rounds: dict[str, list[float]] = {"map": [], "submit": []}
    requests: dict[str, dict[str, int]] = {}
    c.progress("warm-up")
    hog_run("submit", CountingClient())
    for _ in range(max(1, args.repeat)):
        for kind in rounds:
            client = CountingClient()
            rounds[kind].append(hog_run(kind, client) / N)
            requests[kind] = client.summary()
        c.progress(f"hog-executor round done: {rounds}")

    python, why = install_groundhog(uv)
    base: dict[str, object] | None = None
    if python is not None:
        c.progress(f"groundhog .submit() x {args.gh_calls}")
        base, why = groundhog_submit(python, args.gh_calls)
    if base is not None:
        base_label = f"groundhog-hpc {base['version']} `.submit()` (new SDK Executor per call)"
    else:
        c.progress(f"groundhog unavailable ({why}); naive baseline")
        base = naive_submit(args.gh_calls)
        base_label = ("naive: new SDK Executor + ShellFunction with the whole bundle per call "
                      f"(groundhog unavailable: {why})")
    base_n = int(base["n"])  # type: ignore[call-overload]
    base_per_call = float(base["seconds"]) / base_n  # type: ignore[arg-type]
    base_req = 1000 * int(base["requests"]) / base_n  # type: ignore[call-overload]
    base_bytes = 1000 * int(base["bytes"]) / base_n  # type: ignore[call-overload]

    rows = [c.Row(base_label, [base_per_call], ratio="1.00x",
                  note=f"{base_req:,.0f} requests and {base_bytes / 1e6:,.1f} MB per 1,000 calls")]
    for kind, label in (("map", f"hog-executor `ex.map` over {N:,} calls"),
                        ("submit", f"hog-executor {N:,} `ex.submit` calls")):
        per_call = c.Row("", rounds[kind]).median
        req = 1000 * requests[kind]["requests"] / N
        byt = 1000 * requests[kind]["bytes"] / N
        fewer = base_req / req if req else float("inf")
        faster = base_per_call / per_call
        rows.append(c.Row(
            label + " (per call)", rounds[kind], ratio=f"{faster:.1f}x less time",
            goal=f">= {GOAL_TIME:g}x less time, >= {GOAL_REQUESTS:g}x fewer requests",
            met=faster >= GOAL_TIME and fewer >= GOAL_REQUESTS,
            note=f"{req:,.1f} requests ({fewer:,.0f}x fewer) and {byt / 1e6:,.2f} MB per 1,000 "
                 f"calls; {requests[kind]['tasks']:,} tasks for {N:,} calls"))
    c.print_table(rows)


if __name__ == "__main__":
    main()
