# /// script
# requires-python = ">=3.10"
# dependencies = []
# ///
"""Functions the requeue and checkpoint tests run remotely (shipped inside every bundle)."""

import os
import time

import hog_executor


def _record(path, text):
    with open(path, "a") as f:
        f.write(f"{text}\n")
        f.flush()
        os.fsync(f.fileno())


def twice(directory, x):
    """Note each run of call ``x`` in ``directory/x`` (its Slurm id and restart count), wait
    for ``directory/go``, return 2x."""
    env = os.environ
    task = env.get("SLURM_ARRAY_TASK_ID")
    slurm_id = (f"{env['SLURM_ARRAY_JOB_ID']}_{task}" if task and env.get("SLURM_ARRAY_JOB_ID")
                else env.get("SLURM_JOB_ID", "-"))
    _record(os.path.join(directory, str(x)), f"{slurm_id} {env.get('SLURM_RESTART_COUNT', '0')}")
    go = os.path.join(directory, "go")
    for _ in range(1200):
        if os.path.exists(go):
            return 2 * x
        time.sleep(0.1)
    raise TimeoutError("the test never said go")


def step(path, n, last):
    """Note run ``n`` in ``path``; once warned, continue with run ``n + 1`` (up to ``last``,
    whose value is ``("done", n)``)."""
    _record(path, n)
    if not hog_executor.stopping.wait(300):
        raise TimeoutError("never warned")
    if n >= last:
        return ("done", n)
    return hog_executor.Continue(step, path, n + 1, last)


def step_raising(path, n):
    """Like `step`, but raises the continuation, and never ends."""
    _record(path, n)
    if not hog_executor.stopping.wait(300):
        raise TimeoutError("never warned")
    raise hog_executor.Continue(step_raising, path, n + 1)


def countdown(n):
    """Continue at once, without waiting for a warning, ``n`` times; then return "liftoff"."""
    if n == 0:
        return "liftoff"
    return hog_executor.Continue(countdown, n - 1)


def warned_in_time(path):
    """Record whether the call is warned before its walltime, then end."""
    warned = hog_executor.stopping.wait(300)
    _record(path, f"warned={warned}")
    return hog_executor.time_is_up()


def echo(value):
    """Return ``value``: what a dependent call was given."""
    return value
