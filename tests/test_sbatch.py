"""The slurm backend's pure parts: the sbatch script, its HMAC, flags and keys (no cluster)."""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from hog_executor import HogExecutor
from hog_executor.backends import backend_class, backend_keys, backend_names
from hog_executor.backends.slurm import SlurmBackend, default_shared_dir
from hog_executor.backends.slurm.sbatch import (
    EXIT_WRAPPER_FAILED,
    ClusterLimits,
    SbatchSpec,
    array_limit,
    check_flags,
    directive_quote,
    parse_cluster_limits,
    render_sbatch,
    result_digest,
    sbatch_options,
    signal_lead,
    split_arrays,
    time_limit_minutes,
)
from hog_executor.backends.slurm.watcher import SlurmQueryError, Watcher, parse_squeue
from hog_executor.config import resolve_endpoint
from hog_executor.errors import ConfigError


def _spec(**kw) -> SbatchSpec:
    base = dict(job_dir="/shared/hog-x/s1", key_file="/shared/hog-x/key", submission="s1")
    return SbatchSpec(**{**base, **kw})


def _directives(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines()
            if line.startswith("#SBATCH ")]


def test_single_job_script():
    script = render_sbatch(_spec(options=(("--partition", "debug"),), time_minutes=7))
    assert script.startswith("#!/bin/bash\n")
    assert _directives(script) == [
        '--job-name="hog-s1"',
        '--output="/shared/hog-x/s1/slurm-0.log"',
        "--requeue",
        "--time=7",
        '--partition="debug"',
    ]
    assert "hog_dir=/shared/hog-x/s1\n" in script
    assert "hog_i=${SLURM_ARRAY_TASK_ID:-0}" in script


def test_array_script_and_flag_order():
    script = render_sbatch(_spec(count=12, max_parallel=3, extra_flags=("--time=30",
                                                                        "--comment=a b")))
    directives = _directives(script)
    assert "--array=0-11%3" in directives
    assert '--output="/shared/hog-x/s1/slurm-%a.log"' in directives
    assert directives[-2:] == ['"--time=30"', '"--comment=a b"']  # the user's flags win
    assert "--array=0-4" in _directives(render_sbatch(_spec(count=5)))


def test_values_reach_the_script_only_quoted():
    nasty = '/tmp/a b/$(touch pwned)/"q"/100%'
    script = render_sbatch(_spec(job_dir=nasty, options=(("--comment", 'x"y\\z #c'),),
                                 uv="/opt/uv bin/uv"))
    assert '--output="/tmp/a b/$(touch pwned)/\\"q\\"/100%%/slurm-0.log"' in _directives(script)
    assert '--comment="x\\"y\\\\z #c"' in _directives(script)
    assert f"hog_dir={shlex.quote(nasty)}\n" in script
    assert "export HOG_UV='/opt/uv bin/uv'" in script
    with pytest.raises(ValueError, match="control"):
        directive_quote("a\nb")
    with pytest.raises(ValueError, match="control"):
        render_sbatch(_spec(options=(("--comment", "a\n#SBATCH --uid=0"),)))
    with pytest.raises(ValueError):
        render_sbatch(_spec(count=0))


def test_time_limit_rounds_up_with_a_margin():
    assert time_limit_minutes(None) is None
    assert time_limit_minutes(1) == 6
    assert time_limit_minutes(60) == 6
    assert time_limit_minutes(61) == 7
    assert time_limit_minutes(3600, margin=0) == 60


def test_sbatch_options_from_keys():
    values = {"partition": "gpu", "account": "proj", "cpus_per_task": 4, "mem": "8G",
              "gpus": "a100:2", "nodes": 1, "constraint": "ib&cpu", "walltime": 60}
    assert sbatch_options(values) == (
        ("--partition", "gpu"), ("--account", "proj"), ("--nodes", "1"),
        ("--cpus-per-task", "4"), ("--mem", "8G"), ("--gpus", "a100:2"),
        ("--constraint", "ib&cpu"),
    )


@pytest.mark.parametrize("flags", [["--exclusive"], ["--comment=a b", "-N2", "--time=30"],
                                   ["--wait-all-nodes=1", "--export=ALL,X=1"]])
