"""The hog command: through main(argv), and as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import pytest
from conftest import ROOT, SCRIPTS

from hog_executor import cli, decorators
from hog_executor.backends.local import same_machine_hints
from hog_executor.cli.envcache import cache_root
from hog_executor.cli.harness import call_harness
from hog_executor.script import load_script

UUID = "5aafb4c1-27b2-40d8-a038-a0277611868f"
DECORATED = str(SCRIPTS / "hogtest_decorated.py")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture(autouse=True)
def isolated(cache_dir, monkeypatch):
    monkeypatch.setenv("HOG_CACHE_DIR", cache_dir)
    saved_argv = list(sys.argv)
    yield
    sys.argv[:] = saved_argv
    decorators.shutdown_executors(wait=True, cancel_futures=True, terminate=True)


def _env(cache_dir: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HOG_CACHE_DIR": cache_dir}


def hog(*args: str, cache_dir: str, cwd: str | Path | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m hog_executor ARGS`` as a real process, stdin not a terminal."""
    return subprocess.run([sys.executable, "-m", "hog_executor", *args], capture_output=True,
                          text=True, env=_env(cache_dir), cwd=cwd, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# -- hog run ----------------------------------------------------------------------------------

def test_run_calls_the_default_harness_with_parsed_arguments(capsys):
    assert cli.main(["run", DECORATED, "--", "4", "--scale", "2", "--label", "total"]) == 0
    assert capsys.readouterr().out == "total=28\n"


def test_run_a_named_harness_without_separator(capsys):
    assert cli.main(["run", DECORATED, "one", "7"]) == 0
    assert capsys.readouterr().out == "49\n"


def test_run_sees_the_script_as_main_for_plain_executors(capsys):
    main_module = sys.modules["__main__"]
    assert cli.main(["run", DECORATED, "direct", "--", "3"]) == 0
    assert capsys.readouterr().out == "27\n"
    assert sys.modules["__main__"] is main_module  # restored


def test_init_into_a_missing_directory_is_one_line(tmp_path, capsys):
    assert cli.main(["init", str(tmp_path / "no" / "s.py")]) == 1
    assert capsys.readouterr().err.startswith("hog: error: ")


def test_run_unknown_harness_says_which_exist(capsys):
    assert cli.main(["run", DECORATED, "nope", "--"]) == 1
    err = capsys.readouterr().err
    assert "has no harness 'nope'; its harnesses: main, one, sleepy, direct" in err


def test_run_script_without_harness(tmp_path, capsys):
    script = tmp_path / "plain.py"
    script.write_text("def f():\n    return 1\n")
    assert cli.main(["run", str(script)]) == 1
    assert "mark an entry point with @hog.harness()" in capsys.readouterr().err


def test_harness_arguments_follow_type_hints(capsys):
    seen = {}

    def h(name: str, counts: list[int], *, mode: Literal["a", "b"] = "a",
          ratio: float | None = None, dry_run: bool = False):
        seen.update(name=name, counts=counts, mode=mode, ratio=ratio, dry_run=dry_run)

    call_harness(h, ["x", "1", "2", "--mode", "b", "--ratio", "0.5", "--dry-run"], "h")
    assert seen == {"name": "x", "counts": [1, 2], "mode": "b", "ratio": 0.5, "dry_run": True}
    with pytest.raises(SystemExit):
        call_harness(h, ["x", "1", "--mode", "c"], "h")
    assert "invalid choice: 'c'" in capsys.readouterr().err


def test_run_as_a_real_process_with_python_m(cache_dir):
    proc = hog("run", DECORATED, "--", "3", "--verbose", cache_dir=cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "computed 3 squares\nsum=5\n"


def test_console_script_entry_point_is_main():
    with open(ROOT / "pyproject.toml", "rb") as f:
        target = tomllib.load(f)["project"]["scripts"]["hog"]
    assert target == "hog_executor.cli:main"
    assert callable(cli.main)


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "hog init" in capsys.readouterr().err


# -- hog bundle -------------------------------------------------------------------------------

def test_bundle_run_by_hand_gives_the_same_result(tmp_path, cache_dir):
    import hogtest_decorated as mod

    expected = mod.square.remote(6)  # through the executor (also warms the environment)
    out = tmp_path / "bundle.sh"
    assert cli.main(["bundle", f"{DECORATED}:square", "6", "-o", str(out)]) == 0
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    text = out.read_text()
    assert text.startswith("#!/usr/bin/env bash\n# hog-executor ")
    assert "hogtest_decorated.py:square" in text.splitlines()[1]
    # By hand: a clean shell that finds uv on PATH, nothing passed by a backend.
    uv_dir = os.path.dirname(same_machine_hints()["HOG_UV"])
    env = {"PATH": f"{uv_dir}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"),
           "HOG_CACHE_DIR": cache_dir, "USER": os.environ.get("USER", "root")}
    proc = subprocess.run(["bash", str(out)], capture_output=True, text=True, env=env,
                          timeout=300, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == repr(expected) == "36"
    assert sorted(os.listdir(tmp_path)) == ["bundle.sh"]


def test_bundle_keyword_arguments_failures_and_raw(tmp_path, cache_dir):
    out = tmp_path / "b.sh"
    proc = hog("bundle", f"{DECORATED}:fail", "msg=gone", "-o", str(out), cache_dir=cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert f"run it with: bash {out}" in proc.stderr
    ran = subprocess.run(["bash", str(out)], capture_output=True, text=True, timeout=300,
                         env=_env(cache_dir), stdin=subprocess.DEVNULL)
    assert ran.returncode == 1
    assert "KeyError: 'gone'" in ran.stderr
    raw = hog("bundle", f"{DECORATED}:square", "2", "--raw", "-o", "-", cache_dir=cache_dir)
    assert raw.returncode == 0
    assert "HOG_PRINT_RESULT" not in raw.stdout
    assert raw.stdout.startswith("#!/usr/bin/env bash\n")


def test_bundle_bad_target(capsys):
    assert cli.main(["bundle", "nofile.py"]) == 1
    assert "expected SCRIPT.py:FUNCTION" in capsys.readouterr().err
    assert cli.main(["bundle", f"{DECORATED}:nosuch"]) == 1
    assert "no function 'nosuch'" in capsys.readouterr().err


# -- hog init / hog add -----------------------------------------------------------------------

@pytest.mark.slow  # uv add resolves from the package index; uv run builds an environment
def test_init_then_add_round_trip_and_uv_accepts_the_script(tmp_path, cache_dir):
    script = tmp_path / "analysis.py"
    assert cli.main(["init", str(script)]) == 0
    meta = load_script(script)
    assert meta.requires_python == ">=3.10" and "local" in meta.tool_hog
    # a comment of the user's inside the block must survive every edit
    text = script.read_text().replace('# walltime = "00:10:00"',
                                      '# walltime = "00:10:00"  # keep me')
    script.write_text(text)
    assert cli.main(["add", str(script), "--endpoint", f"anvil:{UUID}",
                     "--set", "account=abc", "--set", "walltime=600"]) == 0
    assert cli.main(["add", str(script), "--endpoint", "fast", "--set", "backend=local",
                     "--set", "max_workers=2"]) == 0
    proc = hog("add", str(script), "six>=1.16", cache_dir=cache_dir)  # uv add --script
    assert proc.returncode == 0, proc.stderr
    meta = load_script(script)
    assert meta.dependencies == ("six>=1.16",)
    assert meta.tool_hog["anvil"] == {"endpoint": UUID, "account": "abc", "walltime": 600}
    assert meta.tool_hog["fast"] == {"backend": "local", "max_workers": 2}
    assert "# keep me" in script.read_text()
    # uv reads the block and runs the script (hog-executor itself comes from this checkout)
    uv = same_machine_hints()["HOG_UV"]
    ran = subprocess.run([uv, "run", "--quiet", "--with-editable", str(ROOT), str(script)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env=_env(cache_dir), stdin=subprocess.DEVNULL)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("hello world from ")
    # and hog run calls its harness
    proc = hog("run", str(script), "--", "--name", "you", cache_dir=cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("hello you from ")


def test_init_refuses_to_overwrite_without_prompting(tmp_path, cache_dir):
    script = tmp_path / "s.py"
    assert hog("init", str(script), "--endpoint", f"anvil:{UUID}",
               cache_dir=cache_dir).returncode == 0
    assert load_script(script).tool_hog == {"anvil": {"endpoint": UUID}}
    proc = hog("init", str(script), cache_dir=cache_dir)
    assert proc.returncode == 1
    assert "already has a '# /// script' block" in proc.stderr and "--force" in proc.stderr


def test_init_adds_a_block_to_an_existing_script(tmp_path):
    script = tmp_path / "old.py"
    script.write_text("#!/usr/bin/env python3\nprint('hi')\n")
    assert cli.main(["init", str(script)]) == 0
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env python3\n# /// script\n")
    assert text.endswith("# ///\nprint('hi')\n")


def test_add_rejects_unknown_keys_and_leaves_the_file(tmp_path, capsys):
    script = tmp_path / "s.py"
    cli.main(["init", str(script)])
    before = script.read_text()
    assert cli.main(["add", str(script), "--endpoint", "local", "--set", "bogus=1"]) == 1
    err = capsys.readouterr().err
    assert "not written: unknown key 'bogus'" in err and "known keys:" in err
    assert script.read_text() == before
    assert cli.main(["add", str(script), "--endpoint", "x:not-a-uuid"]) == 1
    assert "is not a Globus Compute endpoint UUID" in capsys.readouterr().err


# -- hog endpoints / cache / doctor -----------------------------------------------------------

def test_endpoints_show_values_and_their_sources(tmp_path, capsys, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text('[shared]\nbackend = "local"\nwalltime = 100\n')
    monkeypatch.setenv("HOG_CONFIG_FILE", str(config))
    script = tmp_path / "s.py"
    script.write_text('# /// script\n# [tool.hog.shared]\n# max_workers = 3\n# ///\n')
    assert cli.main(["endpoints", "--script", str(script)]) == 0
    out = capsys.readouterr().out
    assert f"user config file: {config}" in out
    block = out.split("\nshared (backend local)\n", 1)[1].split("\n\n", 1)[0]
    assert f"walltime    = 100.0    # {config}" in block
    assert f"max_workers = 3    # {script.resolve()}" in block
    assert "backend     = 'local'    # " in block
    assert "\nlocal (backend local)\n" in out


def _fake_env(envs: Path, key: str, days_ago: float) -> Path:
    env = envs / key
    (env / "bin").mkdir(parents=True)
    (env / "pyvenv.cfg").write_text("home = /usr/bin\nversion_info = 3.11.7\n")
    (env / "lib/python3.11/site-packages/six-1.16.0.dist-info").mkdir(parents=True)
    (env / "bin" / "python").write_bytes(b"x" * 5000)
    used = env / ".last-used"
    used.touch()
    t = time.time() - days_ago * 86400
    os.utime(used, (t, t))
    return env


def test_cache_list_and_prune(tmp_path, capsys):
    root = tmp_path / f"hog-{os.environ.get('USER') or __import__('getpass').getuser()}"
    envs = root / "envs"
    old = _fake_env(envs, "a" * 20, days_ago=90)
    new = _fake_env(envs, "b" * 20, days_ago=0)
    assert cli.main(["cache", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "a" * 20 in out and "b" * 20 in out and "python 3.11.7" in out and "six" in out
    assert "90 days ago" in out and "2 environment(s)" in out
    assert cli.main(["cache", "prune", "--cache-dir", str(tmp_path), "--dry-run"]) == 0
    assert "would remove " + "a" * 20 in capsys.readouterr().out
    assert old.exists()
    assert cli.main(["cache", "prune", "--cache-dir", str(tmp_path)]) == 0
    assert "removed " + "a" * 20 in capsys.readouterr().out
    assert not old.exists() and new.exists()
    assert cli.main(["cache", "prune", "--all", "--cache-dir", str(tmp_path)]) == 0
    assert not new.exists()
    assert [p.name for p in envs.iterdir()] == []


def test_cache_list_shows_real_environments(cache_dir, capsys):
    import hogtest_decorated as mod

    assert mod.square.remote(2) == 4
    assert cli.main(["cache", "list"]) == 0  # HOG_CACHE_DIR is the session cache
    out = capsys.readouterr().out
    assert f"environment cache: {cache_root()}/envs" in out
    assert "used 0 min ago" in out and "cloudpickle" in out


def test_doctor(cache_dir):
    proc = hog("doctor", cache_dir=cache_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(ln.startswith("ok    uv ") for ln in lines)
    assert any(ln.startswith("ok    backend local") for ln in lines)
    assert lines[-1] == "all required checks passed"


def test_doctor_reports_a_broken_config_file(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "config.toml"
    bad.write_text("[oops\n")
    monkeypatch.setenv("HOG_CONFIG_FILE", str(bad))
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  config file" in out and "is not valid TOML" in out


def test_help_is_available_for_every_command(capsys):
    for command in ("run", "init", "add", "bundle", "endpoints", "cache", "doctor"):
        with pytest.raises(SystemExit) as info:
            cli.main([command, "--help"])
        assert info.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: hog {command} [-h]")


def test_run_in_a_terminal_shows_progress_by_default(cache_dir):
    """stderr on a pseudo-terminal: map draws a bar; the result still goes to stdout."""
    import pty
    import threading

    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # the other side closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "hog_executor", "run", DECORATED, "--", "30"],
            stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, text=True,
            env=_env(cache_dir), timeout=300,
        )
    finally:
        os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    err = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, err
    assert proc.stdout == "sum=8555\n"
    assert "map square" in err and "30/30 done" in err
    assert "\x1b[K" in err  # redrawn in place


def test_run_not_in_a_terminal_shows_no_progress_unless_asked(cache_dir):
    quiet = hog("run", DECORATED, "--", "5", cache_dir=cache_dir)
    assert quiet.returncode == 0 and "map square" not in quiet.stderr
    asked = hog("run", "--progress", DECORATED, "--", "5", cache_dir=cache_dir)
    assert asked.returncode == 0, asked.stderr
    assert "hog: map square: 5/5 done, 0 running, 0 queued, 0 failed" in asked.stderr
    assert "\r" not in asked.stderr


def test_raw_bundle_is_what_the_executor_sends(cache_dir):
    """Apart from the payload line (its marker is random), the text equals the executor's."""
    import hogtest_decorated as mod

    from hog_executor import HogExecutor

    raw = hog("bundle", f"{DECORATED}:square", "2", "--raw", "-o", "-", cache_dir=cache_dir)
    assert raw.returncode == 0, raw.stderr
    payload = [ln for ln in raw.stdout.splitlines(keepends=True)
               if ln.startswith("hog_put .hog_payload ")]
    assert len(payload) == 1
    with HogExecutor("site", script=DECORATED) as ex:
        head, tail = ex._contexts.get(mod.square).parts
    assert raw.stdout == head + payload[0] + tail


def test_choose_harness_rules():
    from hog_executor.cli.common import CliError
    from hog_executor.cli.harness import choose_harness

    found = {"main": 1, "other": 2}
    assert choose_harness(found, "s.py", ["other", "x"], True) == ("other", ["x"])
    assert choose_harness(found, "s.py", ["3", "4"], False) == ("main", ["3", "4"])
    assert choose_harness({"only": 1}, "s.py", [], False) == ("only", [])
    with pytest.raises(CliError, match="several harnesses"):
        choose_harness({"a": 1, "b": 2}, "s.py", [], False)
    with pytest.raises(CliError, match="no harness 'x'"):
        choose_harness(found, "s.py", ["x"], True)


def test_prune_skips_an_environment_being_built(tmp_path):
    import fcntl

    from hog_executor.cli.envcache import cached_envs, prune

    root = tmp_path / "hog-me"
    env = _fake_env(root / "envs", "c" * 20, days_ago=400)
    lock = root / "envs" / f".{'c' * 20}.lock"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert [(e.key, what) for e, what in prune(root, None)] == [
            ("c" * 20, "skipped: being built")]
    assert env.exists()
    assert [(e.key, what) for e, what in prune(root, None)] == [("c" * 20, "removed")]
    assert cached_envs(root) == []


# -- hog cancel -------------------------------------------------------------------------------

def test_hog_cancel_without_slurm_says_where_it_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue here
    assert cli.main(["cancel", "--list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hog: error: squeue could not run")
    assert "where Slurm's commands are" in err


def test_hog_cancel_lists_only_gone_clients_and_cancels_only_with_yes(monkeypatch, tmp_path,
                                                                     capsys):
    """A fake squeue and scancel: the first names a gone client's job and a live one's."""
    from hog_executor.backends.slurm.clients import client_tag

    live = client_tag("cluster")
    gone = live.replace(f"pid={os.getpid()}", "pid=1")  # pid 1 did not start with this test
    listing = tmp_path / "squeue.out"
    listing.write_text(f"70|70_[1-3]|hog-s1|PENDING|{gone}\n71|71|hog-s2|RUNNING|{live}\n"
                       "72|72|mine|RUNNING|a job of someone else\n")
    cancelled = tmp_path / "scancel.args"
    (tmp_path / "squeue").write_text(f"#!/bin/sh\ncat {listing}\n")
    (tmp_path / "scancel").write_text(f"#!/bin/sh\necho \"$@\" >> {cancelled}\n")
    for name in ("squeue", "scancel"):
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert cli.main(["cancel", "--list"]) == 0
    out = capsys.readouterr().out
    assert "70_[1-3]" in out and "gone" in out and "71" not in out.split("\n", 1)[1]
    assert cli.main(["cancel"]) == 0  # without --yes: says what it would cancel
    assert "hog cancel --yes" in capsys.readouterr().out and not cancelled.exists()
    assert cli.main(["cancel", "--yes", "--endpoint", "other"]) == 0
    assert "no hog job" in capsys.readouterr().out and not cancelled.exists()
    assert cli.main(["cancel", "--yes"]) == 0
    assert cancelled.read_text() == "70\n"  # the array as a whole; the live client's stays
    assert cli.main(["cancel", "--yes", "--all"]) == 0
    assert cancelled.read_text() == "70\n70 71\n"
