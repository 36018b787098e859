"""HogExecutor as a Dask scheduler: dask's conformance suite, real graphs, real stores."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from typing import Any

import pytest

dask = pytest.importorskip("dask")
np = pytest.importorskip("numpy")
pytest.importorskip("proxystore")

import dask.array as da  # noqa: E402
from dask.callbacks import Callback  # noqa: E402
from dask.diagnostics import Profiler, ProgressBar  # noqa: E402
from dask.utils_test import GetFunctionTestMixin  # noqa: E402

from hog_executor import HogExecutor  # noqa: E402
from hog_executor.store import StoredRef  # noqa: E402

# One configuration for every test here: one remote environment (numpy + dask + proxystore).
MB = 1_000_000


@pytest.fixture(scope="module")
def dex(cache_dir: str):
    """The executor of these tests. Its environment takes a while to build and each graph
    makes many remote calls: the tests that use it are marked slow."""
    ex = HogExecutor("local", max_workers=2, cache_dir=cache_dir, dependencies=["numpy"])
    yield ex
    ex.shutdown(wait=True, cancel_futures=True, terminate=True)


def store_files(ex: HogExecutor) -> list[str]:
    """Objects (not markers) in the executor's private file store."""
    path = ex._state.client_store().owned_dir  # type: ignore[union-attr]
    return [n for n in os.listdir(path) if not n.endswith(".ready")] if path else []


class Crossing:
    """Counts the bytes that cross the client: payloads sent, outputs received, fetches."""

    def __init__(self, ex: HogExecutor) -> None:
        self.sent = 0
        self.received = 0
        self.fetched = 0
        self.jobs = 0
        backend = ex.backend
        store = ex._state.client_store()
        assert store is not None
        submit, get = backend.submit, store.get

        def counting_submit(jobs: Any) -> None:
            for job in jobs:
                self.jobs += 1
                self.sent += len(job.payload)
                job.future.add_done_callback(self._output)
            submit(jobs)

        def counting_get(ref: StoredRef) -> bytes:
            data = get(ref)
            self.fetched += len(data)
            return data

        backend.submit = counting_submit  # type: ignore[method-assign]
        store.get = counting_get  # type: ignore[method-assign]
        self._undo = lambda: (delattr(backend, "submit"), delattr(store, "get"))

    def _output(self, fut: Any) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self.received += len(fut.result().stdout)

    @property
    def total(self) -> int:
        return self.sent + self.received + self.fetched

    def close(self) -> None:
        self._undo()


# -- dask's conformance suite for get functions -----------------------------------------------

_current: dict[str, HogExecutor] = {}


