"""The ``hog`` command: each subcommand is a ``cmd_<name>(args) -> int`` over the modules that
do the work; `main` parses the command line and turns `HogError` and `CliError` into one
``hog: error: ...`` line and exit status 1. Nothing here ever prompts: every choice is a flag.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import HogError
from .common import CliError, literal, parse_endpoint_arg, table_names, write_atomic

__all__ = ["build_parser", "main"]


# -- hog run ----------------------------------------------------------------------------------

@contextlib.contextmanager
def _run_output(args: argparse.Namespace) -> Iterator[None]:
    """Status lines and progress on stderr while a harness runs (restored afterwards)."""
    import logging

    from .. import progress

    logger = logging.getLogger("hog_executor")
    saved = (logger.level, logger.propagate, list(logger.handlers), progress._default_progress)
    if not logger.handlers:
        handler = progress.ConsoleHandler()
        handler.setFormatter(logging.Formatter("hog: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logger.setLevel(level)
    progress.set_default(args.progress if args.progress is not None else sys.stderr.isatty())
    try:
        yield
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers[:] = saved[2]
        progress.set_default(saved[3])


def cmd_run(args: argparse.Namespace) -> int:
    from ..decorators import harnesses
    from .harness import call_harness, choose_harness, import_script

    rest = list(args.rest)
    separated = "--" in rest
    if separated:
        cut = rest.index("--")
        words, after = rest[:cut], rest[cut + 1:]
    else:
        words, after = rest, []
    main_module = sys.modules.get("__main__")
    with _run_output(args):
        try:
            module = import_script(args.script, [*words, *after], as_main=True)
            name, unused = choose_harness(harnesses(module), args.script, words, separated)
            argv = [*unused, *after]
            sys.argv = [sys.argv[0], *argv]
            value = call_harness(harnesses(module)[name], argv,
                                 f"hog run {args.script} {name} --")
        finally:
            if main_module is not None:
                sys.modules["__main__"] = main_module
    if value is not None:
        if isinstance(value, str):
            print(value)
        else:
            import pprint

            pprint.pprint(value)
    return 0


# -- hog init / hog add -----------------------------------------------------------------------

def cmd_init(args: argparse.Namespace) -> int:
    from ..script import load_script, parse_metadata
    from .scripts import block_text, insert_block, template

    path = Path(args.script)
    name, uuid = parse_endpoint_arg(args.endpoint) if args.endpoint else ("local", None)
    block = block_text(args.python, name, uuid)
    parse_metadata(block, path)  # raises MetadataError on a bad --python
    if path.exists() and not args.force:
        meta = load_script(path)
        if meta.has_block:
            raise CliError(f"{path} already has a '# /// script' block: change it with "
                           f"hog add {path} ... (or pass --force to overwrite the file)")
        write_atomic(path, insert_block(meta.source, block))
        print(f"added a PEP 723 block to {path}", file=sys.stderr)
        return 0
    path.write_text(template(block, path, name), encoding="utf-8")
    print(f"wrote {path}; run it with: hog run {path}", file=sys.stderr)
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from ..script import load_script
    from .scripts import add_dependencies, check_endpoint, set_endpoint_table, toml_value

    path = Path(args.script)
    if not path.is_file():
        raise CliError(f"no such script: {path} (create one with: hog init {path})")
    if args.set and not args.endpoint:
        raise CliError("--set needs --endpoint NAME (the table the keys go into)")
    if not args.dependencies and not args.endpoint:
        raise CliError("nothing to add: give dependencies (hog add script.py numpy) and/or "
                       "--endpoint NAME[:UUID]")
    if args.dependencies:
        add_dependencies(path, args.dependencies)
        print(f"added {', '.join(args.dependencies)} to {path}", file=sys.stderr)
    if args.endpoint:
        name, uuid = parse_endpoint_arg(args.endpoint)
        values: dict[str, Any] = {}
        if uuid:
            values["endpoint"] = uuid
        for item in args.set or ():
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise CliError(f"--set {item!r}: expected KEY=VALUE (e.g. --set walltime=600)")
            values[key.strip()] = toml_value(raw.strip())
        new = set_endpoint_table(load_script(path).source, name, values, str(path))
        check_endpoint(new, path, name)
        write_atomic(path, new)
        print(f"wrote [tool.hog.{name}] in {path}", file=sys.stderr)
    return 0


# -- hog bundle -------------------------------------------------------------------------------

def cmd_bundle(args: argparse.Namespace) -> int:
    from ..decorators import FunctionSpec
    from .bundles import call_args, find_function, render_bundle_for, split_target, with_print_line
    from .harness import import_script

    script, qualname = split_target(args.target)
    fn = find_function(import_script(script), qualname)
    spec = getattr(fn, "hog", None)
    endpoint = args.endpoint or (spec.endpoint if isinstance(spec, FunctionSpec) else "local")
    config: dict[str, Any] = dict(spec.config) if isinstance(spec, FunctionSpec) else {}
    for item in args.set or ():
        key, sep, raw = item.partition("=")
        if not sep:
            raise CliError(f"--set {item!r}: expected KEY=VALUE")
        config[key] = literal(raw)
    positional, keywords = call_args(fn, args.args)
    text = render_bundle_for(fn, positional, keywords, endpoint=endpoint,
                             script=str(Path(script).resolve()), config=config)
    if not args.raw:
        text = with_print_line(text)
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.output)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise; the bundle holds arguments
    with open(fd, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {out} ({len(text):,} bytes) for {qualname} on {endpoint!r}; "
          f"run it with: bash {out}", file=sys.stderr)
    return 0


# -- hog check --------------------------------------------------------------------------------

def cmd_check(args: argparse.Namespace) -> int:
    from .check import cmd_check as check

    return check(args)


# -- hog endpoints ----------------------------------------------------------------------------

def cmd_endpoints(args: argparse.Namespace) -> int:
    from ..backends import backend_keys, backend_names
    from ..config import _read_user_config, resolve_endpoint
    from ..script import load_script

    user, user_path = _read_user_config()
    meta = load_script(args.script) if args.script else None
    print(f"user config file: {user_path}" + ("" if os.path.exists(user_path)
                                                  else " (does not exist)"))
    if meta is not None:
        print(f"script: {meta.path}" + ("" if meta.has_block else " (no PEP 723 block)"))
    names = list(dict.fromkeys([*backend_names(), *table_names(user),
                                *table_names(meta.tool_hog if meta else {})]))
    failed = 0
    for name in names:
        try:
            ep = resolve_endpoint(
                name, script_tables=meta.tool_hog if meta else None,
                script_source=str(meta.path) if meta else "script",
                backend_keys=backend_keys, builtin_backends=backend_names)
        except HogError as exc:
            failed += 1
            print(f"\n{name}: error: {exc}")
            continue
        print(f"\n{name} (backend {ep.backend})")
        width = max(len(k) for k in ep.values)
        for key, value in ep.values.items():
            print(f"  {key.ljust(width)} = {value!r}    # {ep.sources.get(key, '?')}")
    return 1 if failed else 0


# -- hog cache --------------------------------------------------------------------------------

def cmd_cache(args: argparse.Namespace) -> int:
    from .envcache import ago, cache_root, cached_envs, human_size, prune

    root = cache_root(args.cache_dir)
    now = time.time()
    if args.action == "list":
        envs = cached_envs(root)
        print(f"environment cache: {root / 'envs'}")
        if not envs:
            print("  (empty)")
            return 0
        total = 0
        for env in envs:
            size = env.size()
            total += size
            pkgs = [p for p in env.packages() if p.lower() not in ("pip", "setuptools")]
            shown = ", ".join(pkgs[:6]) + (f", +{len(pkgs) - 6}" if len(pkgs) > 6 else "")
            print(f"  {env.key}  {human_size(size):>9}  python {env.python():<8} "
                  f"used {ago(now - env.last_used):<13} {shown}")
        print(f"{len(envs)} environment(s), {human_size(total)}")
        return 0
    older = None if args.all else args.older_than * 86400
    sizes = {env.key: env.size() for env in cached_envs(root)}
    results = prune(root, older, dry_run=args.dry_run, now=now)
    freed = 0
    for env, outcome in results:
        print(f"  {outcome} {env.key} ({human_size(sizes.get(env.key, 0))}, "
              f"used {ago(now - env.last_used)})")
        if outcome in ("removed", "would remove"):
            freed += sizes.get(env.key, 0)
    count = sum(1 for _, outcome in results if outcome in ("removed", "would remove"))
    if args.dry_run:
        print(f"{count} environment(s) to remove, would free {human_size(freed)}")
    else:
        print(f"{count} environment(s) removed, freed {human_size(freed)}")
    return 0


# -- hog results ------------------------------------------------------------------------------

def cmd_results(args: argparse.Namespace) -> int:
    from .results import cmd_results as run

    return run(args)


# -- hog doctor -------------------------------------------------------------------------------

def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import checks

    failures = 0
    for check in checks():
        failures += check.status == "FAIL"
        print(f"{check.status:<4}  {check.what:<18} {check.detail}", flush=True)
    print("\nall required checks passed" if not failures else f"\n{failures} check(s) failed")
    return 1 if failures else 0


# -- hog timeline -----------------------------------------------------------------------------

def cmd_timeline(args: argparse.Namespace) -> int:
    from .timeline import default_output, render_timeline

    out = Path(args.output) if args.output else default_output(args.records)
    count = render_timeline(args.records, out, args.title)
    print(f"wrote {out} ({count} call(s))", file=sys.stderr)
    return 0


# -- the parser -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The ``hog`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="hog",
        description="Run Python functions on HPC endpoints; environments come from the "
                    "script's PEP 723 block.",
        epilog="Start with: hog init analysis.py && hog run analysis.py",
    )
    parser.add_argument("--version", action="version", version=f"hog-executor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="call a @hog.harness() of a script and print its result",
                         description="Import SCRIPT as a module (its __main__ guard does not "
                                     "run), call one of its @hog.harness() functions with "
                                     "arguments parsed from its signature, print the result.",
                         epilog="Example: hog run analysis.py main -- 100 --scale 2")
    run.add_argument("script", help="the Python script")
    run.add_argument("rest", nargs=argparse.REMAINDER, metavar="[HARNESS] [-- ARGS]",
                     help="harness name (default: the only one, or main) and its arguments")
    run.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    run.add_argument("-v", "--verbose", action="store_true", help="debug messages too")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bars for map (default: on when stderr is a terminal)")
    run.set_defaults(func=cmd_run)

    init = sub.add_parser("init", help="write a PEP 723 script template with an endpoint table",
                          description="Write SCRIPT as a template, or add a PEP 723 block to an "
                                      "existing script that has none.")
    init.add_argument("script")
    init.add_argument("--endpoint", metavar="NAME[:UUID]",
                      help="endpoint table to write (default: local)")
    init.add_argument("--python", default=">=3.10", help="requires-python (default: >=3.10)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=cmd_init)

    add = sub.add_parser("add", help="add dependencies (uv add --script) or an endpoint table",
                         epilog="Example: hog add analysis.py numpy --endpoint anvil:<uuid> "
                                "--set account=abc123")
    add.add_argument("script")
    add.add_argument("dependencies", nargs="*", help="requirements, e.g. 'numpy>=2'")
    add.add_argument("--endpoint", metavar="NAME[:UUID]",
                     help="write [tool.hog.NAME] (endpoint = UUID for Globus Compute)")
    add.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="a key of the endpoint table (TOML value; repeatable)")
    add.set_defaults(func=cmd_add)

    bundle = sub.add_parser("bundle", help="write the exact bash bundle a call would send",
                            description="Write the bundle for FUNCTION(ARGS...) without running "
                                        "it. Run it by hand with: bash FILE (it prints the "
                                        "result).",
                            epilog="ARGS are Python literals (else strings); NAME=VALUE "
                                   "passes a keyword argument. Example: hog bundle "
                                   "analysis.py:square 3 -o bundle.sh")
    bundle.add_argument("target", metavar="SCRIPT.py:FUNCTION")
    bundle.add_argument("args", nargs="*", metavar="ARGS")
    bundle.add_argument("-o", "--output", default="bundle.sh",
                        help="file to write (default: bundle.sh; '-' for stdout)")
    bundle.add_argument("--endpoint", help="endpoint (default: the function's, or local)")
    bundle.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="an endpoint key for this call (repeatable)")
    bundle.add_argument("--raw", action="store_true",
                        help="exactly the bytes a backend receives (no readable result line)")
    bundle.set_defaults(func=cmd_bundle)

    check = sub.add_parser("check", help="check that a script's imports are declared in its "
                                         "PEP 723 block",
                           description="Report each import of a package installed here that "
                                       "SCRIPT's PEP 723 block does not declare (what submit "
                                       "refuses), and the local modules that travel with it. "
                                       "Exit status 1 when an import is undeclared.",
                           epilog="Example: hog check analysis.py")
    check.add_argument("script")
    check.set_defaults(func=cmd_check)

    endpoints = sub.add_parser("endpoints",
                               help="every endpoint and where each of its values comes from")
    endpoints.add_argument("--script", help="include this script's [tool.hog.*] tables")
    endpoints.set_defaults(func=cmd_endpoints)

    cache = sub.add_parser("cache", help="list or prune cached environments on this machine")
    cache.add_argument("action", choices=["list", "prune"])
    cache.add_argument("--cache-dir", help="cache parent (default: as bundles: HOG_CACHE_DIR, "
                                           "SCRATCH, TMPDIR, /tmp)")
    cache.add_argument("--older-than", type=float, default=30, metavar="DAYS",
                       help="prune environments unused for this many days (default: 30)")
    cache.add_argument("--all", action="store_true", help="prune every environment")
    cache.add_argument("--dry-run", action="store_true", help="show what prune would remove")
    cache.set_defaults(func=cmd_cache)

    results = sub.add_parser("results", help="list, show or prune cached results (cache=)",
                             description="The result cache of this machine: calls whose "
                                         "result is kept never run again.",
                             epilog="Example: hog results prune --older-than 30 --max-size 5GB")
    results.add_argument("action", choices=["list", "show", "prune"])
    results.add_argument("key", nargs="?", help="show: the key, or its first characters")
    results.add_argument("--dir", help="the cache directory (default: "
                                       "${XDG_CACHE_HOME:-~/.cache}/hog-executor/results)")
    results.add_argument("--value", action="store_true", help="show: unpickle and print the "
                                                              "value (authenticated first)")
    results.add_argument("--older-than", type=float, metavar="DAYS",
                         help="prune results stored more than DAYS ago")
    results.add_argument("--max-size", metavar="SIZE",
                         help="prune the oldest results until the rest fit (e.g. 5GB)")
    results.add_argument("--all", action="store_true", help="prune every result")
    results.add_argument("--dry-run", action="store_true", help="show what prune would remove")
    results.set_defaults(func=cmd_results)

    doctor = sub.add_parser("doctor", help="check uv, Python, config files and backends")
    doctor.set_defaults(func=cmd_doctor)

    from .cancel import add_parser as add_cancel

    add_cancel(sub)

    timeline = sub.add_parser("timeline", help="draw per-call timing records as a timeline",
                              description="Read timing records (JSON lines, one call per "
                                          "line; '-' for stdin) and draw them: one row per "
                                          "worker, one bar per call, coloured by phase.",
                              epilog="Example: hog timeline timings.jsonl -o timeline.html")
    timeline.add_argument("records", metavar="RECORDS.jsonl")
    timeline.add_argument("-o", "--output", metavar="PATH",
                          help="file to write: .html (no dependencies), or .png, .svg, .pdf "
                               "(need matplotlib); default: RECORDS with .html")
    timeline.add_argument("--title", help="heading (default: 'timeline of RECORDS')")
    timeline.set_defaults(func=cmd_timeline)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hog`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        result: int = args.func(args)
        return result
    except (CliError, HogError) as exc:
        print(f"hog: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if args.command == "run":  # raised by the harness: keep its traceback
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(f"hog: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hog: interrupted", file=sys.stderr)
        return 130
