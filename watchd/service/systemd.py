"""The service manager's side: sd_notify readiness, reload, stop, status and watchdog.

Every call is a no-op when systemd did not ask for it (no ``NOTIFY_SOCKET``, no
``WATCHDOG_USEC``), so ``watchd run`` behaves the same by hand and under systemd.
"""

from __future__ import annotations

import logging
import math
import os
import time

from systemd import daemon

from watchd.core.logs import log

# systemd waits this long past stop_grace: the daemon's own SIGTERM→SIGKILL step and exit.
STOP_MARGIN = 5.0


def _usec(seconds: float) -> int:
    return math.ceil(seconds * 1_000_000)


def _one_line(text: str) -> str:
    return " ".join(text.split())


class ServiceManager:
    def __init__(self) -> None:
        self.watchdog_interval = _watchdog_interval()
        self._next_watchdog = 0.0
        self._notify_failed = False
        self._status = ""

    def notify(self, *assignments: str) -> None:
        socket_path = os.environ.get("NOTIFY_SOCKET")
        if not socket_path:
            return
        try:
            daemon.notify("\n".join(assignments))
        except OSError as error:
            # A lost notification must not cost the service; say so once.
            if not self._notify_failed:
                self._notify_failed = True
                log(logging.WARNING, f"cannot notify the service manager: {error.strerror}",
                    socket=socket_path)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={_one_line(status)}")

    def reloading(self) -> None:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", "STATUS=reloading")

    def stopping(self, grace: float) -> None:
        """Tell systemd that stopping may take the grace for running actions, and a margin."""
        self.notify("STOPPING=1", f"EXTEND_TIMEOUT_USEC={_usec(grace + STOP_MARGIN)}",
                    "STATUS=stopping")

    def status(self, status: str) -> None:
        """Send STATUS= when it says something new: the main loop calls this on every turn."""
        line = _one_line(status)
        if line != self._status:
            self._status = line
            self.notify(f"STATUS={line}")

    def watchdog_timeout(self, now: float) -> float | None:
        """Seconds until the next watchdog ping is due; None without a watchdog."""
        if self.watchdog_interval is None:
            return None
        return max(0.0, self._next_watchdog - now)

    def pet_watchdog(self, now: float) -> None:
        """Ping if due. Call only when the event reader is alive and the main loop turning."""
        if self.watchdog_interval is not None and now >= self._next_watchdog:
            self.notify("WATCHDOG=1")
            self._next_watchdog = now + self.watchdog_interval


def _watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises; None if not for this process."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    owner = os.environ.get("WATCHDOG_PID", "")
    if usec <= 0 or (owner and owner != str(os.getpid())):
        return None
    return usec / 2 / 1_000_000
