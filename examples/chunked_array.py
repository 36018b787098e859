# /// script
# requires-python = ">=3.10"
# dependencies = ["numpy", "dask[array]"]
#
# [tool.hog.laptop]
# backend = "local"
# max_workers = 2
# ///
"""A large ``dask.array`` through ``map_blocks`` and a reduction, run by hog-executor.

    python examples/chunked_array.py

The executor is the Dask scheduler. Each 16 MB chunk is built and transformed remotely and
stays in the executor's store (the local endpoint's private file store); only the small
partial sums of the reduction cross back to this process. The check against NumPy runs here.
"""

from __future__ import annotations

import time

import dask
import dask.array as da
import numpy as np

from hog_executor import HogExecutor


def damp(block: np.ndarray) -> np.ndarray:
    """The per-chunk work: any NumPy function of one block."""
    return np.sqrt(np.abs(np.sin(block))) * 0.5


if __name__ == "__main__":
    n, chunk = 16_000_000, 2_000_000  # 128 MB of float64 in eight 16 MB chunks
    x = da.arange(n, dtype=np.float64, chunks=chunk)
    y = x.map_blocks(damp)
    with HogExecutor("laptop") as ex:
        start = time.perf_counter()
        # One compute for both: the chunks are built and transformed once, in one pass.
        total, mean = (float(v) for v in dask.compute(y.sum(), y.mean(), scheduler=ex))
        took = time.perf_counter() - start
        print(f"sum = {total:.6f}, mean = {mean:.9f} ({took:.2f} s through hog-executor)")
    expected = damp(np.arange(n, dtype=np.float64))
    assert np.isclose(total, expected.sum()) and np.isclose(mean, expected.mean())
    print("matches NumPy")