def test_good_sbatch_flags(flags):
    assert check_flags(flags) == tuple(flags)


@pytest.mark.parametrize("flag,reason", [
    ("--array=0-3", "sets this itself"),
    ("--out=x", "sets this itself"),  # getopt accepts unambiguous prefixes
    ("-o/tmp/x", "sets this itself"),
    ("--wait", "sets this itself"),
    ("--requeue", "sets this itself"),
    ("debug", "not an option"),
    ("-p debug", "right after the flag"),
    ("--comment=a\nb", "control character"),
])
def test_bad_sbatch_flags(flag, reason):
    with pytest.raises(ValueError, match=reason):
        check_flags([flag])


def test_job_script_runs_and_authenticates_its_result(tmp_path: Path):
    """Run the rendered script with bash, as slurmd would, and check its result files."""
    key = os.urandom(32)
    (tmp_path / "key").write_text(key.hex())
    job = tmp_path / "s9"
    job.mkdir()
    (job / "task-1.sh").write_text(
        "printf 'out\\0 %s\\n' \"$HOG_UV\"; echo oops >&2; exit 3\n")
    script = render_sbatch(SbatchSpec(job_dir=str(job), key_file=str(tmp_path / "key"),
                                      submission="s9", count=2, uv="/x/uv"))
    env = {k: v for k, v in os.environ.items() if k != "HOG_UV"}
    proc = subprocess.run(["bash", "-c", script], env={**env, "SLURM_ARRAY_TASK_ID": "1"},
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr  # the call failed, the job recorded it
    out, err = (job / "task-1.out").read_bytes(), (job / "task-1.err").read_bytes()
    assert out == b"out\0 /x/uv\n" and err == b"oops\n"
    assert (job / "task-1.rc").read_text() == "3\n"
    digest = (job / "task-1.hmac").read_text().strip()
    assert digest == result_digest(key, "s9", 1, 3, out, err)
    assert digest != result_digest(key, "s9", 0, 3, out, err)  # bound to its task
    assert digest != result_digest(os.urandom(32), "s9", 1, 3, out, err)
    for path in job.glob("task-1.*"):
        if path.suffix != ".sh":  # written by this test
            assert path.stat().st_mode & 0o077 == 0, path


def test_job_script_without_its_bundle_fails_clearly(tmp_path: Path):
    (tmp_path / "key").write_text("00" * 32)
    script = render_sbatch(SbatchSpec(job_dir=str(tmp_path / "gone"),
                                      key_file=str(tmp_path / "key"), submission="s1"))
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items()
                               if k != "SLURM_ARRAY_TASK_ID"})
    assert proc.returncode == EXIT_WRAPPER_FAILED
    assert "task-0.sh" in proc.stderr and "shared_dir" in proc.stderr


def test_parse_squeue():
    text = "12_0|COMPLETED|None\n12_1|PENDING|JobArrayTaskLimit\n13|running|\n\nbad\n"
    assert parse_squeue(text) == {
        "12_0": ("COMPLETED", "None"),
        "12_1": ("PENDING", "JobArrayTaskLimit"),
        "13": ("RUNNING", ""),
    }


def test_slurm_is_a_builtin_backend_with_validated_keys(tmp_path):
    assert "slurm" in backend_names()
    assert backend_class("slurm") is SlurmBackend
    ex = HogExecutor("slurm", partition="debug", max_parallel=8, mem=4096,
                     sbatch_flags=["--exclusive"], shared_dir=str(tmp_path / "jobs"))
    assert ex.backend.workers == 8
    assert ex.endpoint.values["mem"] == "4096"
    assert not (tmp_path / "jobs").exists()  # nothing is created before the first submit
    ex.shutdown()
    for bad in [dict(mem="lots"), dict(partition="a b"), dict(gpus=0), dict(nodes="x"),
                dict(sbatch_flags="--exclusive"), dict(sbatch_flags=["--array=1"]),
                dict(poll_interval=0), dict(shared_dir='/tmp/"x"'), dict(max_parallel=0),
                dict(account="a;b"), dict(nope=1)]:
        with pytest.raises(ConfigError):
            HogExecutor("slurm", **bad)
    ex = HogExecutor("slurm")
    with pytest.raises(ConfigError, match="cannot change per call"):
        ex.options(max_parallel=2)
    assert ex.options(partition="other").endpoint.values["partition"] == "other"
    with pytest.raises(ConfigError):
        ex.options(partition="a b")  # per-call values are validated too
    ex.options(walltime=60)  # walltime travels with each job
    ex.shutdown()


