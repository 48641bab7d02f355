"""The control socket's server: one thread of its own, never the main loop's.

Every socket is non-blocking and served by one selector: a client that is slow, stuck or
never reads costs its own connection, bounded in time (``CLIENT_TIMEOUT``) and in number
(``MAX_CLIENTS``), and nothing else. Only root and the daemon's own user are answered
(SO_PEERCRED). What an answer needs of the daemon is asked of the main loop through
``answers`` (which waits at most a turn of it); the ledger is read here, on this thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Mapping

from watchd.control.protocol import (
    MAX_REQUEST,
    ProtocolError,
    answer,
    encode,
    parse_request,
    refusal,
)
from watchd.core.logs import log
from watchd.core.trace import Tracer, Tracing
from watchd.core.wakeup import Wakeup

MAX_CLIENTS = 32
CLIENT_TIMEOUT = 30.0  # seconds a client has to send its request, and then to read its answer
TRACE_BUFFER = 1 << 20  # bytes of trace lines waiting in the kernel's and our buffer, at most
TRACE_LOOK = 0.05  # seconds between looks at the tracers' lines, while someone traces
_PEERCRED = struct.Struct("3i")  # pid, uid, gid

Answer = Callable[[dict[str, object]], object]


class _Client:
    __slots__ = ("connection", "deadline", "done", "received", "tracer", "unsent")

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.received = b""
        self.unsent = bytearray()
        self.tracer: Tracer | None = None
        self.done = False  # close once what is unsent is sent
        self.deadline = time.monotonic() + CLIENT_TIMEOUT


class ControlServer:
    def __init__(self, path: str, answers: Mapping[str, Answer], tracing: Tracing) -> None:
        self.path = path
        self.answers = answers
        self.tracing = tracing
        self._listener: socket.socket | None = None
        self._selector = selectors.DefaultSelector()
        self._wakeup = Wakeup()
        self._stopping = False
        self._clients: dict[socket.socket, _Client] = {}
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        """Listen at ``path``; OSError if it cannot (or another daemon answers there)."""
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        _remove_stale(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listener.bind(self.path)
            os.chmod(self.path, 0o600)  # SO_PEERCRED decides; this says so to whoever looks
            listener.listen(16)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ)
        self._selector.register(self._wakeup.fd, selectors.EVENT_READ)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="watchd-control", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stopping = True
        self._wakeup.wake()
        if self._thread is not None:
            self._thread.join(timeout)
        for client in list(self._clients.values()):
            self._close(client)
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self._selector.close()
        self._wakeup.close()

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._turn()
            except Exception:  # a bug here must not end the socket: status would go dark
                log(logging.ERROR, "control socket: internal error", exc_info=True)

    def _turn(self) -> None:
        for key, mask in self._selector.select(timeout=self._timeout()):
            if key.fileobj is self._listener:
                self._accept()
            elif key.fileobj == self._wakeup.fd:
                self._wakeup.drain()
            else:
                client = self._clients.get(key.fileobj)  # type: ignore[call-overload]
                if client is not None:
                    self._serve(client, mask)
        now = time.monotonic()
        for client in list(self._clients.values()):
            if client.tracer is not None:
                self._pump(client)
            elif now > client.deadline:
                self._close(client)

    def _timeout(self) -> float | None:
        """How long the selector may wait: while someone traces, until the next look at the
        tracers' lines; else until the first client's deadline; with no client, until one
        comes (an idle daemon wakes no thread: this one looked once a second)."""
        if not self._clients:
            return None
        if any(client.tracer is not None for client in self._clients.values()):
            return TRACE_LOOK
        first = min(client.deadline for client in self._clients.values())
        return max(0.0, first - time.monotonic())

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            connection, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        connection.setblocking(False)
        problem = _peer_problem(connection)
        if problem is None and len(self._clients) >= MAX_CLIENTS:
            problem = f"too many clients ({MAX_CLIENTS}); try again"
        if problem is not None:
            with contextlib.suppress(OSError):
                connection.send(refusal(problem))
            connection.close()
            return
        client = _Client(connection)
        self._clients[connection] = client
        self._selector.register(connection, selectors.EVENT_READ)

    def _serve(self, client: _Client, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._send(client)
        if mask & selectors.EVENT_READ and client.connection in self._clients:
            self._receive(client)

    def _receive(self, client: _Client) -> None:
        try:
            data = client.connection.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away (a tracer's Ctrl-C)
            self._close(client)
            return
        if client.tracer is not None or client.done:
            return  # nothing more is asked on a connection: what it sends is not read
        client.received += data
        line, newline, _ = client.received.partition(b"\n")
        if not newline:
            if len(client.received) > MAX_REQUEST:
                self._reply(client, refusal(f"a request is one line of at most {MAX_REQUEST} "
                                            "bytes"))
            return
        self._reply(client, self._answer(client, line))

    def _answer(self, client: _Client, line: bytes) -> bytes:
        try:
            message = parse_request(line)
            command = str(message["command"])
            result = self.answers[command](message)
        except ProtocolError as error:
            return refusal(str(error))
        except Exception:
            log(logging.ERROR, "control socket: internal error", exc_info=True)
            return refusal("internal error (see the daemon's log)")
        if isinstance(result, Tracer):  # a trace: its lines follow this answer
            client.tracer = result
            self.tracing.attach(result)
            return answer(result.asked())
        return answer(result)

    def _reply(self, client: _Client, data: bytes) -> None:
        client.unsent += data
        client.done = client.tracer is None
        client.deadline = time.monotonic() + CLIENT_TIMEOUT
        self._send(client)

    def _pump(self, client: _Client) -> None:
        """Move the tracer's waiting lines into what is sent, as far as the buffer allows."""
        tracer = client.tracer
        assert tracer is not None
        if tracer.dropped and len(client.unsent) < TRACE_BUFFER:
            client.unsent += encode({"dropped": tracer.dropped})
            tracer.dropped = 0
        while tracer.lines and len(client.unsent) < TRACE_BUFFER:
            client.unsent += encode({"trace": tracer.lines.popleft()})
        if client.unsent:
            self._send(client)

    def _send(self, client: _Client) -> None:
        try:
            sent = client.connection.send(client.unsent)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(client)
            return
        del client.unsent[:sent]
        if client.done and not client.unsent:
            self._close(client)
            return
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.unsent else 0)
        self._selector.modify(client.connection, wanted)

    def _close(self, client: _Client) -> None:
        if self._clients.pop(client.connection, None) is None:
            return
        if client.tracer is not None:
            self.tracing.detach(client.tracer)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(client.connection)
        client.connection.close()


def _peer_problem(connection: socket.socket) -> str | None:
    """Why this peer is not answered: only root and the daemon's own user are."""
    _, uid, _ = _PEERCRED.unpack(connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                       _PEERCRED.size))
    if uid in (0, os.geteuid()):
        return None
    return f"refused: user {uid} may not ask; only root or the daemon's own user"


def _remove_stale(path: str) -> None:
    """Remove a socket a dead daemon left; refuse to take over one another daemon serves."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise OSError(f"{path} exists and is not a socket")
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    else:
        raise OSError(f"another watchd answers on {path} (a second instance needs --socket)")
    finally:
        probe.close()
