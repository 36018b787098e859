# /// script
# requires-python = ">=3.10"
# dependencies = []
#
# [tool.hog.site]
# backend = "local"
# max_workers = 2
# walltime = 60
# env = { HOG_TEST_SITE = "site" }
#
# [tool.hog.site.short]
# walltime = 5
# ///
"""Functions the test suite runs remotely (this file is shipped inside every bundle)."""

import os
import signal
import subprocess
import sys
import time


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def scaled(self, k):
        return (self.x * k, self.y * k)


class Scaler:
    """A callable object with state."""

    def __init__(self, factor):
        self.factor = factor

    def __call__(self, x):
        return x * self.factor


class CustomError(Exception):
    """An exception class defined in the script."""


class Abort(BaseException):
    """A BaseException that is not a signal or an exit."""


def maybe_abort(x):
    if x == 2:
        raise Abort(f"abort at {x}")
    return x


class BadInitError(Exception):
    def __init__(self, a, b):  # cannot be rebuilt from its args
        super().__init__(f"{a}-{b}")


def square(x):
    return x * x


def add(a, b=0, *, c=0):
    return a + b + c


def echo(x):
    print(f"echo {x}")
    print(f"err {x}", file=sys.stderr)
    return x


def make_point(x, y):
    return Point(x, y)


def norm(p):
    assert isinstance(p, Point), type(p)
    return (p.x**2 + p.y**2) ** 0.5


def fail_custom(msg):
    raise CustomError(msg)


def fail_value(msg):
    raise ValueError(msg)


def fail_bad_init():
    raise BadInitError(1, 2)


def exit_with(code):
    sys.exit(code)


def hard_exit(code):
    os._exit(code)


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def sleep(seconds, value=None):
    time.sleep(seconds)
    return value


def sleep_once(seconds, marker, value=None):
    """Sleep the first time (creating ``marker``), return at once after that."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(seconds)
    return value


def sleep_with_child(seconds, pidfile):
    """Start a grandchild process that would outlive a careless kill, then sleep."""
    child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
    with open(pidfile, "a") as f:
        f.write(f"{os.getpid()}\n{child.pid}\n")
    time.sleep(seconds)


def stubborn_sleep(seconds):
    """Ignore SIGTERM, so that only SIGKILL ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(seconds)


def getenv(name):
    return os.environ.get(name)


def unpicklable_result():
    import threading

    return threading.Lock()


def print_lines(n, text):
    for i in range(n):
        print(f"{i} {text}")
    return n


def identity(x):
    return x


def python_version():
    return sys.version_info[:2]


def uses_hog_executor():
    import hog_executor

    return hog_executor.__version__


if __name__ == "__main__":
    raise SystemExit("this guard must never run remotely")
