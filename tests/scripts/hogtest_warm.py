# /// script
# requires-python = ">=3.10"
# dependencies = []
# ///
"""Functions for the warm-runner tests (run remotely by warm runners)."""

import os
import sys
import time

STATE = []


def pid(_=None):
    return os.getpid()


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def shout(x):
    print(f"out {x}")
    print(f"err {x}", file=sys.stderr)
    os.write(1, f"fd {x}\n".encode())
    return x


def remember(x):
    STATE.append(x)
    return list(STATE)


def die_on(x, bad):
    if x == bad:
        os.kill(os.getpid(), 9)
    return x


class Dummy:
    """A result whose lifetime the tests watch."""

    def __init__(self, x):
        self.x = x


def make_dummy(x):
    return Dummy(x)


class Holder:
    def method(self, x):
        return x + 1


def nap(seconds, value=None):
    time.sleep(seconds)
    return value