def hog_get(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    return _current["ex"](dsk, keys, **kwargs)


@pytest.mark.slow
class TestGetFunction(GetFunctionTestMixin):
    """dask.utils_test.GetFunctionTestMixin, including its 10,000-deep chain."""

    get = staticmethod(hog_get)

    @pytest.fixture(autouse=True)
    def _executor(self, dex: HogExecutor):
        _current["ex"] = dex
        yield
        _current.pop("ex", None)


@pytest.mark.slow
def test_deep_chain_is_one_remote_call(dex: HogExecutor) -> None:
    from dask.utils_test import inc

    d: dict[Any, Any] = {f"x{i + 1}": (inc, f"x{i}") for i in range(10000)}
    d["x0"] = 0
    counter = Crossing(dex)
    try:
        assert dex(d, "x10000") == 10000
    finally:
        counter.close()
    assert counter.jobs == 1


# -- graphs from collections ------------------------------------------------------------------


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


class Boom(Exception):
    pass


def explode(x: int) -> int:
    raise Boom(f"bad input {x}")


def big(n: int, seed: int) -> Any:
    import numpy

    return numpy.full(n, float(seed))


def total(*arrays: Any) -> float:
    return float(sum(a.sum() for a in arrays))


@pytest.mark.slow
def test_delayed_pipeline_matches_synchronous(dex: HogExecutor) -> None:
    from dask import delayed

    parts = [delayed(inc)(i) for i in range(6)]
    pairs = [delayed(add)(a, b) for a, b in zip(parts[::2], parts[1::2], strict=True)]
    result = delayed(sum)(pairs)
    assert result.compute(scheduler=dex) == result.compute(scheduler="sync") == 21
    assert dask.compute(parts[0], result, scheduler=dex) == (1, 21)
    with dask.config.set(scheduler=dex):
        assert result.compute() == 21


@pytest.mark.slow
def test_array_reduction_and_map_blocks_match_numpy(dex: HogExecutor) -> None:
    data = np.arange(40_000, dtype=float).reshape(200, 200)
    x = da.from_array(data, chunks=(50, 100))
    y = x.map_blocks(np.sin) * 2 + 1
    np.testing.assert_allclose(y.sum(axis=0).compute(scheduler=dex),
                               (np.sin(data) * 2 + 1).sum(axis=0))
    np.testing.assert_allclose(x.mean().compute(scheduler=dex), data.mean())
    np.testing.assert_allclose(y.compute(scheduler=dex), np.sin(data) * 2 + 1)


@pytest.mark.slow
def test_error_keeps_its_type_and_callbacks_see_failure(dex: HogExecutor) -> None:
    from dask import delayed

    seen: dict[str, Any] = {}

    def finish(dsk: Any, state: Any, failed: bool) -> None:
        seen["failed"] = failed

    value = delayed(inc)(delayed(explode)(delayed(inc)(1)))
    with Callback(finish=finish), pytest.raises(Boom, match="bad input 2"):
        value.compute(scheduler=dex)
    assert seen["failed"] is True
    assert dex._state.client_store().live == 0  # type: ignore[union-attr]


@pytest.mark.slow
def test_progress_bar_and_callbacks(dex: HogExecutor) -> None:
    from dask import delayed

    events: list[tuple[str, Any]] = []

    def start_state(dsk: Any, state: Any) -> None:
        events.append(("start_state", sorted(state)))

    def pretask(key: Any, dsk: Any, state: Any) -> None:
        events.append(("pre", key))

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker: Any) -> None:
        events.append(("post", key))

    def finish(dsk: Any, state: Any, failed: bool) -> None:
        events.append(("finish", failed))

    a, b = delayed(inc)(1), delayed(inc)(2)
    c = delayed(add)(a, b)
    out = io.StringIO()
    with ProgressBar(out=out, dt=0.01), Profiler() as prof, \
            Callback(start_state=start_state, pretask=pretask, posttask=posttask, finish=finish):
        assert c.compute(scheduler=dex) == 5
    assert "100%" in out.getvalue()
    assert len(prof.results) == 3 and all(r.end_time >= r.start_time for r in prof.results)
    assert events[0] == ("start_state", ["cache", "dependencies", "dependents", "finished",
                                         "ready", "released", "running", "waiting",
                                         "waiting_data"])
    pre = [k for e, k in events if e == "pre"]
    post = [k for e, k in events if e == "post"]
    assert sorted(map(str, pre)) == sorted(map(str, post)) and len(pre) == 3
    assert events[-1] == ("finish", False)


@pytest.mark.slow
def test_intermediates_stay_remote(dex: HogExecutor) -> None:
    """Four 4 MB intermediates (over proxy_threshold): only handles cross the client."""
    from dask import delayed

    n = 500_000  # 4 MB of float64 each
    parts = [delayed(big)(n, seed) for seed in range(4)]
    result = delayed(total)(*parts)
    counter = Crossing(dex)
    try:
        assert result.compute(scheduler=dex) == n * (0 + 1 + 2 + 3)
    finally:
        counter.close()
    intermediate = 4 * n * 8
    assert counter.total < intermediate / 100, vars(counter)
    assert counter.fetched == 0
    assert dex._state.client_store().live == 0  # type: ignore[union-attr]
    assert store_files(dex) == []


@pytest.mark.slow
def test_large_final_result_comes_through_the_store(dex: HogExecutor) -> None:
    from dask import delayed

    value = delayed(big)(300_000, 7)
    got = value.compute(scheduler=dex)
    assert got.shape == (300_000,) and float(got[0]) == 7.0
    assert dex._state.client_store().live == 0  # type: ignore[union-attr]
    assert store_files(dex) == []


@pytest.mark.slow
def test_persist_keeps_chunks_remote(cache_dir: str) -> None:
    ex = HogExecutor("local", max_workers=2, cache_dir=cache_dir, dependencies=["numpy"])
    try:
        x = da.ones((4_000_000,), chunks=(1_000_000,)) * 3  # four 8 MB chunks
        y = ex.persist(x)
        chunks = list(dict(y.__dask_graph__()).values())
        assert chunks and all(isinstance(c, StoredRef) for c in chunks)
        store = ex._state.client_store()
        assert store is not None and store.live == 4
        assert float(y.sum().compute(scheduler=ex)) == 12_000_000.0
        assert float((y + 1).max().compute(scheduler=ex)) == 4.0
        assert store.live == 4  # the persisted chunks are still there
        path = store.owned_dir
    finally:
        ex.shutdown()
    assert store.live == 0
    assert path is not None and not os.path.exists(path)


def test_import_hog_executor_does_not_import_dask() -> None:
    code = ("import sys, hog_executor; hog_executor.HogExecutor; "
            "bad = [m for m in ('dask', 'proxystore', 'numpy') if m in sys.modules]; "
            "assert not bad, bad")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
