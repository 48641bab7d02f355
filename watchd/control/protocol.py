"""The control socket's protocol, version 1 (documented in watchd(8)).

A client connects to the Unix stream socket and sends one request, a JSON object on one line:
``{"version": 1, "command": "status"}``. The daemon answers with one JSON object on a line,
``{"version": 1, "ok": true, "result": {...}}`` or ``{"version": 1, "ok": false, "error":
"..."}``, and closes the connection; for ``trace`` the first answer is followed by a line per
trace record (``{"trace": {...}}``, and ``{"dropped": N}`` when a slow reader lost lines) until
the client closes. File names are text, their bytes escaped as in the journal.
"""

from __future__ import annotations

import json
import os

VERSION = 1
DEFAULT_SOCKET = "/run/watchd/control"
SOCKET_VARIABLE = "WATCHD_SOCKET"
MAX_REQUEST = 64 * 1024  # bytes of one request line
COMMANDS = ("status", "jobs", "trace")


class ProtocolError(Exception):
    """A request or an answer that is not what this protocol says."""


def socket_path(given: str | None = None) -> str:
    """Where the control socket is: ``--socket``, else ``$WATCHD_SOCKET``, else the default."""
    return given or os.environ.get(SOCKET_VARIABLE) or DEFAULT_SOCKET


def encode(message: dict[str, object]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def request(command: str, **arguments: object) -> bytes:
    return encode({"version": VERSION, "command": command, **arguments})


def answer(result: object) -> bytes:
    return encode({"version": VERSION, "ok": True, "result": result})


def refusal(error: str) -> bytes:
    return encode({"version": VERSION, "ok": False, "error": error})


def parse_request(line: bytes) -> dict[str, object]:
    """The request in ``line``; ProtocolError, in words, if it is not one this daemon serves."""
    try:
        message = json.loads(line)
    except ValueError as error:
        raise ProtocolError(f"not JSON: {error}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a request is a JSON object")
    if message.get("version") != VERSION:
        raise ProtocolError(f"protocol version {message.get('version')!r} is not served; "
                            f"this daemon speaks version {VERSION}")
    if message.get("command") not in COMMANDS:
        raise ProtocolError(f"unknown command {message.get('command')!r}; known: "
                            + ", ".join(COMMANDS))
    return message
