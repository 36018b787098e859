"""A local module imported by the script hogtest_nested (it travels with it)."""

import hogtest_helpers2
from hogtest_helpers2 import g


class Item:
    def __init__(self, n):
        self.n = n


def f(x):
    return g(x) + 1


def via_module(x):
    return hogtest_helpers2.g(x) + 2


def parity(x):
    return x % 2


def add(a, b):
    return a + b
