"""Render the bash bundle that runs calls anywhere, and parse what it prints.

A bundle is one self-contained bash script: files travel base64-encoded inside it, it finds
or builds the cached uv environment, runs the runner under a walltime in its own process
group, and frames the result with a random per-call marker. `render_bundle` is a pure
function of its inputs so that bundles can be tested by reading them.
"""

from __future__ import annotations

import base64
import math
import os
import re
import shlex
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ._version import __version__
from .checkpoint import RUNNER_PID_NAME, STOP_FILE_NAME, WALLTIME_ENV
from .environment import EnvSpec
from .launchers import LaunchLine, LaunchPlan
from .runner import (
    ENV_OK_NAME,
    EXIT_ENV_FAILED,
    EXIT_RUNTIME_FAILED,
    EXIT_SETUP_FAILED,
    EXIT_WALLTIME,
    frame_lines,
)

__all__ = ["EXIT_ENV_FAILED", "EXIT_RUNTIME_FAILED", "EXIT_SETUP_FAILED", "EXIT_WALLTIME",
           "BundleSpec", "Frame", "bundle_parts", "parse_output", "payload_line",
           "render_bundle"]


RUNNER_NAME = ".hog_runner.py"
PAYLOAD_NAME = ".hog_payload"
ENV_NAME = ".hog_env.py"


#: The lines that open and close the runner's rank mode (see `runner_source`).
RANKS_BEGIN = b"\n# -- ranks: "
RANKS_END = b"\n# -- end of ranks "


@lru_cache(maxsize=2)
def runner_source(ranks: bool = False) -> bytes:
    """The runner program shipped in every bundle.

    Without ``ranks``, its rank mode is left out: every bundle carries the runner, and a
    Globus Compute command has room for less payload the larger the runner is.
    """
    source = (Path(__file__).parent / "runner.py").read_bytes()
    if ranks:
        return source
    start, stop = source.find(RANKS_BEGIN), source.find(RANKS_END)
    if start < 0 or stop < start:
        return source
    return source[:start] + source[source.index(b"\n", stop + 1):]


@dataclass(frozen=True)
class BundleSpec:
    """What a bundle contains besides the per-call payload.

    Attributes:
        env: the environment to find or build.
        script_name: file name of the user's script inside the bundle (None: no script).
        script_source: the script's text.
        walltime: seconds before the call is killed (None: no limit).
        env_vars: environment variables exported before the call.
        worker_init: bash lines run before the call.
        cache_dir: value for ``HOG_CACHE_DIR`` (None: the remote default).
        description: a comment naming what the bundle runs.
        files: more files put beside the script, as (relative path, content): the script's
            local modules.
        launch: how the ranks of a call with ``ranks > 1`` start (None: one process).
    """

    env: EnvSpec
    script_name: str | None = None
    script_source: str = ""
    walltime: float | None = None
    env_vars: dict[str, str] = field(default_factory=dict)
    worker_init: str = ""
    cache_dir: str | None = None
    description: str = ""
    files: tuple[tuple[str, bytes], ...] = ()
    launch: LaunchPlan | None = None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode("ascii")


# SIGUSR1 warns the call that its time is nearly up (hog_executor.checkpoint): the prelude's
# trap marks it in STOP_FILE_NAME for a runner still to start and passes it on to the pid in
# RUNNER_PID_NAME; the waits below go on after it (hog_sig). Every byte here travels in every
# Globus Compute command: the bash stays terse.
_PRELUDE = r"""set -o pipefail
umask 077
export HOG_JOB_STARTED="${HOG_JOB_STARTED:-${EPOCHREALTIME:-}}"  # the queue wait ends here
hog_fail() { printf 'hog: %s\n' "$1" >&2; exit "$2"; }
hog_tmp=$(mktemp -d "${HOG_WORK_DIR:-${TMPDIR:-/tmp}}/hog-call.XXXXXXXX" 2>&1) \
  || hog_fail "cannot create a temporary directory ($hog_tmp)" __SETUP__
trap 'rm -rf "$hog_tmp"' EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
trap 'exit 129' HUP
trap 'hog_sig=1; : >"$hog_tmp/__STOPFILE__"; read -r hog_p 2>/dev/null <"$hog_tmp/__PIDFILE__" \
  && kill -USR1 "$hog_p" 2>/dev/null' USR1
hog_put() { printf '%s' "$2" | base64 -d > "$hog_tmp/$1" || hog_fail "cannot unpack $1" __SETUP__; }
"""

