"""``hog check``: the import check ``submit`` runs, for one script, before anything runs.

It reads the script's imports (and those of the local modules that travel with it) and
reports each import of a package installed here that the PEP 723 block does not declare.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import CliError

__all__ = ["cmd_check"]


def cmd_check(args: argparse.Namespace) -> int:
    """Exit status 1 when an import is undeclared, else 0."""
    from ..imports import analyze, undeclared_imports, undeclared_message
    from ..script import load_script

    path = Path(args.script)
    if not path.is_file():
        raise CliError(f"no such script: {path}")
    meta = load_script(path)
    script = str(path.resolve())
    found = analyze(script, meta.source)
    if found.local:
        print(f"local modules travelling with {path}: "
              f"{', '.join(m.relpath for m in found.local)}")
    if found.skipped:
        print(f"left out (over the size limits): {', '.join(found.skipped)}")
    if not meta.has_block:
        missing = undeclared_imports(found, ())
        print(f"{path} has no PEP 723 block: its calls get the packages their pickles refer "
              "to, at this machine's versions")
        if missing:
            names = " ".join(dict.fromkeys(m.distribution for m in missing))
            print(f"it imports installed packages: {names}; to declare them: "
                  f"hog init {path} && hog add {path} {names}")
        return 0
    missing = undeclared_imports(found, tuple(meta.dependencies))
    if missing:
        print(undeclared_message(script, missing))
        return 1
    print(f"{path}: every import is declared, in the standard library, local or guarded")
    return 0
