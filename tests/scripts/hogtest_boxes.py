"""A local module without a PEP 723 block: a sibling of the test scripts that none of them
imports. Its objects travel by value (the remote side cannot import it)."""


class Box:
    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Box) and other.value == self.value


def make_box(value):
    return Box(value)


def double(x):
    return 2 * x