def test_script_table_selects_the_slurm_backend():
    tables = {"cluster": {"backend": "slurm", "partition": "debug", "walltime": "1:00",
                          "gpu": {"gpus": 1, "partition": "gpu"}}}
    endpoint = resolve_endpoint("cluster", script_tables=tables, backend_keys=backend_keys,
                                builtin_backends=backend_names)
    assert endpoint.backend == "slurm"
    assert endpoint.values["partition"] == "debug" and endpoint.values["walltime"] == 60.0
    variant = resolve_endpoint("cluster.gpu", script_tables=tables, backend_keys=backend_keys,
                               builtin_backends=backend_names)
    assert variant.values["partition"] == "gpu" and variant.values["gpus"] == "1"


def test_default_shared_dir(monkeypatch):
    monkeypatch.setenv("SCRATCH", "/scratch/me")
    assert default_shared_dir() == "/scratch/me/.hog-executor/slurm"
    monkeypatch.delenv("SCRATCH")
    assert default_shared_dir() == os.path.expanduser("~/.hog-executor/slurm")


# -- the watcher, with a scripted squeue ----------------------------------------------------

class _FakeTask:
    def __init__(self, slurm_id: str, settle_after: int = 0) -> None:
        self.slurm_id = slurm_id
        self.array_id = slurm_id.split("_")[0]
        self.poll_interval = 0.01
        self.starts = 0
        self.requeues = 0
        self.settles: list[tuple[str | None, float]] = []
        self.settle_after = settle_after
        self.abandoned: str | None = None
        self.done = threading.Event()

    def started(self) -> None:
        self.starts += 1

    def requeued(self) -> None:
        self.requeues += 1

    def settle(self, state, missing_for, settling_for) -> bool:
        self.settles.append((state, missing_for))
        if len(self.settles) > self.settle_after:
            self.done.set()
            return True
        return False

    def abandon(self, message: str) -> None:
        self.abandoned = message
        self.done.set()


def test_watcher_reports_start_once_and_settles_terminal_or_missing_tasks():
    rounds = iter([
        {"5_0": ("PENDING", ""), "5_1": ("PENDING", ""), "6": ("RUNNING", "")},
        {"5_0": ("RUNNING", ""), "5_1": ("RUNNING", ""), "6": ("RUNNING", "")},
        {"5_0": ("RUNNING", ""), "5_1": ("COMPLETED", ""), "6": ("RUNNING", "")},
    ])
    asked: list[set[str]] = []

    def query(ids):
        asked.append(set(ids))
        return next(rounds, {"5_0": ("TIMEOUT", "")})

    w = Watcher(query)
    tasks = [_FakeTask("5_0"), _FakeTask("5_1"), _FakeTask("6", settle_after=2)]
    w.track(tasks)
    for t in tasks:
        assert t.done.wait(10)
    assert asked[0] == {"5", "6"}  # one query for every job and array
    assert [t.starts for t in tasks] == [1, 1, 1]
    assert tasks[0].settles == [("TIMEOUT", 0.0)]
    assert tasks[1].settles == [("COMPLETED", 0.0)]
    states = [s for s, _ in tasks[2].settles]
    missing = [m for _, m in tasks[2].settles]
    assert states == [None, None, None] and missing[0] == 0 < missing[-1]
    assert w.wait_for(lambda: w.watching() == 0, 5)


def test_watcher_gives_up_when_the_controller_stays_silent(monkeypatch):
    from hog_executor.backends.slurm import watcher as watcher_module

    monkeypatch.setattr(watcher_module, "CONTROLLER_GRACE", 0.2)

    def query(ids):
        raise SlurmQueryError("squeue failed: Unable to contact slurm controller")

    w = Watcher(query)
    task = _FakeTask("7")
    w.track([task])
    assert task.done.wait(10)
    assert task.abandoned and "Unable to contact slurm controller" in task.abandoned
    assert task.settles == []


