"""While a catch-up runs, the live events and the catch-up must not both act on one change.

A file written just after the watches were set and before the catch-up looked at it comes
twice: as a live event, and as a difference from the ledger's record. The catch-up skips a
path a live event already reached (for the same rule); a live event for a path the catch-up
already told is skipped if the path is still as the catch-up found it (it is the same change;
one that changed again since is news). Both sides run under the watch table's lock.
"""

from __future__ import annotations

import os

from watchd.core.job import Job, JobKey
from watchd.ledger.batch import record_of
from watchd.source.snapshot import FileState

GONE: FileState = (0, -4, 0)  # what a path the catch-up told deleted is: nothing


class Overlap:
    def __init__(self) -> None:
        self.live: set[JobKey] = set()
        self.told: dict[JobKey, FileState] = {}

    def told_already(self, job: Job) -> bool:
        """For a live job: whether the catch-up already acted on this very change."""
        key = job.key
        state = self.told.get(key)
        if state is not None and state_now(job.event.path) == state:
            return True
        self.live.add(key)
        return False

    def claim(self, key: JobKey, state: FileState, acting: bool) -> bool:
        """For a change the catch-up found: whether it is the catch-up's to act on (if
        ``acting``) and to record, which it is unless a live event came for the path (that
        one acts, and records what it finds)."""
        if key in self.live:
            return False
        if acting:
            self.told[key] = state
        return True


def state_now(path: bytes) -> FileState:
    """What the ledger would record of ``path`` now."""
    try:
        return record_of(os.lstat(path))
    except OSError:
        return GONE
