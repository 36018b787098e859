# /// script
# requires-python = ">=3.10"
# dependencies = []
# ///
"""The functions the benchmarks run remotely (this file travels inside every bundle).

Not a benchmark itself (the name does not start with ``bench_``, so ``nox -s bench`` skips
it). Keep it free of imports beyond the standard library: the benchmarks measure the cost of
the machinery, not of the function.
"""


def noop(x=None):
    """The trivial call: return the argument."""
    return x


def inc(x):
    """The trivial call of the map benchmark."""
    return x + 1


def dependency_version(name):
    """Import a distribution's top-level module and return its version (cold-env benchmark)."""
    import importlib
    import importlib.metadata

    importlib.import_module(name)
    return importlib.metadata.version(name)


def churn(n):
    """Allocate and free about ``n`` KiB (the runner memory benchmark)."""
    blocks = [bytearray(1024) for _ in range(n)]
    return len(blocks)


def rss_kib(_=None):
    """This process's resident memory, in KiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


if __name__ == "__main__":
    print("benchfuncs.py holds the functions the benchmarks run; run a bench_*.py file instead.")