_ENVIRONMENT = r"""hog_user=${USER:-$(id -un)}
case "${HOG_CACHE_DIR:-}" in "~/"*) HOG_CACHE_DIR="$HOME/${HOG_CACHE_DIR#"~/"}" ;; esac
hog_cache="${HOG_CACHE_DIR:-${SCRATCH:-${TMPDIR:-/tmp}}}/hog-$hog_user"
[ -d "$hog_cache/envs" ] || mkdir -p "$hog_cache/envs" \
  || hog_fail "cannot create the cache directory $hog_cache" __SETUP__
[ -O "$hog_cache" ] && [ -O "$hog_cache/envs" ] \
  || hog_fail "$hog_cache belongs to another user; set HOG_CACHE_DIR" __SETUP__
# hog_private DIR...: refuse directories others may write to (they could replace an
# environment). One stat for all; without GNU stat the check is skipped.
hog_private() {
  local modes=() dir i=0
  modes=($(stat -L -c %a -- "$@" 2>/dev/null)) && [ "${#modes[@]}" -eq "$#" ] || return 0
  for dir in "$@"; do
    if (( 8#${modes[i]} & 8#022 )); then
      hog_fail "$dir is writable by other users, who could replace the environments in it; \
make it private: chmod go-w '$dir'" __SETUP__
    fi
    i=$((i + 1))
  done
}
hog_private "$hog_cache" "$hog_cache/envs"
hog_env="$hog_cache/envs/$hog_key"
hog_find_uv() {
  if [ -n "${HOG_UV:-}" ] && [ -x "$HOG_UV" ]; then hog_uv=("$HOG_UV"); return 0; fi
  if command -v uv >/dev/null 2>&1; then hog_uv=(uv); return 0; fi
  local py
  for py in python3 python; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -m uv --version >/dev/null 2>&1; then
      hog_uv=("$py" -m uv); return 0
    fi
  done
  if [ ! -x "$hog_cache/uv/bin/uv" ]; then
    printf 'hog: uv not found; installing it into %s\n' "$hog_cache/uv" >&2
    python3 -m pip install --quiet --disable-pip-version-check --target "$hog_cache/uv" uv >&2 \
      || hog_fail "uv is missing and pip could not install it; install uv on this machine" __ENV__
  fi
  hog_uv=("$hog_cache/uv/bin/uv")
}
hog_add_paths() {
  local site
  site=$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
    && printf '%s\n' "${hog_paths[@]}" > "$site/_hog_sources.pth"
}
# hog_ready ENV: usable without starting anything (the warm path: three file tests). Its
# Python resolves (a symlink to a moved base Python does not), and __OK__ names a file of
# the cloudpickle it imported when it was checked, which must still be there.
hog_ready() {
  local probe=
  [ -x "$1/bin/python" ] && { read -r probe < "$1/__OK__"; } 2>/dev/null \
    && [ -n "$probe" ] && [ -e "$1/$probe" ]
}
# hog_check ENV: start its Python, import cloudpickle, and record that in __OK__.
hog_check() {
  local probe
  probe=$("$1/bin/python" -c 'import os, sys, cloudpickle
print(os.path.relpath(cloudpickle.__file__, sys.prefix))') && [ -n "$probe" ] \
    && printf '%s\n' "$probe" > "$1/__OK__.$$" && mv -f "$1/__OK__.$$" "$1/__OK__"
}
# The cold path, under the environment's lock: build it, or heal a cached one that is
# unusable by moving it aside and building it again (once).
hog_build_env() {
  local why='' aside='' build python
  hog_find_uv
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$hog_cache/envs/.$hog_key.lock" && flock 9
  fi
  if hog_ready "$hog_env"; then exec 9>&-; return 0; fi  # another call built or healed it
  if [ -e "$hog_env" ] || [ -L "$hog_env" ]; then
    if [ ! -d "$hog_env" ]; then
      why="it is not a directory"
    elif [ ! -x "$hog_env/bin/python" ]; then
      why="its bin/python is missing, or points to a Python that is gone"
    elif hog_check "$hog_env" 2>/dev/null; then
      exec 9>&-; return 0  # usable: it only had no record of its check
    else
      why="its Python cannot import cloudpickle"
    fi
    aside="$hog_cache/envs/.broken-$hog_key.$$"
    printf 'hog: the cached environment %s is unusable (%s); moving it aside to rebuild it\n' \
      "$hog_env" "$why" >&2
    rm -rf "$aside" 2>/dev/null
    mv -f "$hog_env" "$aside" || hog_fail "the cached environment $hog_env is unusable \
($why) and cannot be moved aside; delete it: rm -rf '$hog_env'" __ENV__
  fi
  build="$hog_cache/envs/.build-$hog_key.$$.$RANDOM"
  python="$hog_python"
  # The local endpoint names the client's own interpreter: no discovery, no download.
  if [ "${HOG_CLIENT_PYTHON_VERSION:-}" = "$hog_python" ] && [ -x "${HOG_CLIENT_PYTHON:-}" ]; then
    python=$HOG_CLIENT_PYTHON
  fi
  printf 'hog: building environment %s (first use of these dependencies)\n' "$hog_key" >&2
  hog_built=1
  if ! { "${hog_uv[@]}" venv --quiet --relocatable --python-preference system \
           --python "$python" "$build" >&2 \
         && VIRTUAL_ENV="$build" "${hog_uv[@]}" sync --quiet --active --compile-bytecode \
           --script "$hog_tmp/__ENV_NAME__" >&2 \
         && { [ "${#hog_runtime[@]}" -eq 0 ] \
              || "${hog_uv[@]}" pip install --quiet --no-deps --compile-bytecode \
                   --python "$build/bin/python" "${hog_runtime[@]}" >&2; } \
         && { [ "${#hog_paths[@]}" -eq 0 ] || hog_add_paths "$build"; }; }; then
    rm -rf "$build"
    hog_fail "building the environment failed (uv's message is above)${aside:+; the \
unusable one it replaces is kept in $aside: delete it once looked at (rm -rf '$aside')}" __ENV__
  fi
  if ! hog_check "$build" >&2; then
    rm -rf "$build"
    hog_fail "the environment just built cannot import cloudpickle (the error is above): \
something on this machine (PYTHONPATH, a damaged uv cache: uv cache clean cloudpickle) \
breaks it${aside:+; the unusable one it replaces is kept in $aside (rm -rf '$aside')}" __ENV__
  fi
  "$build/bin/python" -c 'import os, sys; os.rename(sys.argv[1], sys.argv[2])' \
    "$build" "$hog_env" 2>/dev/null || rm -rf "$build"
  exec 9>&-
  hog_ready "$hog_env" || hog_fail "the environment $hog_env is unusable right after it was \
built; delete it: rm -rf '$hog_env'" __ENV__
  if [ -n "$aside" ]; then rm -rf "$aside" < /dev/null > /dev/null 2>&1 & fi
}
hog_ready "$hog_env" || hog_build_env
: > "$hog_env/.last-used" 2>/dev/null
"""

