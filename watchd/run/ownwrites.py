"""Loop protection for ``ignore_own_writes``: inotify does not say who wrote a file.

So the rule is about paths, not writers: while an action of a rule runs for a path, and
for ``SETTLE`` seconds after it ends, events on that same path do not fire that rule
again. What this covers: an action that rewrites, touches or renames over the file it was
started for (a formatter, a compressor writing in place). What it does not: writes to
other paths (an action that writes ``x.out`` next to ``x`` triggers a rule that matches
``x.out``: exclude it with a pattern), writes that land more than ``SETTLE`` seconds after
the action ended, and other writers' changes to the path during that window, which are
ignored too.
"""

from __future__ import annotations

import math
import threading
import time

from watchd.core.job import Job, JobKey

SETTLE = 1.0
_PRUNE_EVERY = 1024


class OwnWrites:
    def __init__(self) -> None:
        self._until: dict[JobKey, float] = {}
        self._lock = threading.Lock()
        self._finished = 0

    def started(self, job: Job) -> None:
        with self._lock:
            for key in _keys(job):
                self._until[key] = math.inf

    def finished(self, job: Job) -> None:
        now = time.monotonic()
        with self._lock:
            for key in _keys(job):
                self._until[key] = now + SETTLE
            self._finished += 1
            if self._finished % _PRUNE_EVERY == 0:
                self._until = {k: until for k, until in self._until.items() if until > now}

    def ignoring(self, key: JobKey) -> bool:
        """Whether an event on this path is the rule's own doing (called by the notifier)."""
        until = self._until.get(key)
        return until is not None and time.monotonic() < until


def _keys(job: Job) -> list[JobKey]:
    """The rule and each path the job acts on (a batch's every path)."""
    return [(job.rule.name, event.path) for event in job.events]