# -- job arrays within the cluster's limits -----------------------------------------------------

SCONTROL_CONFIG = """Configuration data as of 2026-01-01T00:00:00
AccountingStorageType   = (null)
MaxArraySize            = 1001
MaxJobCount             = 10000
MaxJobId                = 67043328
MaxStepCount            = 40000
"""


def test_cluster_limits_from_scontrol_show_config():
    assert parse_cluster_limits(SCONTROL_CONFIG) == ClusterLimits(1001, 10000)
    assert parse_cluster_limits("") == ClusterLimits(None, None)
    assert parse_cluster_limits("MaxArraySize = lots\n") == ClusterLimits(None, None)


@pytest.mark.parametrize(
    ("limits", "cap", "expected"),
    [
        (ClusterLimits(1001, 10000), 1000, 1000),  # the default cap is below Slurm's default
        (ClusterLimits(1001, 10000), 5000, 1001),  # indices 0..1000
        (ClusterLimits(100, 10000), 1000, 100),
        (ClusterLimits(4000001, 50), 1000, 49),  # beside at least one other job
        (ClusterLimits(0, 10000), 1000, 1),  # arrays disabled: plain jobs
        (ClusterLimits(None, None), 7, 7),  # scontrol could not tell
    ],
)
def test_array_limit(limits, cap, expected):
    assert array_limit(limits, cap) == expected


def test_split_arrays_keeps_every_array_within_the_limit():
    assert split_arrays(6, 4) == [range(0, 4), range(4, 6)]
    assert split_arrays(4, 4) == [range(0, 4)]
    assert split_arrays(1, 1000) == [range(0, 1)]
    assert split_arrays(0, 3) == []
    runs = split_arrays(2503, 1000)
    assert [len(r) for r in runs] == [1000, 1000, 503]
    assert [i for r in runs for i in r] == list(range(2503))
    with pytest.raises(ValueError):
        split_arrays(3, 0)


def test_max_array_size_key():
    ex = HogExecutor("slurm", max_array_size=50)
    assert ex.endpoint.values["max_array_size"] == 50
    with pytest.raises(ConfigError, match="cannot change per call"):
        ex.options(max_array_size=2)
    ex.shutdown()
    with pytest.raises(ConfigError, match="positive integer"):
        HogExecutor("slurm", max_array_size=0)


def test_ranks_become_tasks_of_the_job():
    values = {"partition": "debug", "ranks": 4, "nodes": 2, "ranks_per_node": 2}
    assert sbatch_options(values) == (
        ("--partition", "debug"), ("--nodes", "2"), ("--ntasks", "4"),
        ("--ntasks-per-node", "2"),
    )
    # One rank: the job holds one task, as without the key.
    assert sbatch_options({"ranks": 1, "nodes": 1}) == (("--nodes", "1"),)
    script = render_sbatch(_spec(options=sbatch_options({"ranks": 3})))
    assert '--ntasks="3"' in _directives(script)


def test_ranks_keys_of_the_slurm_backend():
    keys = backend_keys("slurm")
    assert keys["ranks_per_node"].check(2) == 2
    with pytest.raises(ValueError):
        keys["ranks_per_node"].check(0)
    endpoint = resolve_endpoint("slurm", kwargs={"ranks": 2, "ranks_per_node": 1, "nodes": 2},
                                backend_keys=backend_keys, builtin_backends=backend_names)
    assert endpoint.values["ranks"] == 2 and endpoint.values["nodes"] == "2"

# -- dependencies (futures as arguments) ------------------------------------------------------

def test_dependency_flags() -> None:
    from hog_executor.backends.slurm.sbatch import dependency_flags

    assert dependency_flags(()) == ()
    assert dependency_flags(["12", "13_4", "12"]) == (
        "--dependency=afterok:12:13_4", "--kill-on-invalid-dep=yes")
    for bad in ("12;rm", "x", "12_", ""):
        with pytest.raises(ValueError, match="not a Slurm job id"):
            dependency_flags([bad])


