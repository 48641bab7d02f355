"""Another process's writes to the ledger: ``watchd jobs retry`` while the daemon runs.

The daemon learns of them without looking every second (an idle daemon wakes for nothing): its
state directory is watched for a file closed after writing, which the command's connection to
the ledger does as it ends, and the writer then looks for what was asked. The daemon's own
connection stays open, so it is never told its own writes.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from watchd.core.events import IN_CLOSE_WRITE
from watchd.source.table import WatchManager


class OthersWrites:
    def __init__(self, state_dir: Path) -> None:
        # The source's manager: no inotify instance left is the same clear fatal error.
        self._manager = WatchManager()
        self.fd: int | None = self._manager.get_fd()
        try:
            self._manager.add(os.fsencode(os.path.realpath(state_dir)), IN_CLOSE_WRITE)
        except OSError:
            # A state directory that cannot be watched (missing: the ledger is degraded; the
            # watch limit) tells nothing; a retry asked for then runs at the next start, as
            # when the daemon is down.
            self.fd = None
        if self.fd is not None:
            os.set_blocking(self.fd, False)

    def drain(self) -> None:
        """Read what was told: that something was written is all that matters."""
        if self.fd is not None:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                os.read(self.fd, 65536)

    def close(self) -> None:
        self._manager.close()
