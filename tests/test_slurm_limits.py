"""A ``map`` larger than the cluster's ``MaxArraySize`` allows, on a real cluster that sets
it small (``tests/services/slurm-start.sh`` configures ``MaxArraySize=64``): the calls go out
as several arrays, each within the limit, and every result arrives."""

from __future__ import annotations

import hogtest_basic as basic
import pytest
from test_slurm import _sbatch_log

from hog_executor import HogExecutor
from hog_executor.backends.slurm import backend as slurm_backend


@pytest.mark.slow
def test_a_map_larger_than_the_clusters_max_array_size(slurm_cluster, tmp_path, cache_dir,
                                                       monkeypatch):
    limit = slurm_backend.cluster_limits().max_array_size
    assert limit is not None and limit <= 100, (
        f"the test cluster has MaxArraySize={limit}; restart it with "
        "tests/services/slurm-start.sh, which sets 64")
    log = _sbatch_log(tmp_path, monkeypatch)
    n = limit + 6
    with HogExecutor("slurm", partition=slurm_cluster.partition,
                     shared_dir=str(tmp_path / "shared"), cache_dir=cache_dir,
                     poll_interval=0.2) as ex:
        assert list(ex.map(basic.square, range(n), chunksize=1)) == [x * x for x in range(n)]
    lines = log.read_text().splitlines()
    arrays = [ln for ln in lines if ln.startswith("#SBATCH --array=")]
    assert arrays == [f"#SBATCH --array=0-{limit - 1}", "#SBATCH --array=0-5"]
    assert sum(ln.startswith("job ") for ln in lines) == 2
