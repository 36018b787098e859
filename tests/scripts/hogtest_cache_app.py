# /// script
# requires-python = ">=3.10"
# dependencies = []
# ///
"""A client the cache tests run as a new process, and edit between runs.

Usage: python hogtest_cache_app.py ROOT ENV_CACHE LOG N [ENDPOINT]. Prints one JSON line:
the values, which came from the cache, and how many jobs reached the backend.
"""

import json
import os
import sys
import time


def helper(x):
    return x * 2


def work(x, log):
    with open(log, "a") as f:
        f.write(f"{x}\n")
    if os.path.exists(log + ".slow"):
        time.sleep(60)
    return helper(x) + 1


def unrelated():
    return "a"


if __name__ == "__main__":
    import logging

    from hog_executor import HogExecutor

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root, env_cache, log, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with HogExecutor("local", cache=root, cache_dir=env_cache, max_workers=2) as ex:
        sent = []
        real = ex.backend.submit

        def counting(jobs):
            sent.extend(jobs)
            return real(jobs)

        ex.backend.submit = counting
        futures = [ex.submit(work, i, log) for i in range(n)]
        print("submitted", flush=True)
        values = [f.result() for f in futures]
        print(json.dumps({"values": values, "cached": [f.cached for f in futures],
                          "jobs": len(sent)}), flush=True)
