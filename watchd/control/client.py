"""The command line's side of the control socket: ask, and read the answers."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator

from watchd.control.protocol import ProtocolError, request

ANSWER_TIMEOUT = 30.0  # seconds: a daemon that answers nothing in this long is not answering


class NoDaemon(Exception):
    """No daemon answers on the socket (it is not running, or listens elsewhere)."""


def connect(path: str) -> socket.socket:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    connection.settimeout(ANSWER_TIMEOUT)
    try:
        connection.connect(path)
    except (FileNotFoundError, ConnectionRefusedError) as error:
        connection.close()
        raise NoDaemon(f"no watchd answers on {path}: {error.strerror}") from None
    except PermissionError:
        connection.close()
        raise NoDaemon(f"no permission to talk to watchd on {path}: root or the daemon's "
                       "user only") from None
    return connection


def ask(path: str, command: str, **arguments: object) -> object:
    """The result of one request; ProtocolError with the daemon's words if it refused."""
    with connect(path) as connection:
        _send(connection, request(command, **arguments))
        first = next(_lines(connection), None)
    return _result(first, path)


def stream(path: str, command: str, **arguments: object) -> Iterator[dict[str, object]]:
    """The first answer's result, then each line that follows, until the daemon closes."""
    with connect(path) as connection:
        _send(connection, request(command, **arguments))
        lines = _lines(connection, timeout=None)
        yield {"result": _result(next(lines, None), path)}
        yield from lines


def _send(connection: socket.socket, data: bytes) -> None:
    # A daemon that refuses (too many clients, a user it does not answer) says why and closes
    # before reading: its words are still there to read.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        connection.sendall(data)


def _result(message: dict[str, object] | None, path: str) -> object:
    if message is None:
        raise NoDaemon(f"watchd on {path} closed the connection without answering")
    if not message.get("ok"):
        raise ProtocolError(str(message.get("error", "refused, no reason given")))
    return message.get("result")


def _lines(connection: socket.socket,
           timeout: float | None = ANSWER_TIMEOUT) -> Iterator[dict[str, object]]:
    pending = b""
    connection.settimeout(timeout)
    while True:
        try:
            data = connection.recv(65536)
        except TimeoutError:
            raise NoDaemon("watchd did not answer in time") from None
        if not data:
            return
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ProtocolError("an answer that is not a JSON object")
            yield message
