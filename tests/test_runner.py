"""The runner on its own: a payload in, a framed list of outcomes out."""

from __future__ import annotations

import base64
import json
import pickle
import subprocess
import sys
from pathlib import Path

from hog_executor import payload
from hog_executor.bundle import parse_output

RUNNER = Path(payload.__file__).with_name("runner.py")


MARKER = "m" * 32


def start_runner(tmp_path, fn, calls, script=None, script_name="s.py"):
    """Run the runner on a payload of ``fn`` and ``calls``; the finished process."""
    if script is not None:
        (tmp_path / script_name).write_text(script)
    items = [payload.dumps_call(a, k, None) for a, k in calls]
    header = json.dumps({"marker": MARKER, "script": script_name if script else None,
                         "by_value": False, "count": len(items)}).encode()
    data = payload.pack_payload(header, payload.dumps_function(fn, None), items, 10**7)
    (tmp_path / "p").write_bytes(data)
    return subprocess.run([sys.executable, str(RUNNER), str(tmp_path / "p")],
                          capture_output=True, cwd=tmp_path)


def run_runner(tmp_path, fn, calls, script=None, script_name="s.py"):
    proc = start_runner(tmp_path, fn, calls, script, script_name)
    frame = parse_output(proc.stdout, MARKER)
    assert frame.outcomes is not None, proc.stderr.decode()
    *outcomes, times = pickle.loads(frame.outcomes)  # one outcome per call, then timings
    assert len(times["calls"]) == len(outcomes)
    return [payload.decode_outcome(o, None) for o in outcomes], frame


def test_chunk_of_calls_each_gets_its_outcome(tmp_path):
    outcomes, _ = run_runner(tmp_path, lambda x, y=1: 10 // x + y, [((1,), {}), ((0,), {}),
                                                                      ((5,), {"y": 0})])
    assert outcomes[0].value == 11
    assert isinstance(outcomes[1].error, ZeroDivisionError)
    assert "10 // x" in str(outcomes[1].error.__cause__)
    assert outcomes[2].value == 2


def test_user_output_is_kept_and_fd1_redirect_does_not_lose_the_frame(tmp_path):
    def noisy():
        import os

        print("before")
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        print("lost")
        return "ok"

    outcomes, frame = run_runner(tmp_path, noisy, [((), {})])
    assert outcomes[0].value == "ok"
    assert "before" in frame.stdout


def test_script_is_imported_without_running_its_main_guard(tmp_path):
    script = "X = 41\nif __name__ == '__main__':\n    raise SystemExit('guard ran')\n"
    fn = pickle.loads(pickle.dumps(eval))  # a builtin, travels by reference
    outcomes, _ = run_runner(
        tmp_path, fn, [(("__import__('__hog_script__').X + 1",), {})], script=script
    )
    assert outcomes[0].value == 42


def test_broken_script_import_fails_every_call_with_the_original_error(tmp_path):
    outcomes, _ = run_runner(tmp_path, abs, [((1,), {}), ((2,), {})],
                             script="import not_a_module_anywhere\n")
    assert all(isinstance(o.error, ModuleNotFoundError) for o in outcomes)


def test_unpicklable_result_is_an_error_not_a_crash(tmp_path):
    import threading

    outcomes, _ = run_runner(tmp_path, lambda: threading.Lock(), [((), {})])
    assert isinstance(outcomes[0].error, TypeError)
    assert "cannot be pickled" in str(outcomes[0].error)


def test_runner_imports_only_stdlib_and_cloudpickle(tmp_path):
    code = (
        "import sys, runpy; sys.argv=['r', sys.argv[1]];"
        "before=set(sys.modules);"
        "import json, base64, pickle, os, traceback;"
        f"runpy.run_path({str(RUNNER)!r}, run_name='not_main');"
        "new = set(sys.modules) - before;"
        "print(sorted(m for m in new if m.split('.')[0] not in sys.stdlib_module_names))"
    )
    proc = subprocess.run([sys.executable, "-c", code, "x"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_frame_is_base64_of_a_pickle(tmp_path):
    proc = start_runner(tmp_path, lambda: 1, [((), {})])
    out = proc.stdout.decode()
    # the frame on stdout: its own lines, one line of base64 between them
    body = out.split(f"\n@@HOG-RESULT {MARKER}@@\n", 1)[1]
    body = body.split(f"\n@@HOG-END {MARKER}@@\n", 1)[0]
    outcomes = pickle.loads(base64.b64decode(body, validate=True))
    assert isinstance(outcomes, list) and len(outcomes) == 2  # one outcome, then timings
    assert payload.decode_outcome(outcomes[0], None).value == 1
    assert set(outcomes[1]) >= {"env_ready", "env_built", "imported", "worker", "calls"}



def test_keyboard_interrupt_raised_by_the_function_is_its_exception(tmp_path):
    def interrupts(x):
        if x == 0:
            raise KeyboardInterrupt("raised by the function")
        return x

    outcomes, _ = run_runner(tmp_path, interrupts, [((0,), {}), ((2,), {})])
    assert isinstance(outcomes[0].error, KeyboardInterrupt)
    assert str(outcomes[0].error) == "raised by the function"
    assert 'raise KeyboardInterrupt("raised by the function")' in str(outcomes[0].error.__cause__)
    assert outcomes[1].value == 2  # the chunk goes on, as after any exception


def test_a_real_sigint_still_ends_the_process(tmp_path):
    import signal

    def sigint_self():
        import os
        import signal
        import time

        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)

    proc = start_runner(tmp_path, sigint_self, [((), {}), ((), {})])
    assert proc.returncode == -signal.SIGINT
    assert parse_output(proc.stdout, MARKER).outcomes is None