_RUN = r"""if [ -n "${HOG_SERVE:-}" ]; then
  # A warm runner: it serves calls read from stdin (kept: this runs in the foreground);
  # the client enforces each call's walltime and stops the runner's session.
  "$hog_env/bin/python" "$hog_tmp/__RUNNER__" --serve "$hog_tmp/__PAYLOAD__"
  exit $?
fi
hog_start=$SECONDS
__WALLENV__=$hog_walltime timeout -k 5 "$hog_walltime" "$hog_env/bin/python" "$hog_tmp/__RUNNER__" \
  "$hog_tmp/__PAYLOAD__" &
hog_pid=$!
trap 'kill -TERM "$hog_pid" 2>/dev/null; wait "$hog_pid" 2>/dev/null; exit 143' TERM
while hog_sig=0; wait "$hog_pid" 2>/dev/null; hog_rc=$?; [ "$hog_sig" = 1 ]; do :; done
if [ "$hog_walltime" != 0 ] && { [ "$hog_rc" -eq __WALLTIME__ ] \
     || { [ "$hog_rc" -gt 128 ] && [ $((SECONDS - hog_start)) -ge "$hog_walltime" ]; }; }; then
  hog_rc=__WALLTIME__  # also when the call ignored SIGTERM and was killed
  printf 'hog: the call exceeded its walltime of %s s and was killed\n' "$hog_walltime" >&2
elif [ "$hog_rc" -gt 128 ]; then
  printf 'hog: the call ended with status %s (killed by signal %s?)\n' "$hog_rc" \
    "$((hog_rc - 128))" >&2
fi
exit "$hog_rc"
"""


