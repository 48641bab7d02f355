"""The watch table's lock: re-entrant, and fair to the threads that wait for it.

The notifier takes it for one round of events at a time, round after round under a storm of
renames. A lock let go and taken again at once stays with the thread that let it go: Linux
wakes a waiter, but the running thread takes the lock before the waiter has run. So a reload,
a catch-up or a poll waited for the storm to end (a reload of 20,000 watches under 500
renames a second: up to 70 s). Between two rounds the notifier lets those waiting go first.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

# How long a round waits at most for the waiting threads to take the lock (a waiter that the
# machine does not run meanwhile must not stop the events), and how often it looks.
HANDOVER_WAIT = 0.05
HANDOVER_LOOK = 0.0002


class TableLock:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._waiting: set[int] = set()  # threads waiting for it (a set's add is atomic)

    def __enter__(self) -> None:
        if self._lock.acquire(blocking=False):
            return
        me = threading.get_ident()
        self._waiting.add(me)
        try:
            self._lock.acquire()
        finally:
            self._waiting.discard(me)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._lock.release()

    def let_waiting_first(self) -> None:
        """Between two rounds, the lock not held: wait until those waiting for it have taken
        it (``HANDOVER_WAIT`` at most); then the next round waits for them to be done."""
        if not self._waiting:
            return
        deadline = time.monotonic() + HANDOVER_WAIT
        while self._waiting and time.monotonic() < deadline:
            time.sleep(HANDOVER_LOOK)
