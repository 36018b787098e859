# /// script
# requires-python = ">=3.10"
# dependencies = []
#
# [tool.hog.site]
# backend = "local"
# max_workers = 2
# env = { HOG_TEST_SITE = "decorated" }
# ///
"""Decorated functions and harnesses the test suite runs (shipped inside every bundle)."""

import os
import sys

import hog_executor as hog


class Pair:
    def __init__(self, a, b):
        self.a, self.b = a, b

    def __eq__(self, other):
        return isinstance(other, Pair) and (self.a, self.b) == (other.a, other.b)


@hog.function("site")
def square(x):
    return x * x


@hog.function("site", walltime=60)
def where(name="HOG_TEST_SITE"):
    """Where the call ran: the env var and whether it was a remote call."""
    return os.environ.get(name), os.environ.get("HOG_IN_REMOTE_CALL")


@hog.function("site")
def swap(pair):
    return Pair(pair.b, pair.a)


@hog.function("site")
def shout(text):
    print(f"out: {text}")
    print(f"err: {text}", file=sys.stderr)
    return text.upper()


@hog.function("site")
def fail(msg):
    raise KeyError(msg)


@hog.function("site")
def nested(x):
    """A remote function that tries to start another remote call."""
    return square.remote(x)


@hog.function("site")
def calls_plain(x):
    """Calling a decorated function directly inside a remote call runs it in-process."""
    return square(x) + 1


@hog.function("5aafb4c1-27b2-40d8-a038-a0277611868f", walltime=30)
def on_globus(x):
    """Meant for a Globus Compute endpoint; .local() checks it on this machine."""
    return os.environ.get("HOG_IN_REMOTE_CALL"), x + 1


@hog.harness()
def main(n: int, scale: float = 1.0, label: str = "sum", verbose: bool = False):
    """Sum of squares of range(n), computed remotely, times scale."""
    total = sum(square.map(range(n))) * scale
    if verbose:
        print(f"computed {n} squares")
    return f"{label}={total:g}"


@hog.harness()
def one(x: int):
    return square.remote(x)


@hog.function("site")
def nap(seconds, marker):
    """Sleep in a child process whose command line carries ``marker``."""
    import subprocess

    subprocess.run([sys.executable, "-c", "import time, sys; time.sleep(float(sys.argv[1]))",
                    str(seconds), marker], check=True)


@hog.harness()
def sleepy(seconds: float, marker: str):
    print("started", flush=True)
    return nap.remote(seconds, marker)


def cube(x):
    return x**3


@hog.harness()
def direct(x: int):
    """Uses HogExecutor without script=: the script's tables apply under hog run too."""
    with hog.HogExecutor("site") as ex:
        return ex.submit(cube, x).result()


if __name__ == "__main__":
    # Run as `python hogtest_decorated.py X`: remote call from a plain script.
    print(f"remote={square.remote(int(sys.argv[1]))}")
    print(f"pair={swap.remote(Pair(1, 2)).a}")
