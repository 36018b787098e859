# /// script
# requires-python = ">=3.10"
# dependencies = ["numpy", "dask"]
#
# [tool.hog.laptop]
# backend = "local"
# max_workers = 2
# ///
"""A ``dask.delayed`` pipeline (load, clean, featurize, combine) run by hog-executor.

    python examples/delayed_pipeline.py

Each stage of one input is a linear chain: the three stages run as one remote call per input.
The inputs are independent, so their chains run side by side. Intermediates over
``proxy_threshold`` (1 MB) stay remote; only the small summary comes back.
"""

from __future__ import annotations

import dask
import numpy as np
from dask import delayed

from hog_executor import HogExecutor


def load(seed: int) -> np.ndarray:
    """Stand-in for reading one input file: 4 MB of samples."""
    return np.random.default_rng(seed).normal(size=500_000)


def clean(samples: np.ndarray) -> np.ndarray:
    return samples[np.abs(samples) < 3]


def featurize(samples: np.ndarray) -> dict[str, float]:
    return {"n": float(samples.size), "mean": float(samples.mean()),
            "std": float(samples.std())}


def combine(features: list[dict[str, float]]) -> dict[str, float]:
    n = sum(f["n"] for f in features)
    return {"inputs": len(features), "samples": n,
            "mean": sum(f["mean"] * f["n"] for f in features) / n}


if __name__ == "__main__":
    features = [delayed(featurize)(delayed(clean)(delayed(load)(seed))) for seed in range(6)]
    summary = delayed(combine)(features)
    with HogExecutor("laptop") as ex:
        (result,) = dask.compute(summary, scheduler=ex)
    print(result)
    assert result == summary.compute(scheduler="sync")
    print("matches the synchronous scheduler")
