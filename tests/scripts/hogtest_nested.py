# /// script
# requires-python = ">=3.10"
# dependencies = []
# ///
"""A script importing a local module that imports another one."""

from hogtest_helpers import Item, f


def run(x):
    return f(x)


def is_item(obj):
    return isinstance(obj, Item)


def make_item(n):
    return Item(n)


def helpers_file():
    import hogtest_helpers

    return hogtest_helpers.__file__