# A call on many ranks (BundleSpec.launch): the launcher starts every rank of the runner in
# rank mode; each writes its outcomes to a file of its own; then one more runner process
# merges them into the result frame. The ranks' files live under the cache, which every
# node running a rank must see anyway (the environment is there).
_RANKS = r"""mkdir -p "$hog_cache/runs" \
  && hog_rdir=$(mktemp -d "$hog_cache/runs/call.XXXXXXXX") \
  || hog_fail "cannot create a directory for the ranks under $hog_cache/runs" __SETUP__
trap 'rm -rf "$hog_tmp" "$hog_rdir"' EXIT
cp "$hog_tmp/__RUNNER__" "$hog_tmp/__PAYLOAD__" __SCRIPT__ "$hog_rdir/" \
  || hog_fail "cannot copy the call's files to $hog_rdir" __SETUP__
__LAUNCH_SETUP__
hog_start=$SECONDS
timeout -k 5 "$hog_walltime" __LAUNCH__ < /dev/null &
hog_pid=$!
trap 'kill -TERM "$hog_pid" 2>/dev/null; wait "$hog_pid" 2>/dev/null; exit 143' TERM
while hog_sig=0; wait "$hog_pid" 2>/dev/null; hog_rc=$?; [ "$hog_sig" = 1 ]; do :; done
if [ "$hog_walltime" != 0 ] && { [ "$hog_rc" -eq __WALLTIME__ ] \
     || { [ "$hog_rc" -gt 128 ] && [ $((SECONDS - hog_start)) -ge "$hog_walltime" ]; }; }; then
  printf 'hog: the call exceeded its walltime of %s s; its ranks were killed\n' \
    "$hog_walltime" >&2
  exit __WALLTIME__
fi
if [ "$hog_rc" -ne 0 ]; then
  printf 'hog: the launcher (__LAUNCHER__) ended with status %s\n' "$hog_rc" >&2
fi
"$hog_env/bin/python" "$hog_rdir/__RUNNER__" --merge-ranks __RANK_ARGS__ "$hog_rc" \
  "$hog_rdir/__PAYLOAD__"
exit $?
"""


def rank_command(plan: LaunchPlan) -> str:
    """What every rank runs (bash text): the runner in rank mode."""
    return (f'"$hog_env/bin/python" "$hog_rdir/{RUNNER_NAME}" --rank-mode {plan.ranks} '
            f'{int(plan.all_ranks)} "$hog_rdir/{PAYLOAD_NAME}"')


def launch_line(plan: LaunchPlan) -> LaunchLine:
    """The launcher's line for ``plan``, as the bundle runs it.

    Raises:
        ConfigError: the launcher is not installed or answers something else than a line.
    """
    return plan.render(rank_command(plan))


def _ranks_step(spec: BundleSpec, plan: LaunchPlan, line: LaunchLine) -> str:
    script = f'"$hog_tmp"/{shlex.quote(spec.script_name)}' if spec.script_name else ""
    return (
        _RANKS.replace("__SETUP__", str(EXIT_SETUP_FAILED))
        .replace("__SCRIPT__", script)
        .replace("__RUNNER__", RUNNER_NAME)
        .replace("__PAYLOAD__", PAYLOAD_NAME)
        .replace("__WALLTIME__", str(EXIT_WALLTIME))
        .replace("__LAUNCHER__", _CONTROL.sub("?", plan.launcher).replace("'", "?"))
        .replace("__RANK_ARGS__", f"{plan.ranks} {int(plan.all_ranks)}")
        .replace("__LAUNCH_SETUP__\n", line.setup + "\n" if line.setup else "")
        .replace("__LAUNCH__", line.command)
        .rstrip("\n")
    )


def _walltime_arg(walltime: float | None) -> str:
    if walltime is None:
        return "0"
    return str(max(1, math.ceil(walltime)))


def render_bundle(spec: BundleSpec, payload: bytes) -> str:
    """The complete bash bundle for one payload (one call or one chunk of calls)."""
    head, tail = bundle_parts(spec)
    return head + payload_line(payload) + tail


def payload_line(payload: bytes) -> str:
    """The bundle line that unpacks ``payload``: what differs between calls of one spec."""
    return f"hog_put {PAYLOAD_NAME} {_b64(payload)}\n"


