"""Development sessions: tests, lint, typecheck, docs, bench."""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "uv|virtualenv"

PYTHON = os.environ.get("HOG_NOX_PYTHON")  # None: the Python running nox


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite against an editable install."""
    session.install("-e", ".[test]")
    session.run("pytest", *(session.posargs or ["-ra"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff over the package, tests, examples and benchmarks."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "hog_executor", "tests", "examples", "benchmarks", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    session.install("-e", ".[dask]", "mypy>=1.11")
    session.run("mypy")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site strictly (warnings are errors)."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Run every benchmark; each prints ratios against a baseline measured in the same run.

    Each also records its tables in .bench/results/<bench>.json; at the end, benchmarks/plot.py
    draws them as docs/images/bench-<bench>.svg (a benchmark that did not run keeps its chart).
    """
    session.install("-e", ".[globus,dask]")
    session.install("dask[array]", "numpy", "proxystore")  # bench_dask.py
    session.install("matplotlib")  # benchmarks/plot.py
    results = os.environ.get("HOG_BENCH_RESULTS") or os.path.join(".bench", "results")
    shutil.rmtree(results, ignore_errors=True)  # the charts show this run only
    for name in sorted(os.listdir("benchmarks")):
        if name.startswith("bench_") and name.endswith(".py"):
            session.run("python", f"benchmarks/{name}", *session.posargs)
    session.run("python", "benchmarks/plot.py")
