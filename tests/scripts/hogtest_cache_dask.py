# /// script
# requires-python = ">=3.10"
# dependencies = []
# ///
"""A three-stage Dask pipeline the cache tests run, edit and run again in new processes.

Usage: python hogtest_cache_dask.py ROOT ENV_CACHE LOG. Every stage that really runs logs
its name; the result is printed as JSON.
"""

import json
import sys


def _log(path, name):
    with open(path, "a") as f:
        f.write(name + "\n")


def load(n, log):
    _log(log, "load")
    return list(range(n))


def scale(xs, log):
    _log(log, "scale")
    return [2 * x for x in xs]


def total(xs, log):
    _log(log, "total")
    return sum(xs)


if __name__ == "__main__":
    import dask
    from dask import delayed

    from hog_executor import HogExecutor

    root, env_cache, log = sys.argv[1:4]
    with HogExecutor("local", cache=root, cache_dir=env_cache, max_workers=2) as ex:
        result = delayed(total)(delayed(scale)(delayed(load)(5, log), log), log)
        print(json.dumps(dask.compute(result, scheduler=ex)[0]))
