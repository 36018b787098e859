# /// script
# requires-python = ">=3.10"
# dependencies = []
# ///
"""A Slurm client the journal tests start, kill, and start again.

Usage: python hogtest_journal_app.py ROOT ENV_CACHE SHARED PARTITION N [SBATCH_FLAG...].
Prints ``submitted`` once the map is sent, then one JSON line with the values.
"""

import json
import sys


def triple(x):
    return 3 * x


if __name__ == "__main__":
    import logging

    from hog_executor import HogExecutor

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root, env_cache, shared, partition, n = sys.argv[1:6]
    if "--leave" in sys.argv:  # submit, then exit at once without shutting down
        sys.argv.remove("--leave")
        ex = HogExecutor("slurm", partition=partition, shared_dir=shared, cache_dir=env_cache,
                         cache=root, poll_interval=0.5, max_parallel=4,
                         sbatch_flags=sys.argv[6:])
        ex.map(triple, range(int(n)))
        print("submitted", flush=True)
        sys.exit(0)
    with HogExecutor("slurm", partition=partition, shared_dir=shared, cache_dir=env_cache,
                     cache=root, poll_interval=0.5, max_parallel=4,
                     sbatch_flags=sys.argv[6:]) as ex:
        results = ex.map(triple, range(int(n)))
        print("submitted", flush=True)
        print(json.dumps({"values": list(results)}), flush=True)
