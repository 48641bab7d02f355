"""One daemon to a state directory: the ledger and the deliveries in it are one daemon's.

Two daemons on one ``state_dir`` would both act on every event and both run, at their start,
every job the ledger holds unfinished. ``watchd run`` holds an exclusive ``flock`` on
``<state_dir>/lock`` (its pid written in it, for the message of the one refused) from its start
until it ends; a second start on the same directory is a clear fatal error. The lock goes
with the process, however it ends (``kill -9`` included): nothing is left to clean up. The
command line's ``watchd jobs`` and ``watchd webhooks`` read and write the ledger without it,
as SQLite lets them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = "lock"


class StateDirTaken(OSError):
    """Another running daemon holds the state directory."""


def claim(state_dir: Path) -> int | None:
    """Hold ``state_dir`` for this process: the lock's descriptor, to close at the end (None
    where the directory cannot be made, nor its lock file had: the ledger then says why,
    degraded). Raises ``StateDirTaken`` if another process holds it."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor, writable = _open_lock(state_dir / LOCK_NAME)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        # A lock this process cannot write, its holder most likely could not either (a
        # read-only mount): the pid in it is then an earlier daemon's.
        written = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
        holder = written if writable and written else "unknown"
        os.close(descriptor)
        raise StateDirTaken(f"another watchd (pid {holder}) uses the state directory "
                            f"{state_dir}: give each instance a settings.state_dir of its "
                            "own") from None
    except OSError:
        os.close(descriptor)
        return None
    if writable:
        with contextlib.suppress(OSError):  # a full disk: the lock holds all the same
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    return descriptor


def _open_lock(path: Path) -> tuple[int, bool]:
    """The lock file's descriptor, and whether it can be written. Where it cannot be (a
    read-only state directory, another user's file), the one there is locked read-only, as
    flock allows: a second daemon is refused there too (else both run the ledger's jobs)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600), True
    except OSError as error:
        if error.errno not in (errno.EROFS, errno.EACCES):
            raise
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW), False
