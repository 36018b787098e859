"""Imports: undeclared packages are an error at submit, before anything is sent; calls without
a PEP 723 block get the packages their pickles refer to."""

from __future__ import annotations

import base64
import logging
import pickle
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import hogtest_nested as nested
import hogtest_undeclared as undeclared
import numpy as np
import pytest
import scipy

from hog_executor import HogExecutor, MetadataError, imports
from hog_executor.backends.capture import CapturingBackend
from hog_executor.cli.app import main
from hog_executor.errors import UndeclaredImportError
from hog_executor.executor import swap_backend
from hog_executor.script import load_script

SCRIPTS = Path(__file__).resolve().parent / "scripts"


@pytest.fixture
def captured(cache_dir: str) -> Iterator[tuple[HogExecutor, CapturingBackend]]:
    """A local executor whose jobs are captured instead of run."""
    ex = HogExecutor("local", cache_dir=cache_dir)
    capture = CapturingBackend()
    real = swap_backend(ex, capture)
    yield ex, capture
    ex.shutdown(wait=True, cancel_futures=True)
    real.shutdown(wait=True)


def write_script(tmp_path: Path, dependencies: str, body: str, name: str = "job.py") -> Path:
    path = tmp_path / name
    path.write_text(f"# /// script\n# dependencies = {dependencies}\n# ///\n"
                    + textwrap.dedent(body))
    return path


# -- reading imports ---------------------------------------------------------------------------

def test_imports_are_read_at_module_level_and_inside_functions():
    sites = imports.scan_imports(textwrap.dedent("""
        import os, scipy.linalg as la
        from numpy import array
        from . import sibling
        try:
            import yaml
        except ImportError:
            yaml = None
        try:
            import a1
        except (ValueError, ModuleNotFoundError):
            pass
        try:
            import a2
        except ValueError:
            pass
        if TYPE_CHECKING:
            import pandas

        def f():
            import h5py
            class C:
                def g(self):
                    from xarray import DataArray

        @hog.harness()
        def main():
            import matplotlib

        if __name__ == "__main__":
            import seaborn
    """))
    found = {s.module: s for s in sites}
    assert set(found) == {"os", "scipy.linalg", "numpy", "", "yaml", "a1", "a2", "pandas",
                          "h5py", "xarray", "matplotlib", "seaborn"}
    assert found["numpy"].names == ("array",)
    assert found[""].level == 1
    assert found["yaml"].guarded and found["a1"].guarded and found["pandas"].guarded
    # Code that runs only on the client: a harness, the __main__ block.
    assert found["matplotlib"].guarded and found["seaborn"].guarded
    assert not found["a2"].guarded and not found["h5py"].guarded
    assert found["xarray"].line == 24