def bundle_parts(spec: BundleSpec) -> tuple[str, str]:
    """The bundle for ``spec`` without its payload line: ``head + payload_line(p) + tail``.

    Backends that can keep a call's constant part remotely (a registered Globus function)
    send the two parts once and only the payload per call.
    """
    q = shlex.quote
    out = ["#!/usr/bin/env bash"]
    title = f"# hog-executor {__version__} bundle"
    # A comment line: control characters (a newline in a name) must not end it.
    description = _CONTROL.sub("?", spec.description)
    out.append(title + (f": {description}" if description else ""))
    out.append("# Runs by hand: bash THIS_FILE (HOG_CACHE_DIR chooses the environment cache)")
    line = launch_line(spec.launch) if spec.launch is not None else None
    if spec.launch is not None and line is not None:
        out.append(f"# Runs on {spec.launch.ranks} ranks, started by the launcher "
                   f"{_CONTROL.sub('?', spec.launch.launcher)}:")
        out.append("#   " + _CONTROL.sub("?", line.command))
    out.append(
        _PRELUDE.replace("__SETUP__", str(EXIT_SETUP_FAILED))
        .replace("__STOPFILE__", STOP_FILE_NAME)
        .replace("__PIDFILE__", RUNNER_PID_NAME)
        .rstrip("\n")
    )
    out.append(f"hog_put {RUNNER_NAME} {_b64(runner_source(spec.launch is not None))}")
    out.append(f"hog_put {ENV_NAME} {_b64(spec.env.metadata)}")
    if spec.script_name is not None:
        out.append(f"hog_put {q(spec.script_name)} {_b64(spec.script_source)}")
    made: set[str] = set()
    for relpath, data in spec.files:  # the script's local modules, beside it
        parent = os.path.dirname(relpath)
        if parent and parent not in made:
            made.add(parent)
            out.append(f'mkdir -p "$hog_tmp"/{q(parent)}')
        out.append(f"hog_put {q(relpath)} {_b64(data)}")
    head = "\n".join(out) + "\n"
    out = []
    if spec.cache_dir:
        out.append(f"export HOG_CACHE_DIR={q(spec.cache_dir)}")
    for name, value in spec.env_vars.items():
        out.append(f"export {name}={q(value)}")
    out.append(f"hog_key={q(spec.env.key)}")
    out.append(f"hog_python={q(spec.env.python)}")
    out.append("hog_runtime=(" + " ".join(q(r) for r in spec.env.runtime) + ")")
    out.append("hog_paths=(" + " ".join(q(p) for p in spec.env.source_paths) + ")")
    out.append(f"hog_walltime={_walltime_arg(spec.walltime)}")
    if spec.worker_init:
        out.append("# worker_init (runs before the environment is found or built)")
        out.append(spec.worker_init.rstrip("\n"))
    out.append(
        _ENVIRONMENT.replace("__SETUP__", str(EXIT_SETUP_FAILED))
        .replace("__ENV__", str(EXIT_ENV_FAILED))
        .replace("__ENV_NAME__", ENV_NAME)
        .replace("__OK__", ENV_OK_NAME)
        .rstrip("\n")
    )
    # When the environment was ready, and whether this bundle built it (per-call timings).
    out.append('export HOG_ENV_READY="${EPOCHREALTIME:-}" HOG_ENV_BUILT="${hog_built:-0}"')
    if spec.launch is not None and line is not None:
        out.append(_ranks_step(spec, spec.launch, line))
    else:
        out.append(
            _RUN.replace("__RUNNER__", RUNNER_NAME)
            .replace("__PAYLOAD__", PAYLOAD_NAME)
            .replace("__WALLENV__", WALLTIME_ENV)
            .replace("__WALLTIME__", str(EXIT_WALLTIME))
            .rstrip("\n")
        )
    return head, "\n".join(out) + "\n"


@dataclass(frozen=True)
class Frame:
    """What a bundle printed, split into the result frame and the user's own output.

    Attributes:
        outcomes: the runner's pickled outcome list, or None when no complete frame was found.
        stdout: everything else the bundle printed on stdout.
    """

    outcomes: bytes | None
    stdout: str


def parse_output(stdout: bytes | str, marker: str) -> Frame:
    """Find the result frame for ``marker`` in a bundle's stdout."""
    data = stdout.encode("utf-8", "surrogateescape") if isinstance(stdout, str) else stdout
    begin, end = frame_lines(marker.encode())
    start = data.rfind(begin)
    if start < 0:
        return Frame(None, data.decode("utf-8", "replace"))
    stop = data.find(end, start + len(begin))
    if stop < 0:
        return Frame(None, data.decode("utf-8", "replace"))
    encoded = data[start + len(begin):stop]
    rest = data[:start] + data[stop + len(end):]
    try:
        outcomes = base64.b64decode(encoded, validate=True)
    except ValueError:
        return Frame(None, rest.decode("utf-8", "replace"))
    return Frame(outcomes, rest.decode("utf-8", "replace"))
