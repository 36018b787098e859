"""A script without a PEP 723 block: its calls get the packages they refer to (inferred)."""

import numpy as np


def total(n):
    return int(np.arange(n).sum())
