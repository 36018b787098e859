# /// script
# requires-python = ">=3.10"
# dependencies = ["numpy"]
#
# [tool.hog.anvil]
# endpoint = "5aafb4c1-27b2-40d8-a038-a0277611868f"   # your Globus Compute endpoint UUID
# account = "cis230000"                                # -> user_endpoint_config.account
# partition = "shared"
# walltime = "00:10:00"                                # per call, enforced by the bundle
# user_endpoint_config = { walltime = "01:00:00", cores_per_node = 8 }
#
# [tool.hog.anvil.debug]
# partition = "debug"
# walltime = 60
#
# [tool.hog.anvil.mpi]
# partition = "wholenode"
# resource_specification = { num_nodes = 2, ranks_per_node = 4 }
# ///
"""Run functions on a Globus Compute endpoint, with the environment declared above.

    python examples/globus_endpoint.py             # uses [tool.hog.anvil]
    python examples/globus_endpoint.py anvil.debug # the variant: debug partition, 60 s

Replace the UUID with your endpoint's (``globus-compute-endpoint list``) and the account and
partition with yours: the keys other than ``endpoint``, ``walltime`` and the hog keys go to
the endpoint's ``user_endpoint_config``, whose template decides what they mean. The first run
logs in to Globus in a terminal; the endpoint builds the numpy environment once (with uv) and
reuses it for every later call.
"""

from __future__ import annotations

import sys

from hog_executor import HogExecutor, RemoteProcessError


def column_norms(seed: int, n: int = 500) -> list[float]:
    """Norms of the columns of a random n x n matrix."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [float(v) for v in np.linalg.norm(rng.standard_normal((n, n)), axis=0)[:3]]


def where() -> str:
    import os
    import platform

    return f"{platform.node()} (pid {os.getpid()}, {os.environ.get('SLURM_JOB_ID', 'no job')})"


if __name__ == "__main__":
    endpoint = sys.argv[1] if len(sys.argv) > 1 else "anvil"
    with HogExecutor(endpoint) as ex:
        first = ex.submit(where)
        print("runs on", first.result(), "as task", first.task_id)
        # 200 calls, one registered function, a few batched requests: only payloads travel.
        norms = list(ex.map(column_norms, range(200)))
        print(f"{len(norms)} results; first: {norms[0]}")
        # Another account for a few calls: a separate SDK executor with its own config.
        other = ex.options(account="cis230001")
        print("other account:", other.submit(where).result())
        try:
            ex.options(walltime=5).submit(column_norms, 0, 20_000).result()
        except RemoteProcessError as err:  # WalltimeExceeded is a RemoteProcessError
            print(f"too slow for 5 s: {type(err).__name__}")
