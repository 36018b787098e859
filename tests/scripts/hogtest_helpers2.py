"""The second level of local modules: hogtest_nested -> hogtest_helpers -> this."""

FACTOR = 10


def g(x):
    return x * FACTOR
