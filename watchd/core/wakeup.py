"""A wake-up from another thread for a thread asleep in ``poll`` or ``select``: an eventfd,
readable from the first wake until the sleeper drains it, and written once in between.

The flag and the descriptor change together, under a lock. Apart, a wake between the flag
cleared and the descriptor drained would leave the flag set over an empty descriptor (every
later wake skipped, the sleeper asleep for good); and a drain between the flag set and the
descriptor written, a readable descriptor that a sleeper draining only when the flag says
so never drains (it would spin).
"""

from __future__ import annotations

import contextlib
import os
import threading


class Wakeup:
    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # Woken and not drained yet. Read without the lock it is a hint: a wake that the
        # sleeper's look misses leaves the descriptor readable, and its next poll returns.
        self.pending = False
        self._lock = threading.Lock()

    def wake(self) -> None:
        """From any thread: make ``fd`` readable, if it is not already."""
        with self._lock:
            if self.pending:
                return
            self.pending = True
            with contextlib.suppress(OSError):  # closed: the sleeper has gone
                os.eventfd_write(self.fd, 1)

    def drain(self) -> None:
        """On the sleeper's thread: ``fd`` is not readable after this, until the next wake."""
        with self._lock:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self.fd)
            self.pending = False

    def close(self) -> None:
        os.close(self.fd)


class Doorbell:
    """The main loop's wake-up: a pipe that the C-level signal handler writes each signal's
    number to (``signal.set_wakeup_fd``), and that other threads ring, each for a reason.

    A ring writes a byte only if its reason is not already waiting to be taken; the loop
    empties the pipe before it takes the reasons. Taken the other way round, a ring between
    the two would leave its reason marked as waiting over an empty pipe, and every later ring
    for it would be skipped: the loop would never hear of that reason again.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._rung: set[int] = set()
        self._lock = threading.Lock()

    def ring(self, reason: int) -> None:
        """From any thread: the loop wakes, and its next ``take`` returns ``reason``."""
        with self._lock:
            if reason in self._rung:
                return
            self._rung.add(reason)
        with contextlib.suppress(BlockingIOError):  # full: the loop wakes all the same
            os.write(self.write_fd, _RING)

    def take(self) -> tuple[bytes, frozenset[int]]:
        """On the loop's thread: the numbers of the signals that came, and the reasons rung,
        since the last take."""
        try:
            woken_by = os.read(self.read_fd, 512)
        except BlockingIOError:
            woken_by = b""
        with self._lock:
            rung, self._rung = frozenset(self._rung), set()
        return woken_by.replace(_RING, b""), rung

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


_RING = b"\0"  # no signal has the number 0
