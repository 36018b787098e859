"""The result cache: keys, hits in new processes, edits, trust.

Each client run is a new process (``tests/scripts/hogtest_cache_app.py``, copied and edited
per test); it counts the jobs that reached the backend, and the function logs every real run.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import hogtest_basic as basic
import pytest
from conftest import SCRIPTS

from hog_executor import HogExecutor
from hog_executor import cache as _cache
from hog_executor.errors import ConfigError

APP = SCRIPTS / "hogtest_cache_app.py"
STORE_APP = SCRIPTS / "hogtest_cache_store_app.py"


def run_app(app: Path, root: Path, env_cache: str, log: Path, n: int = 3
            ) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, str(app), str(root), env_cache, str(log), str(n)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "XDG_CACHE_HOME": str(root.parent / "xdg")})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def runs(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture
def app(tmp_path: Path) -> Path:
    copy = tmp_path / "app" / "cacheapp.py"
    copy.parent.mkdir()
    shutil.copy(APP, copy)
    return copy


def edit(app: Path, old: str, new: str) -> None:
    text = app.read_text()
    assert old in text
    app.write_text(text.replace(old, new, 1))


def test_rerun_in_a_new_process_is_a_hit(app: Path, tmp_path: Path, cache_dir: str) -> None:
    root, log = tmp_path / "results", tmp_path / "log"
    first, _ = run_app(app, root, cache_dir, log)
    assert first == {"values": [1, 3, 5], "cached": [False] * 3, "jobs": 3}
    assert runs(log) == 3
    again, _ = run_app(app, root, cache_dir, log)
    assert again == {"values": [1, 3, 5], "cached": [True] * 3, "jobs": 0}
    assert runs(log) == 3  # nothing ran
    # Clients that exit normally leave no journal: every job was done.
    assert not list((root / "journal").glob("*.jsonl"))
    # Entries are private, and so is the key that authenticates them.
    for path in root.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path
    key = tmp_path / "xdg" / "hog-executor" / "results.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_edits_change_the_key_only_where_they_matter(app: Path, tmp_path: Path,
                                                     cache_dir: str) -> None:
    root, log = tmp_path / "results", tmp_path / "log"
    run_app(app, root, cache_dir, log)
    # Another function edited, code moved down, a comment added: still hits.
    edit(app, 'return "a"', 'return "b"')
    edit(app, "def helper(x):", "# a comment\n\n\ndef helper(x):")
    out, _ = run_app(app, root, cache_dir, log)
    assert out["cached"] == [True] * 3 and out["jobs"] == 0 and runs(log) == 3
    # The helper the function calls: a miss.
    edit(app, "return x * 2", "return x * 3")
    out, _ = run_app(app, root, cache_dir, log)
    assert out == {"values": [1, 4, 7], "cached": [False] * 3, "jobs": 3}
    # The function itself: a miss.
    edit(app, "return helper(x) + 1", "return helper(x) + 2")
    out, _ = run_app(app, root, cache_dir, log)
    assert out == {"values": [2, 5, 8], "cached": [False] * 3, "jobs": 3}
    assert runs(log) == 9


@pytest.mark.parametrize("damage", ["tamper", "truncate"])
def test_a_damaged_entry_is_refused_then_recomputed(app: Path, tmp_path: Path, cache_dir: str,
                                                    damage: str) -> None:
    root, log = tmp_path / "results", tmp_path / "log"
    run_app(app, root, cache_dir, log, n=2)
    entries = sorted(p for p in root.rglob("*") if p.is_file() and len(p.parent.name) == 2)
    assert len(entries) == 2
    victim = entries[0]
    data = bytearray(victim.read_bytes())
    if damage == "tamper":
        data[-3] ^= 0x01  # one bit of the pickled value
    else:
        data = data[: len(data) // 2]
    victim.write_bytes(bytes(data))
    out, stderr = run_app(app, root, cache_dir, log, n=2)
    assert "refused" in stderr and str(victim) in stderr
    assert out["values"] == [1, 3] and sorted(out["cached"]) == [False, True]
    assert out["jobs"] == 1 and runs(log) == 3
    out, stderr = run_app(app, root, cache_dir, log, n=2)  # stored again, authentic
    assert out["cached"] == [True, True] and "refused" not in stderr


def _keys(ex: HogExecutor, fn, *args) -> str | None:
    from hog_executor import payload

    ctx = ex._contexts.get(fn)
    item = payload.dumps_call(args, {}, ctx.module)
    return _cache.context_keys(ex, ctx, [item], [[]])[0]


def test_a_pinned_dependency_is_part_of_the_key(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    script = tmp_path / "deps.py"
    text = (SCRIPTS / "hogtest_deps.py").read_text()
    keys = []
    for pin in ("six==1.16.0", "six==1.17.0", "six==1.16.0"):
        script.write_text(text.replace("six==1.16.0", pin))
        with HogExecutor("local", script=script, cache=True) as ex:
            keys.append(_keys(ex, basic.square, 3))
    assert keys[0] is not None and keys[0] != keys[1] and keys[0] == keys[2]
    locks = list((tmp_path / "xdg" / "hog-executor" / "results" / "envs").iterdir())
    assert {p.read_text().strip() for p in locks} == {"six==1.16.0", "six==1.17.0"}


def test_env_values_and_arguments_are_part_of_the_key(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with HogExecutor("local", cache=True) as ex:
        a = _keys(ex, basic.square, 3)
        assert a == _keys(ex, basic.square, 3)
        assert a != _keys(ex, basic.square, 4)
        assert a != _keys(ex.options(env={"X": "1"}), basic.square, 3)
        assert a != _keys(ex, basic.add, 3)


def test_function_key_ignores_place_and_follows_code() -> None:
    ns: dict = {}
    exec(compile("def f(x):\n    return g(x)\ndef g(x):\n    return x\n", "a.py", "exec"), ns)
    moved: dict = {}
    exec(compile("\n\n\ndef g(x):\n    return x\n\ndef f(x):\n    return g(x)\n", "b.py",
                 "exec"), moved)
    edited: dict = {}
    exec(compile("def f(x):\n    return g(x)\ndef g(x):\n    return x + 1\n", "a.py", "exec"),
         edited)
    key = _cache.function_key(ns["f"])
    assert key == _cache.function_key(moved["f"])
    assert key != _cache.function_key(edited["f"])


def test_failures_are_kept_only_when_asked(executor: HogExecutor, tmp_path: Path,
                                           monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    plain = executor.options(cache=str(tmp_path / "r1"))
    with pytest.raises(basic.CustomError):
        plain.submit(basic.fail_custom, "boom").result()
    f = plain.submit(basic.fail_custom, "boom")
    with pytest.raises(basic.CustomError):
        f.result()
    assert not f.cached
    keep = executor.options(cache=str(tmp_path / "r2"), cache_failures=True)
    with pytest.raises(basic.CustomError):
        keep.submit(basic.fail_custom, "boom").result()
    f = keep.submit(basic.fail_custom, "boom")
    with pytest.raises(basic.CustomError, match="boom"):
        f.result()
    assert f.cached


def test_a_call_seen_before_is_answered_from_memory(executor: HogExecutor,
                                                    tmp_path: Path) -> None:
    root = tmp_path / "r"
    ex = executor.options(cache=str(root))
    first = ex.submit(basic.identity, [1, 2])
    assert first.result() == [1, 2] and not first.cached
    assert _cache.flush(60)
    (entry,) = root.glob("??/*")
    entry.unlink()
    again = ex.submit(basic.identity, [1, 2])
    assert again.result() == [1, 2] and again.cached  # remembered: no file read
    again.result().append(3)  # each hit unpickles its own value
    assert ex.submit(basic.identity, [1, 2]).result() == [1, 2]
    _cache.forget()
    fresh = ex.submit(basic.identity, [1, 2])
    assert fresh.result() == [1, 2] and not fresh.cached  # the file is gone: it ran again
    assert _cache.flush(60) and len(list(root.glob("??/*"))) == 1


def test_a_shared_or_foreign_directory_is_refused(executor: HogExecutor,
                                                  tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    with pytest.raises(ConfigError, match="0700"):
        executor.options(cache=str(open_dir)).submit(basic.square, 2)


def test_no_cache_costs_no_lookup(executor: HogExecutor, monkeypatch) -> None:
    def boom(*a, **k):
        raise AssertionError("the cache was consulted")

    monkeypatch.setattr(_cache, "submit_cached", boom)
    assert executor.submit(basic.square, 3).result() == 9
    assert not executor.submit(basic.square, 3).cached


@pytest.mark.slow
def test_a_dask_pipeline_reruns_only_what_an_edit_touches(tmp_path: Path,
                                                          cache_dir: str) -> None:
    pytest.importorskip("dask")
    app = tmp_path / "pipeline.py"
    shutil.copy(SCRIPTS / "hogtest_cache_dask.py", app)
    root, log = tmp_path / "results", tmp_path / "log"

    def run() -> int:
        proc = subprocess.run([sys.executable, str(app), str(root), cache_dir, str(log)],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")})
        assert proc.returncode == 0, proc.stderr
        return int(json.loads(proc.stdout.strip().splitlines()[-1]))

    assert run() == 20
    assert log.read_text().split() == ["load", "scale", "total"]
    assert run() == 20
    assert log.read_text().split() == ["load", "scale", "total"]  # nothing ran
    edit(app, "return sum(xs)", "return sum(xs) + 1")
    assert run() == 21
    assert log.read_text().split() == ["load", "scale", "total", "total"]
    edit(app, "return [2 * x for x in xs]", "return [3 * x for x in xs]")
    assert run() == 31
    assert log.read_text().split() == ["load", "scale", "total", "total", "scale", "total"]


def test_hog_results_list_show_prune(app: Path, tmp_path: Path, cache_dir: str,
                                     capsys, monkeypatch) -> None:
    from hog_executor.cli.app import main

    root, log = tmp_path / "results", tmp_path / "log"
    run_app(app, root, cache_dir, log, n=3)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the clients' key
    monkeypatch.setattr(_cache, "_hmac_key", None)
    assert main(["results", "list", "--dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "3 result(s)" in out and "cacheapp.py:work" in out
    key = next(p.name for p in root.rglob("*") if p.is_file() and len(p.parent.name) == 2)
    assert main(["results", "show", key[:10], "--dir", str(root), "--value"]) == 0
    assert f"key: {key}" in capsys.readouterr().out
    old = time.time() - 10 * 86400
    for p in [p for p in root.rglob("*") if p.is_file() and len(p.parent.name) == 2][:2]:
        os.utime(p, (old, old))
    assert main(["results", "prune", "--older-than", "5", "--dir", str(root)]) == 0
    assert "removed 2 result(s)" in capsys.readouterr().out
    assert main(["results", "prune", "--max-size", "1", "--dir", str(root)]) == 0
    assert "removed 1 result(s)" in capsys.readouterr().out
    assert main(["results", "list", "--dir", str(root)]) == 0
    assert "0 result(s)" in capsys.readouterr().out
    monkeypatch.setattr(_cache, "_hmac_key", None)


def test_a_large_argument_through_the_store_is_keyed_by_its_content(tmp_path: Path,
                                                                    cache_dir: str) -> None:
    """Its handle in the store is named at random; the key takes the stored bytes' digest."""
    import hashlib

    root, log = tmp_path / "results", tmp_path / "log"

    def run(seed: str) -> dict:
        proc = subprocess.run([sys.executable, str(STORE_APP), str(root), cache_dir, str(log),
                               seed], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")})
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    expected = hashlib.sha256(b"a" * 300_000).hexdigest()
    first = run("a")
    assert first["value"] == expected and not first["cached"] and first["jobs"] == 1
    assert first["stored"] and first["payload"] < 100_000  # the argument went to the store
    again = run("a")  # a new process, a new store, a new random handle
    assert again == {**first, "cached": True, "jobs": 0, "payload": 0}
    assert runs(log) == 1
    other = run("b")  # another large argument misses
    assert other["value"] == hashlib.sha256(b"b" * 300_000).hexdigest()
    assert not other["cached"] and other["jobs"] == 1
    assert runs(log) == 2
