# /// script
# requires-python = ">=3.10"
# dependencies = []
# ///
"""A Globus Compute client the journal tests start, kill, and start again.

Usage: python hogtest_globus_journal_app.py ROOT ENV_CACHE ENDPOINT GATE N [--wait-journal].

Sends ``map(gated, range(N), [GATE] * N)`` (one task per call) through the stand-in service
of ``tests/globus_loopback.py`` that the environment names (see ``serve``). Prints
``submitted`` once the map is sent (with ``--wait-journal``: once the task id of every call
is in this process's journal), then one JSON line with the values.
"""

import json
import os
import sys
import time
from pathlib import Path


def gated(x, gate):
    """3 * x, once the file ``gate`` is gone."""
    while os.path.exists(gate):
        time.sleep(0.1)
    return 3 * x


def journaled(root):
    """The jobs of this process's journal whose task id is written."""
    jobs = set()
    for path in (Path(root) / "journal").glob(f"*-{os.getpid()}-*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line.partition(" ")[2])
            if record.get("t") == "sent" and record.get("task_id"):
                jobs.add(record["job"])
    return len(jobs)


if __name__ == "__main__":
    import logging

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # globus_loopback
    import globus_compute_sdk
    from globus_loopback import ServiceClient

    import hog_executor.cache
    from hog_executor import HogExecutor

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root, env_cache, endpoint, gate, n = sys.argv[1:6]
    sdk = globus_compute_sdk.Executor(client=ServiceClient.from_environment(dict(os.environ)))
    with HogExecutor(endpoint, cache_dir=env_cache, cache=root, globus_executor=sdk) as ex:
        results = ex.map(gated, range(int(n)), [gate] * int(n), chunksize=1)
        if "--wait-journal" in sys.argv:
            while journaled(root) < int(n):
                hog_executor.cache.flush()
                time.sleep(0.05)
        print("submitted", flush=True)
        print(json.dumps({"values": list(results)}), flush=True)
    sdk.shutdown(wait=False)
