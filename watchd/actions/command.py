"""The command action: run an argv (never a shell) in its own session, bounded in time.

The process group is the unit: past the timeout it gets SIGTERM, then SIGKILL;
when the command exits, whatever it left running in its group is killed too, so
an action never outlives its log line. stdin and stdout are /dev/null; the tail of
stderr is kept for the log of a failure.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from watchd.jobs import Job
from watchd.logs import escape
from watchd.placeholders import PLACEHOLDERS, render
from watchd.rules import Command, RunAs

KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for a command past its timeout
STDERR_TAIL = 2048  # bytes of stderr kept for the log
# CPython before 3.11.6 holds the interpreter lock while vfork waits for the command's exec
# (gh-104372): such spawns run one at a time whatever the workers do, and workers that queue on
# a lock of their own for that turn, not on the interpreter lock, start commands faster (4
# workers: 1,300 → 1,600 a second). A spawn that forks (user:) or a newer Python lets the
# others run meanwhile, and must not wait on a slow exec: they take no turn.
_SPAWNS_HOLD_INTERPRETER = sys.version_info < (3, 11, 6)
_SPAWN_TURN = threading.Lock()
# Variables of the daemon's own supervisor that must not leak into commands.
PRIVATE_ENV_PREFIXES = (b"NOTIFY_SOCKET", b"WATCHDOG_", b"LISTEN_", b"WATCHD_", b"INVOCATION_ID",
                        b"JOURNAL_STREAM")


@dataclass(frozen=True, slots=True)
class CommandResult:
    """How one run ended. ``status`` is the exit status, or minus the signal that ended it."""

    status: int | None
    duration: float
    timed_out: bool
    stderr: bytes
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 0 and not self.timed_out


@functools.cache
def _inherited() -> dict[bytes, bytes]:
    """The daemon's environment less what belongs to its supervisor (it does not change)."""
    return {k: v for k, v in os.environb.items() if not k.startswith(PRIVATE_ENV_PREFIXES)}


@functools.cache
def _devnull() -> int:
    # One descriptor for every command's stdin and stdout, rather than an open and close per spawn.
    return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)


def environment(job: Job, command: Command, user: RunAs | None,
                values: Mapping[str, bytes]) -> dict[bytes, bytes]:
    env = dict(_inherited())
    for name in PLACEHOLDERS:
        env[b"WATCHD_" + name.upper().encode()] = values[name]
    env[b"WATCHD_IS_DIR"] = b"1" if job.event.is_dir else b"0"
    if user is not None:
        env[b"HOME"] = os.fsencode(user.home)
        env[b"USER"] = env[b"LOGNAME"] = user.name.encode()
    env.update(command.env)
    return env


class RunningCommand:
    """One command run; ``kill`` may be called from another thread (daemon stop)."""

    def __init__(self, job: Job, command: Command, user: RunAs | None) -> None:
        self.job = job
        self.command = command
        self.user = user
        self.process: subprocess.Popen[bytes] | None = None
        # Held while the group is signalled and while the leader is reaped, so that a
        # kill from another thread never reaches a group id the kernel has given away.
        self._lock = threading.Lock()

    def run(self) -> CommandResult:
        values = self.job.values()
        argv = [render(template, values) for template in self.command.argv]
        user = self.user
        started = time.monotonic()
        # The daemon keeps the write end too, until the command has exited: the pipe then
        # never reports its end, and the exit is the one wake-up of a quiet command.
        stderr_read, stderr_write = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                with _spawn_turn(user), self._lock:
                    self.process = subprocess.Popen(
                        argv,
                        env=environment(self.job, self.command, user, values),
                        cwd=self.command.cwd,
                        stdin=_devnull(),
                        stdout=_devnull(),
                        stderr=stderr_write,
                        start_new_session=True,
                        user=user.uid if user else None,
                        group=user.gid if user else None,
                        extra_groups=list(user.groups) if user else None,
                    )
            except (OSError, subprocess.SubprocessError) as error:
                return CommandResult(None, time.monotonic() - started, False, b"",
                                     _start_failure(error))
            stderr, timed_out = self._collect(stderr_read, started + self.command.timeout)
        finally:
            os.close(stderr_read)
            os.close(stderr_write)
        with self._lock:
            # The exited leader still holds the group id, so this cannot hit a recycled group.
            self._signal_group(signal.SIGKILL)
            status = self.process.wait()
        return CommandResult(status, time.monotonic() - started, timed_out, stderr)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (the command and anything it started)."""
        with self._lock:
            self._signal_group(sig)

    def _signal_group(self, sig: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    def _collect(self, stderr: int, deadline: float) -> tuple[bytes, bool]:
        """Keep stderr's tail until the command exits; past the deadline TERM, then KILL.

        The exit is seen through a pidfd, which does not reap: the leader stays a
        zombie, holding its process group id, until ``run`` has killed the group.
        """
        assert self.process is not None
        os.set_blocking(stderr, False)
        tail = b""
        timed_out = False
        pidfd = os.pidfd_open(self.process.pid)
        try:
            # poll, not a selector: no epoll descriptor to make and close for every command.
            waiting = select.poll()
            waiting.register(pidfd, select.POLLIN)
            waiting.register(stderr, select.POLLIN)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.kill(signal.SIGKILL if timed_out else signal.SIGTERM)
                    timed_out, deadline = True, time.monotonic() + KILL_GRACE
                    continue
                ready = dict(waiting.poll(remaining * 1000))
                if stderr in ready:  # this poll also shows what it wrote as it exited
                    tail = _read_tail(stderr, tail)
                if pidfd in ready:
                    return tail, timed_out
        finally:
            os.close(pidfd)


def _start_failure(error: OSError | subprocess.SubprocessError) -> str:
    """Why a command did not start, in words: the file it names escaped, never a repr."""
    reason = getattr(error, "strerror", None) or str(error)
    filename = getattr(error, "filename", None)
    if filename:
        return f"cannot start {escape(os.fsencode(filename))}: {reason}"
    return f"cannot start: {reason}"


def _spawn_turn(user: RunAs | None) -> contextlib.AbstractContextManager[object]:
    """The turn a spawn waits for: see ``_SPAWN_TURN``. Popen forks rather than vforks to
    switch user."""
    if _SPAWNS_HOLD_INTERPRETER and user is None:
        return _SPAWN_TURN
    return contextlib.nullcontext()


def _read_tail(fd: int, tail: bytes) -> bytes:
    """``tail`` and what the pipe holds now, cut to its last ``STDERR_TAIL`` bytes."""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            tail = (tail + chunk)[-STDERR_TAIL:]
    return tail
