"""The other half of the cycle: refers to hogtest_cycle_a as a module object."""

import hogtest_cycle_a


def g():
    return hogtest_cycle_a.VALUE * 10
