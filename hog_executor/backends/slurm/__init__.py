"""The ``slurm`` backend: bundles run as Slurm batch jobs, a ``map`` as one job array.

See ``docs/backends/slurm.md``. :mod:`.keys` checks the configuration keys, :mod:`.sbatch`
renders the job script and :mod:`.states` decides what a job's end means (pure functions),
:mod:`.watcher` follows every job of the process with one thread (through requeues),
:mod:`.clients` names the client of each job in its comment (``hog cancel``), :mod:`.backend`
ties them to the :class:`~hog_executor.backends.Backend` interface.
"""

from __future__ import annotations

from .backend import SlurmBackend
from .keys import default_shared_dir

__all__ = ["SlurmBackend", "default_shared_dir"]
