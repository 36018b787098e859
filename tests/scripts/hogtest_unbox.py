# /// script
# requires-python = ">=3.10"
# dependencies = []
# ///
"""A script whose function receives objects of a local module it does not import."""


def unbox(box):
    return box.value


def rebox(box):
    return type(box)(box.value + 1)
