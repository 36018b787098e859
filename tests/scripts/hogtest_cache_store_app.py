# /// script
# requires-python = ">=3.10"
# dependencies = []
# ///
"""A client whose call's large argument travels through the store (the local endpoint's
default file store), run as a new process by the cache tests.

Usage: python hogtest_cache_store_app.py ROOT ENV_CACHE LOG SEED. The argument is 300 kB
of bytes made from SEED; the call logs every real run. Prints one JSON line: the value,
whether it came from the cache, how many jobs reached the backend, and whether anything went
into the store.
"""

import hashlib
import json
import sys


def digest(data, log):
    with open(log, "a") as f:
        f.write(f"{len(data)}\n")
    return hashlib.sha256(data).hexdigest()


if __name__ == "__main__":
    from hog_executor import HogExecutor

    root, env_cache, log, seed = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    big = (seed.encode() * 300_000)[:300_000]
    with HogExecutor("local", cache=root, cache_dir=env_cache, max_workers=1,
                     proxy_threshold="100KB") as ex:
        sent = []
        real = ex.backend.submit

        def counting(jobs):
            sent.extend(jobs)
            return real(jobs)

        ex.backend.submit = counting
        f = ex.submit(digest, big, log)
        value = f.result()
        store = ex._state.client_store(create=False)
        print(json.dumps({"value": value, "cached": f.cached, "jobs": len(sent),
                          "stored": store is not None,
                          "payload": max((len(j.payload) for j in sent), default=0)}),
              flush=True)
