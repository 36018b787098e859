"""Two local modules that refer to each other as module objects (a cycle by value)."""

import hogtest_cycle_b

VALUE = 5


def f():
    return hogtest_cycle_b.g() + 1