def test_render_with_dependencies_and_result_check() -> None:
    from hog_executor.backends.slurm.sbatch import (
        EXIT_RESULT_MISSING,
        SbatchSpec,
        render_sbatch,
    )

    text = render_sbatch(SbatchSpec(job_dir="/d", key_file="/d/key", submission="s1",
                                    after=("7", "8_1")))
    assert "#SBATCH --dependency=afterok:7:8_1\n#SBATCH --kill-on-invalid-dep=yes\n" in text
    assert f"exit {EXIT_RESULT_MISSING}" in text and '"$hog_task.keys"' in text
    assert "--dependency" not in render_sbatch(
        SbatchSpec(job_dir="/d", key_file="/d/key", submission="s1"))


def test_after_key_is_checked() -> None:
    from hog_executor.backends.slurm.keys import SLURM_KEYS

    check = SLURM_KEYS["after"].check
    assert check(["1", "2_3"]) == ("1", "2_3") and check(5) == ("5",)
    with pytest.raises(ValueError):
        check(["1 2"])


# -- requeues, the warning signal and the client tag ------------------------------------------

def test_requeue_warning_and_client_lines():
    script = render_sbatch(_spec(time_minutes=7, signal_lead=30,
                                 comment="hog-client host=h pid=1 start=2 run=ab endpoint=e"))
    directives = _directives(script)
    assert "--requeue" in directives and "--no-requeue" not in directives
    assert "--signal=B:USR1@30" in directives
    assert '--comment="hog-client host=h pid=1 start=2 run=ab endpoint=e"' in directives
    assert "export HOG_SIGNAL_LEAD=30\n" in script
    plain = render_sbatch(_spec(signal_lead=0))
    assert not [d for d in _directives(plain) if d.startswith(("--signal", "--comment"))]
    assert "HOG_SIGNAL_LEAD" not in plain
    assert "--signal=B:USR1@65535" in _directives(render_sbatch(_spec(signal_lead=99999)))


@pytest.mark.parametrize(("value", "walltime", "lead"), [
    (None, 60, 10), (None, 3600, 300), (None, 1200, 120), (None, None, 300), (None, 5, 10),
    (45, 60, 45), (0, 60, 0), (10**6, None, 65535),
])
def test_signal_lead(value, walltime, lead):
    assert signal_lead(value, walltime) == lead


@pytest.mark.parametrize("flag", ["--no-requeue", "--signal=USR2@60", "--requeue"])
def test_requeue_and_signal_flags_are_the_backends(flag):
    with pytest.raises(ValueError, match="sets this itself"):
        check_flags([flag])


