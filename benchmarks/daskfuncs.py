# /// script
# requires-python = ">=3.10"
# dependencies = ["numpy", "dask[array]"]
# ///
"""The functions the Dask benchmark runs remotely (this file travels inside every bundle).

Not a benchmark itself (``nox -s bench`` runs only ``bench_*.py``).
"""

import numpy as np


def make(n, seed):
    """An intermediate: ``n`` float64 values (8 n bytes)."""
    return np.random.default_rng(seed).random(n)


def smooth(a):
    """A second stage on the intermediate (same size)."""
    return np.sqrt(a) * 0.5


def summary(*arrays):
    """The small result of the graph."""
    return float(sum(float(a.sum()) for a in arrays))


def nbytes_of(a):
    """Receive a large argument; return something small."""
    return int(a.nbytes)


if __name__ == "__main__":
    print("daskfuncs.py holds the functions bench_dask.py runs; run bench_dask.py instead.")
