"""The local backend around its faults: a work directory removed under a live executor, a full
disk, a call printing without limit, a bundle that cannot create its call directory. Real
bundles, real processes; the full disk is a real 2 MiB tmpfs (mounting one needs root)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap

import hogtest_basic as basic
import pytest
from conftest import SCRIPTS, wait_for

from hog_executor import BackendError, HogExecutor
from hog_executor.backends.processes import BundleProcesses, NoSpaceError, write_private
from hog_executor.bundle import BundleSpec, render_bundle
from hog_executor.environment import EnvSpec
from hog_executor.runner import EXIT_SETUP_FAILED, OUTPUT_CAP, RESULT_BEGIN, RESULT_END

MODES = pytest.mark.parametrize("fresh", [False, True], ids=["warm", "fresh"])


@pytest.fixture
def make_executor(cache_dir):
    made: list[HogExecutor] = []

    def make(**kw) -> HogExecutor:
        ex = HogExecutor("local", max_workers=1, cache_dir=cache_dir, **kw)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.shutdown(wait=True, cancel_futures=True, terminate=True)


# -- a work directory removed under a live executor --------------------------------------------

@MODES
def test_a_removed_work_directory_is_created_again(make_executor, fresh):
    ex = make_executor(fresh_process=fresh)
    assert ex.submit(basic.identity, 1).result(timeout=300) == 1
    workdir = ex.backend.workdir
    shutil.rmtree(workdir)  # a /tmp cleaner
    assert ex.submit(basic.identity, 2).result(timeout=300) == 2
    # a call that needs a new runner (another process-level setting) starts one there
    assert ex.options(env={"HOG_TEST_FAULTS": "1"}).submit(
        basic.getenv, "HOG_TEST_FAULTS").result(timeout=300) == "1"
    st = os.lstat(workdir)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == os.getuid()


@MODES
def test_a_call_running_while_its_work_directory_is_removed(make_executor, fresh, tmp_path):
    ex = make_executor(fresh_process=fresh)
    pidfile = tmp_path / "pids"
    f = ex.submit(basic.sleep_with_child, 3, str(pidfile))
    assert wait_for(pidfile.exists, timeout=300)  # the call runs
    shutil.rmtree(ex.backend.workdir)
    # Its files were open already: its output is still read, and it ends normally.
    assert f.result(timeout=120) is None
    assert ex.submit(basic.identity, 3).result(timeout=300) == 3


def test_a_failing_bundle_whose_directory_was_removed_says_so(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir(mode=0o700)
    bundle = f"sleep 0.2; rm -rf {str(workdir)!r}; exit 3\n"
    rc, _, err = BundleProcesses().run("j1", bundle, str(workdir / "j1.sh"), dict(os.environ))
    assert rc == 3
    assert f"files of this bundle in {workdir} were removed while it ran" in err.decode()


@pytest.mark.parametrize("intruder", ["file", "open-dir"])
def test_something_else_in_place_of_the_work_directory_is_refused(make_executor, intruder):
    ex = make_executor()
    assert ex.submit(basic.identity, 1).result(timeout=300) == 1
    workdir = ex.backend.workdir
    shutil.rmtree(workdir)
    if intruder == "file":
        open(workdir, "w").close()
    else:
        os.mkdir(workdir, 0o777)
        os.chmod(workdir, 0o777)  # others could put bundles in it
    try:
        with pytest.raises(BackendError, match="not a private directory"):
            ex.submit(basic.identity, 2)
    finally:
        if os.path.isdir(workdir):
            os.rmdir(workdir)
        else:
            os.unlink(workdir)


# -- a full disk -------------------------------------------------------------------------------

@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 2 MiB tmpfs (mounting needs root; skipped where it is not allowed)."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is tried on a 2 MiB tmpfs, and mounting one needs root")
    if not shutil.which("mount"):
        pytest.skip("no mount command to mount a 2 MiB tmpfs")
    mnt = tmp_path / "tiny"
    mnt.mkdir(mode=0o700)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a 2 MiB tmpfs here: {done.stderr.strip()}")
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_write_private_on_a_full_disk_names_the_directory_and_leaves_nothing(tiny_tmpfs):
    path = os.path.join(tiny_tmpfs, "big.sh")
    with pytest.raises(NoSpaceError) as info:
        write_private(path, "x" * (3 << 20))
    message = str(info.value)
    assert tiny_tmpfs in message and "free" in message and "big.sh" in message
    assert os.listdir(tiny_tmpfs) == []
    write_private(path, "echo fits\n")  # the room is back
    assert os.path.getsize(path) == 10


@MODES
def test_a_full_disk_fails_one_call_clearly_and_the_next_one_works(
        make_executor, fresh, tiny_tmpfs, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", tiny_tmpfs)  # the work directory goes there
    # inline in the bundle (no store), as large as the tmpfs
    ex = make_executor(fresh_process=fresh, proxy_threshold="1GB")
    big = ex.submit(basic.identity, b"x" * (3 << 20))
    with pytest.raises(BackendError) as info:
        big.result(timeout=300)
    workdir = ex.backend.workdir
    assert os.path.dirname(workdir) == tiny_tmpfs
    message = str(info.value)
    assert workdir in message and "free" in message and "No space left" in message
    assert os.listdir(workdir) == []  # the partial bundle was removed
    assert ex.submit(basic.identity, b"small").result(timeout=300) == b"small"


def test_a_bundle_that_cannot_create_its_call_directory_says_where_and_why(tmp_path):
    env = EnvSpec(metadata="# /// script\n# dependencies = []\n# ///\n", python="3.11",
                  runtime=(), key="k")
    bundle = render_bundle(BundleSpec(env=env), b"")
    missing = tmp_path / "gone"
    rc, _, err = BundleProcesses().run(
        "j2", bundle, str(tmp_path / "j2.sh"), {**os.environ, "HOG_WORK_DIR": str(missing)})
    assert rc == EXIT_SETUP_FAILED
    line = err.decode().splitlines()[-1]  # mktemp's reason, with the directory it tried
    assert line.startswith("hog: cannot create a temporary directory (")
    assert f"{missing}/hog-call." in line and "No such file or directory" in line


# -- output without limit -----------------------------------------------------------------------

def test_one_shot_output_keeps_the_frame_whole_and_caps_what_came_before(tmp_path):
    frame = RESULT_BEGIN + b"m@@\n" + b"A" * (OUTPUT_CAP + 1000) + b"\n" + RESULT_END + b"m@@\n"
    (tmp_path / "frame").write_bytes(b"\n" + frame)
    head = 3 << 20
    bundle = textwrap.dedent(f"""\
        head -c {OUTPUT_CAP + head} /dev/zero | tr '\\0' 'x'
        echo; echo last line
        cat {str(tmp_path / "frame")!r}
        {{ head -c {OUTPUT_CAP + 5} /dev/zero | tr '\\0' 'e'; echo; echo last error; }} >&2
        """)
    rc, out, err = BundleProcesses().run("j3", bundle, str(tmp_path / "j3.sh"),
                                         dict(os.environ))
    assert rc == 0
    assert out.endswith(b"last line\n\n" + frame)  # the frame whole, after the kept tail
    before = OUTPUT_CAP + head + len("\nlast line\n")  # what was printed before the frame
    assert out.startswith(f"[hog: {before - OUTPUT_CAP:,} earlier bytes".encode())
    assert len(out) < 2 * OUTPUT_CAP + 2000
    assert err.endswith(b"last error\n") and len(err) < OUTPUT_CAP + 200  # 5 + 12 dropped
    assert err.startswith(b"[hog: 17 earlier bytes of this call's output dropped]\n")


CLIENT = """
import json, sys
sys.path.insert(0, {scripts!r})
import psutil
import hogtest_basic as basic
from hog_executor import HogExecutor