def test_job_script_passes_the_warning_on_and_drops_an_earlier_run(tmp_path: Path):
    """SIGUSR1 to the job script reaches the bundle, which goes on to write its result; the
    result files of an earlier run (before a requeue) are gone before the bundle starts."""
    key = os.urandom(32)
    (tmp_path / "key").write_text(key.hex())
    job = tmp_path / "s3"
    job.mkdir()
    (job / "task-0.hmac").write_text("stale\n")
    (job / "task-0.rc").write_text("0\n")
    started = tmp_path / "started"
    (job / "task-0.sh").write_text(
        f"[ -e {shlex.quote(str(job / 'task-0.hmac'))} ] && echo stale-result\n"
        "trap 'echo warned; exit 0' USR1\n"
        f": > {shlex.quote(str(started))}\n"
        "while :; do sleep 0.1; done\n")
    script = render_sbatch(SbatchSpec(job_dir=str(job), key_file=str(tmp_path / "key"),
                                      submission="s3", signal_lead=5))
    env = {k: v for k, v in os.environ.items() if k != "SLURM_ARRAY_TASK_ID"}
    proc = subprocess.Popen(["bash", "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            if started.exists():
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            threading.Event().wait(0.05)
        assert started.exists()
        proc.send_signal(signal.SIGUSR1)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out, err = (job / "task-0.out").read_bytes(), (job / "task-0.err").read_bytes()
    assert out == b"warned\n"  # no stale result was there when it started
    assert (job / "task-0.rc").read_text() == "0\n"
    digest = (job / "task-0.hmac").read_text().strip()
    assert digest == result_digest(key, "s3", 0, 0, out, err)


def test_watcher_follows_a_job_through_its_requeue():
    rounds = iter([
        {"8": ("RUNNING", "")},
        {"8": ("PREEMPTED", "")},  # may turn into a requeue: the job decides (settle False)
        {"8": ("PENDING", "BeginTime")},
        {"8": ("RUNNING", "")},
        {"8": ("REQUEUED", "")},
        {"8": ("RUNNING", "")},
    ])

    def query(ids):
        return next(rounds, {"8": ("COMPLETED", "")})

    class Task(_FakeTask):
        def settle(self, state, missing_for, settling_for) -> bool:
            self.settles.append((state, settling_for))
            if state == "COMPLETED":
                self.done.set()
                return True
            return False

    w = Watcher(query)
    task = Task("8")
    w.track([task])
    assert task.done.wait(10)
    assert task.starts == 1 and task.requeues == 2
    assert [s for s, _ in task.settles] == ["PREEMPTED", "COMPLETED"]
    assert task.settles[-1][1] == 0.0  # its settling began anew once it was back in the queue


def test_a_preempted_job_waits_for_a_requeue_before_it_ends():
    from hog_executor.backends.slurm.states import REQUEUE_GRACE, Deliver, JobFacts, settle

    facts = JobFacts(slurm_id="9", job_id="j", log="l", log_paths=("l",), result_file="r",
                     shared_dir="d", log_tail=lambda: b"", stderr=lambda: b"",
                     exit_code=lambda: -15)
    for state in ("PREEMPTED", "NODE_FAIL"):
        assert settle(state, None, facts, missing_for=0, settling_for=1) is None
        ended = settle(state, None, facts, missing_for=0, settling_for=REQUEUE_GRACE)
        assert isinstance(ended, Deliver) and ended.output.state == state
    assert isinstance(settle("TIMEOUT", None, facts, missing_for=0, settling_for=0), Deliver)


def test_client_tags_name_the_client_and_tell_when_it_is_gone(tmp_path):
    from hog_executor.backends.slurm.clients import (
        ALIVE,
        GONE,
        UNKNOWN,
        client_status,
        client_tag,
        parse_squeue_jobs,
        parse_tag,
        process_start,
    )
    from hog_executor.cli.cancel import select_jobs

    tag = parse_tag(client_tag("my cluster"))
    assert tag is not None
    assert tag.pid == os.getpid() and tag.endpoint == "my_cluster"
    assert tag.start == process_start(os.getpid()) is not None
    assert client_status(tag) == ALIVE
    assert client_status(tag, host="elsewhere") == UNKNOWN
    child = subprocess.Popen(["true"])
    child.wait()
    assert client_status(dataclasses.replace(tag, pid=child.pid)) == GONE
    recycled = dataclasses.replace(tag, start=(tag.start or 0) + 1)
    assert client_status(recycled) == GONE  # the pid now runs another process
    assert parse_tag("a comment of someone else") is None
    assert parse_tag("hog-client host=h pid=x") is None
    text = (f"12|12_[3-5]|hog-s1|PENDING|{client_tag('e')}\n"
            "13|13|other|RUNNING|nothing to see\n"
            f"14|14|hog-s2|RUNNING|{client_tag('f').replace(f'pid={os.getpid()}', 'pid=1')}\n")
    jobs = parse_squeue_jobs(text)
    assert [(j.array_id, j.slurm_id, j.state) for j in jobs] == [
        ("12", "12_[3-5]", "PENDING"), ("14", "14", "RUNNING")]
    # pid 1 did not start when this process did: that client is gone; this one is alive.
    assert [(j.slurm_id, st) for j, st in select_jobs(jobs)] == [("14", GONE)]
    assert [j.slurm_id for j, _ in select_jobs(jobs, everything=True)] == ["12_[3-5]", "14"]
    assert [j.slurm_id for j, _ in select_jobs(jobs, everything=True, endpoint="e")] \
        == ["12_[3-5]"]
    assert select_jobs(jobs, run="nope") == []
