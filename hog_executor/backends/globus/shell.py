"""The text a Globus ``ShellFunction`` runs, and how its result becomes an `Output`.

A bundle is ``head + payload_line(payload) + tail``. The registered function's command is the
head and tail with the payload line left as the one format field, so each call sends only its
payload. These are pure functions of their inputs.
"""

from __future__ import annotations

import base64
from typing import Any

from ...bundle import EXIT_SETUP_FAILED, PAYLOAD_NAME
from .. import Output

__all__ = [
    "ARG_LIMIT",
    "PAYLOAD_FIELD",
    "SANDBOX_WARNING",
    "command_size",
    "command_template",
    "encode_payload",
    "output_from_result",
    "payload_budget",
    "shared_head",
    "strip_sandbox_warning",
    "wrap",
]

#: The format field the payload fills in.
PAYLOAD_FIELD = "payload"
#: Longest command a ShellFunction can run: it reaches ``bash -c`` as one argument, and Linux
#: refuses a single argument of 32 pages (131072 bytes with 4 KiB pages) or more.
ARG_LIMIT = 131_071
#: Bytes kept free below `ARG_LIMIT`.
ARG_MARGIN = 1024
#: The start of the line the SDK writes to stderr when the endpoint does not sandbox tasks.
SANDBOX_WARNING = "WARNING: Task sandboxing will not work"

_LINE_START = f"hog_put {PAYLOAD_NAME} "

# The endpoint reads the command's output as text: the bundle runs in a subshell whose stdout
# and stderr go to private files, which are then printed with invalid UTF-8 dropped, so that
# no byte a call prints can make the endpoint fail to read its result.
_WRAP_HEAD = f"""hog_o=$(mktemp) && hog_e=$(mktemp) || exit {EXIT_SETUP_FAILED}
trap 'rm -f "$hog_o" "$hog_e"' EXIT
(
"""
_WRAP_TAIL = """) > "$hog_o" 2> "$hog_e"
hog_s=$?
hog_text() {
  if command -v iconv >/dev/null 2>&1; then iconv -c -f UTF-8 -t UTF-8 "$1"; else cat "$1"; fi
}
hog_text "$hog_o"
hog_text "$hog_e" >&2
exit "$hog_s"
"""


def wrap(bundle: str) -> str:
    """The command the endpoint runs for ``bundle`` (see `command_template`)."""
    return _WRAP_HEAD + bundle + _WRAP_TAIL


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def shared_head(head: str) -> str:
    """``head`` without the function named in its title comment.

    All functions of one script and configuration then share one registered function.
    """
    first, sep, rest = head.partition("\n")
    second, sep2, rest2 = rest.partition("\n")
    if second.startswith("# hog-executor ") and ": " in second:
        return first + sep + second.split(": ", 1)[0] + sep2 + rest2
    return head


def command_template(head: str, tail: str) -> str:
    """The ShellFunction command: ``head``, the payload line as ``{payload}``, ``tail``.

    Every other brace is doubled, so ``str.format(payload=...)`` gives exactly
    ``wrap(head + payload_line(payload) + tail)``.
    """
    return (_escape(_WRAP_HEAD + head) + _LINE_START + "{" + PAYLOAD_FIELD + "}\n"
            + _escape(tail + _WRAP_TAIL))


def encode_payload(payload: bytes) -> str:
    """The format argument for ``payload`` (base64: no braces, no quotes, no spaces)."""
    return base64.b64encode(payload).decode("ascii")


def command_size(head: str, tail: str, payload_size: int) -> int:
    """Bytes of the formatted command for a payload of ``payload_size`` bytes."""
    encoded = 4 * ((payload_size + 2) // 3)
    return (len(_WRAP_HEAD) + len(head.encode("utf-8", "surrogateescape")) + len(_LINE_START)
            + encoded + 1 + len(tail.encode("utf-8", "surrogateescape")) + len(_WRAP_TAIL))


def payload_budget(head: str, tail: str) -> int:
    """The largest payload (bytes) whose formatted command stays under `ARG_LIMIT`."""
    room = ARG_LIMIT - ARG_MARGIN - command_size(head, tail, 0)
    return max(0, 3 * (room // 4))


def strip_sandbox_warning(stderr: str) -> str:
    """``stderr`` without the SDK's line about task sandboxing."""
    if SANDBOX_WARNING not in stderr:
        return stderr
    return "".join(ln for ln in stderr.splitlines(keepends=True)
                   if not ln.startswith(SANDBOX_WARNING))


def output_from_result(result: Any) -> Output:
    """Turn a ``ShellResult`` (or its dict form) into an `Output`."""
    if isinstance(result, dict):
        rc, out, err = result["returncode"], result["stdout"], result["stderr"]
    else:
        rc, out, err = result.returncode, result.stdout, result.stderr
    return Output(
        returncode=int(rc),
        stdout=(out or "").encode("utf-8", "surrogateescape"),
        stderr=strip_sandbox_warning(err or "").encode("utf-8", "surrogateescape"),
    )
