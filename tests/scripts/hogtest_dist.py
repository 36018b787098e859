# /// script
# requires-python = ">=3.10"
# dependencies = []
# ///
"""Functions the distributed tests run through Dask (this file is shipped inside bundles)."""

import os
import time


class CustomError(Exception):
    """An exception class defined in the script."""


def square(x):
    return x * x


def add(a, b):
    return a + b


def pid(_=None):
    return os.getpid()


def fail(message):
    raise CustomError(message)


def fail_key(key):
    raise KeyError(key)


def flaky(path):
    """Fails on the first call, succeeds on the next (the count lives in ``path``)."""
    try:
        with open(path) as f:
            count = int(f.read())
    except FileNotFoundError:
        count = 0
    with open(path, "w") as f:
        f.write(str(count + 1))
    if count == 0:
        raise OSError("first attempt fails")
    return count + 1


def slow_square(x, seconds=0.3):
    time.sleep(seconds)
    return x * x


def record_and_sleep(path, seconds):
    """Write this process's pid to ``path``, then sleep."""
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(seconds)
    return "slept"
