"""What travels by value is decided per pickle, from the pickled objects alone.

Functions, classes and modules of local modules (files the remote side cannot import: not
installed, not the script) travel by value in every pickle that reaches them, whatever was
submitted before; the script's own local modules travel with it and are imported remotely.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import cloudpickle
import hogtest_boxes as boxes
import hogtest_cycle_a as cycle_a
import hogtest_helpers as helpers
import hogtest_nested as nested
import hogtest_unbox as unbox
import pytest

from hog_executor import HogExecutor, payload
from hog_executor.executor import swap_backend

SCRIPTS = Path(__file__).resolve().parent / "scripts"


def registered_test_modules() -> list[str]:
    """The tests' local modules registered with cloudpickle for the whole process."""
    return [m for m in cloudpickle.list_registry_pickle_by_value() if m.startswith("hogtest_")]


def without_scripts() -> dict[str, str]:
    """This environment, with the tests' scripts directory off ``PYTHONPATH`` (bundles run
    with the client's environment: they must not find the local modules through it)."""
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    kept = [p for p in paths if p and Path(p).resolve() != SCRIPTS]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(kept)}


def run_elsewhere(data: bytes, code: str, tmp_path: Path) -> str:
    """Unpickle ``data`` as ``obj`` in a fresh interpreter that cannot import the tests'
    local modules, run ``code`` there and return what it prints."""
    program = f"import pickle, sys\nobj = pickle.loads(sys.stdin.buffer.read())\n{code}\n"
    proc = subprocess.run([sys.executable, "-c", program], input=data, cwd=tmp_path,
                          env=without_scripts(),
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode().strip()


def test_local_objects_in_nested_containers_travel_by_value(tmp_path):
    data = payload.dumps((boxes.double, {"boxes": [boxes.Box(3)], "kinds": (boxes.Box,)}))
    code = "fn, d = obj\nprint(fn(d['boxes'][0].value), d['kinds'][0](2).value)"
    assert run_elsewhere(data, code, tmp_path) == "6 2"


def test_modules_referring_to_each_other_travel_by_value(tmp_path):
    assert run_elsewhere(payload.dumps(cycle_a.f), "print(obj())", tmp_path) == "51"


def test_a_pickle_does_not_depend_on_what_was_pickled_before():
    before = payload.dumps(boxes.Box(1))
    payload.dumps(boxes.double)
    payload.dumps(boxes.make_box)
    assert payload.dumps(boxes.Box(1)) == before
    # Nothing is registered with cloudpickle for the whole process.
    assert not registered_test_modules()
    assert b"Box" in cloudpickle.dumps(boxes.Box) and len(cloudpickle.dumps(boxes.Box)) < 100


def test_installed_and_script_objects_still_travel_by_reference():
    assert len(payload.dumps(pickle.dumps)) < 60  # by name
    data = payload.dumps(unbox.unbox, sys.modules["hogtest_unbox"])
    assert b"__hog_script__" in data and len(data) < 200


def test_the_script_module_object_travels_as_the_remote_script():
    module = sys.modules["hogtest_unbox"]
    data = payload.dumps({"mod": module}, module)
    assert b"__hog_script__" in data and b"rebox" not in data


ORDER_PROGRAM = """
import sys

sys.path.insert(0, sys.argv[3])  # not PYTHONPATH: the bundles would inherit it

import cloudpickle
import hogtest_boxes
import hogtest_unbox

from hog_executor import HogExecutor

with HogExecutor("local", max_workers=1, cache_dir=sys.argv[2]) as ex:
    def box_call():
        return ex.submit(hogtest_unbox.unbox, hogtest_boxes.Box(7)).result(timeout=300)

    def module_call():
        return ex.submit(hogtest_boxes.double, 4).result(timeout=300)

    if sys.argv[1] == "box-first":
        results = [box_call(), module_call()]
    else:
        results = [module_call(), box_call()]
    assert not [m for m in cloudpickle.list_registry_pickle_by_value()
                if m.startswith("hogtest_")]
    print(results)
"""


@pytest.mark.parametrize("order", ["box-first", "module-first"])
def test_a_local_class_argument_works_whatever_was_submitted_before(order, cache_dir, tmp_path):
    # Box comes from a local module that is not the script: it used to travel by reference
    # (ModuleNotFoundError remotely) until a function of its module had been submitted.
    proc = subprocess.run([sys.executable, "-c", ORDER_PROGRAM, order, cache_dir, str(SCRIPTS)],
                          env=without_scripts(), cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    expected = "[7, 8]" if order == "box-first" else "[8, 7]"
    assert proc.stdout.strip().splitlines()[-1] == expected


def test_local_classes_come_back_as_the_clients_own(executor):
    back = executor.submit(unbox.rebox, boxes.Box(1)).result(timeout=300)
    assert type(back) is boxes.Box and back.value == 2


def test_nested_local_modules_of_the_script_travel_with_it(executor):
    # hogtest_nested imports hogtest_helpers, which imports hogtest_helpers2.
    assert executor.submit(nested.run, 3).result(timeout=300) == 31
    # Shipped modules are imported remotely by name: their classes are one class there.
    assert executor.submit(nested.is_item, helpers.Item(1)).result(timeout=300) is True
    assert type(executor.submit(nested.make_item, 2).result(timeout=300)) is helpers.Item
    remote_file = executor.submit(nested.helpers_file).result(timeout=300)
    assert remote_file.endswith("hogtest_helpers.py") and remote_file != helpers.__file__


def test_the_bundle_carries_the_scripts_local_modules(cache_dir):
    from hog_executor.backends.capture import CapturingBackend

    ex = HogExecutor("local", cache_dir=cache_dir)
    capture = CapturingBackend()
    real = swap_backend(ex, capture)
    try:
        ex.submit(nested.run, 1)
        (job,) = capture.jobs
        assert "hog_put hogtest_helpers.py " in job.bundle
        assert "hog_put hogtest_helpers2.py " in job.bundle
        assert "hogtest_boxes" not in job.bundle  # a sibling the script does not import
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
        real.shutdown(wait=True)


def test_local_module_functions_without_a_script_travel_by_value(executor):
    assert executor.submit(helpers.f, 3).result(timeout=300) == 31
    # via_module refers to the module object hogtest_helpers2: it travels by value too.
    assert executor.submit(helpers.via_module, 3).result(timeout=300) == 32


@pytest.mark.slow
def test_dask_tasks_with_local_functions_as_arguments(cache_dir):
    dask = pytest.importorskip("dask")
    db = pytest.importorskip("dask.bag")
    ex = HogExecutor("local", max_workers=2, cache_dir=cache_dir)
    try:
        bag = db.from_sequence(range(10), npartitions=3)
        mapped, folded = dask.compute(
            bag.map(helpers.f),
            bag.foldby(helpers.parity, helpers.add, 0, helpers.add, 0),
            scheduler=ex,
        )
        assert mapped == [10 * x + 1 for x in range(10)]
        assert dict(folded) == {0: 20, 1: 25}
        assert not registered_test_modules()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def test_local_packages_with_relative_imports_travel_with_the_script(executor, tmp_path,
                                                                    monkeypatch):
    import importlib

    pkg = tmp_path / "hogtest_tmppkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .tools import scale\n")
    (pkg / "tools.py").write_text("from .sub.deep import BASE\n\ndef scale(x):\n"
                                  "    return BASE * x\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "deep.py").write_text("BASE = 7\n")
    (tmp_path / "hogtest_tmpscript.py").write_text(
        "# /// script\n# dependencies = []\n# ///\n"
        "import hogtest_tmppkg\n\ndef run(x):\n    return hogtest_tmppkg.scale(x)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("hogtest_tmp")]:
        monkeypatch.delitem(sys.modules, name)
    script = importlib.import_module("hogtest_tmpscript")
    try:
        assert executor.submit(script.run, 3).result(timeout=300) == 21
    finally:
        for name in [m for m in sys.modules if m.startswith("hogtest_tmp")]:
            del sys.modules[name]
