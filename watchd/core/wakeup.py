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