def test_relative_imports_of_local_packages_resolve(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .inner import value\n")
    (pkg / "inner.py").write_text("from . import deeper\nvalue = deeper.x\n")
    (pkg / "deeper.py").write_text("x = 1\n")
    (tmp_path / "other.py").write_text("y = 2\n")
    script = write_script(tmp_path, "[]", "import pkg\nfrom other import y\nimport json\n")
    found = imports.analyze(str(script), load_script(script).source)
    assert [m.relpath for m in found.local] == ["pkg/__init__.py", "other.py", "pkg/inner.py",
                                                "pkg/deeper.py"]
    assert found.local_names == {"pkg", "other"}


# -- the check at submit -----------------------------------------------------------------------

def test_an_undeclared_import_fails_at_submit_and_nothing_is_sent(captured):
    ex, capture = captured
    with pytest.raises(UndeclaredImportError) as info:
        ex.submit(undeclared.version)
    err = info.value
    assert isinstance(err, MetadataError)
    text = str(err)
    assert "hogtest_undeclared.py:9: import scipy: distribution scipy " \
           f"{scipy.__version__} is installed here" in text
    assert "import numpy" in text  # inside a function
    assert re.search(r"Fix: hog add \S*hogtest_undeclared\.py scipy numpy", text)
    # Guarded imports, TYPE_CHECKING imports and local modules are not errors.
    assert {m.module for m in err.missing} == {"scipy", "numpy"}
    assert err.missing[0].version == scipy.__version__
    with pytest.raises(UndeclaredImportError):
        list(ex.map(undeclared.version, range(3)))
    assert capture.submits == 0 and not capture.jobs
    assert not ex._state.jobs


def test_the_error_pickles():
    with pytest.raises(UndeclaredImportError) as info:
        imports.check_script(undeclared.__file__, load_script(undeclared.__file__))
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and again.missing == info.value.missing


def test_check_imports_false_lets_the_call_go(captured, cache_dir):
    ex, capture = captured
    ex.options(check_imports=False).submit(undeclared.version)
    assert capture.submits == 1
    other = HogExecutor("local", cache_dir=cache_dir, check_imports=False)
    swap_backend(other, CapturingBackend()).shutdown(wait=True)
    other.submit(undeclared.version)
    other.shutdown(cancel_futures=True)


def test_declared_packages_and_what_they_require_are_accepted(tmp_path):
    # scipy requires numpy: numpy will be there remotely.
    script = write_script(tmp_path, '["SciPy>=1"]', "import scipy\nimport numpy\n")
    imports.check_script(str(script), load_script(script))
    bare = write_script(tmp_path, "[]", "import numpy\nimport cloudpickle\n"
                        "import hog_executor\n", name="bare.py")
    with pytest.raises(UndeclaredImportError) as info:
        imports.check_script(str(bare), load_script(bare))
    assert [m.module for m in info.value.missing] == ["numpy"]


def test_imports_of_the_scripts_local_modules_are_checked_too(tmp_path):
    (tmp_path / "helper.py").write_text("def f():\n    import scipy\n")
    script = write_script(tmp_path, "[]", "from helper import f\n")
    with pytest.raises(UndeclaredImportError, match=r"helper\.py:2: import scipy"):
        imports.check_script(str(script), load_script(script))


def test_the_check_reads_a_script_once(captured, tmp_path, monkeypatch):
    ex, _ = captured
    calls = []
    real = imports._analyze
    monkeypatch.setattr(imports, "_analyze", lambda *a: calls.append(a) or real(*a))
    for fn in (nested.run, nested.is_item, nested.make_item):
        ex.submit(fn, 1)
        ex.submit(fn, 2)
    assert len(calls) <= 1


def test_hog_check(capsys):
    assert main(["check", str(SCRIPTS / "hogtest_undeclared.py")]) == 1
    out = capsys.readouterr().out
    assert "import scipy" in out and "Fix: hog add" in out
    assert main(["check", str(SCRIPTS / "hogtest_nested.py")]) == 0
    out = capsys.readouterr().out
    assert "hogtest_helpers.py, hogtest_helpers2.py" in out and "every import is declared" in out
    assert main(["check", str(SCRIPTS / "hogtest_noblock.py")]) == 0
    assert "hog add" in capsys.readouterr().out


# -- inferred dependencies ---------------------------------------------------------------------

def numpy_total(n):
    return int(np.arange(n).sum())


def test_calls_without_a_block_get_what_their_pickle_refers_to(captured, caplog):
    ex, _ = captured
    caplog.set_level(logging.INFO, logger="hog_executor")
    ex.submit(numpy_total, 3)
    ex.submit(numpy_total, 4)
    ex.options(walltime=10).submit(numpy_total, 5)
    env = ex._contexts.get(numpy_total).spec.env
    pin = f"numpy=={np.__version__}"
    assert env.inferred == (pin,)
    assert pin in env.metadata
    logged = [r for r in caplog.records if pin in r.getMessage()]
    assert len(logged) == 1 and "numpy_total" in logged[0].getMessage()


def test_declared_dependencies_win_over_inferred_ones(cache_dir):
    ex = HogExecutor("local", cache_dir=cache_dir, dependencies=["numpy>=1"])
    try:
        env = ex._contexts.get(numpy_total).spec.env
        assert env.inferred == () and "numpy>=1" in env.metadata
        assert "numpy==" not in env.metadata
    finally:
        ex.shutdown()


def test_hog_bundle_shows_the_inferred_dependencies(capsys):
    assert main(["bundle", f"{SCRIPTS / 'hogtest_noblock.py'}:total", "3", "-o", "-"]) == 0
    bundle = capsys.readouterr().out
    (line,) = [ln for ln in bundle.splitlines() if ln.startswith("hog_put .hog_env.py ")]
    metadata = base64.b64decode(line.split()[2]).decode()
    assert f"numpy=={np.__version__}" in metadata


@pytest.mark.slow
def test_a_dask_array_without_a_block_gets_numpy(cache_dir, caplog):
    da = pytest.importorskip("dask.array")
    caplog.set_level(logging.INFO, logger="hog_executor")
    ex = HogExecutor("local", max_workers=2, cache_dir=cache_dir)  # no dependencies
    try:
        assert da.ones((100,), chunks=10).sum().compute(scheduler=ex) == 100
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    assert any(f"numpy=={np.__version__}" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_a_no_block_call_gets_what_its_arguments_need(cache_dir):
    import hogtest_noblock_args as noblock
    import numpy as np

    from hog_executor import HogExecutor

    with HogExecutor("local", max_workers=1, cache_dir=cache_dir) as ex:
        # The function's module imports nothing; numpy reaches the call as an argument.
        assert ex.submit(noblock.total, np.arange(4)).result(timeout=600) == 6.0