def peak_rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


me = psutil.Process()
with HogExecutor("local", max_workers=1, cache_dir={cache_dir!r}, fresh_process={fresh}) as ex:
    assert ex.submit(basic.print_lines, 10, "warm-up").result(timeout=300) == 10
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak starts again from the current resident size
    before = me.memory_info().rss
    f = ex.submit(basic.print_lines, {lines}, "{text}")
    assert f.result(timeout=600) == {lines}
    print(json.dumps(dict(growth=max(peak_rss(), me.memory_info().rss) - before,
                          kept=len(f.stdout), head=f.stdout[:100], tail=f.stdout[-200:])))
"""


@pytest.mark.slow
@MODES
def test_a_call_printing_100_mb_keeps_the_client_small(cache_dir, fresh):
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("the peak resident size is measured through Linux's /proc/self/clear_refs")
    lines, text = 1_000_000, "y" * 93  # 100 MB
    code = CLIENT.format(scripts=str(SCRIPTS), cache_dir=cache_dir, fresh=fresh, lines=lines,
                         text=text)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.splitlines()[-1])
    # The peak resident memory over the call grew by far less than what was printed.
    print(f"client memory growth: {got['growth'] / 2**20:.1f} MiB")
    assert got["growth"] < 60 * 2**20, got
    assert OUTPUT_CAP <= got["kept"] < OUTPUT_CAP + 1000
    assert got["tail"].endswith(f"{lines - 1} {text}\n")
    dropped = sum(len(f"{i} {text}\n") for i in range(lines)) - OUTPUT_CAP
    assert got["head"].startswith(f"[hog: {dropped:,} earlier bytes of this call's output "
                                  "dropped]\n")
