# /// script
# requires-python = ">=3.10"
# dependencies = []
# ///
"""A script importing an installed package (scipy) that its block does not declare."""

from typing import TYPE_CHECKING

import scipy

try:
    import numpy_not_declared_but_guarded  # noqa: F401
except ImportError:
    pass

try:
    import yaml  # guarded: a missing package is handled
except ModuleNotFoundError:
    yaml = None

if TYPE_CHECKING:
    import pandas  # noqa: F401

import hogtest_helpers  # a local module of the script's directory: not an error


def version():
    return scipy.__version__


def uses_numpy_inside():
    import numpy

    return int(numpy.arange(3).sum()) + hogtest_helpers.add(0, 0)
