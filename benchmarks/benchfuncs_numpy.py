# /// script
# requires-python = ">=3.10"
# dependencies = ["numpy"]
# ///
"""A script that imports NumPy at module level (bench_warm_runners.py): each fresh process
pays for the import, a warm runner once."""

import numpy as np


def norm(x):
    """A small NumPy call."""
    return float(np.sqrt(x))
