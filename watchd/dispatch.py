"""Rule match → queue: each event is matched in its directory's scope, each match queued as a job.

This runs on the notifier thread, so it never blocks: a full queue drops the
job, counts it, and asks the main loop to say so.
"""

from __future__ import annotations

from collections.abc import Callable

from watchd.counters import Counters
from watchd.events import FileEvent
from watchd.jobs import Job, JobQueue
from watchd.rules import Scope, match


class Dispatcher:
    def __init__(self, jobs: JobQueue, counters: Counters,
                 on_drop: Callable[[], None]) -> None:
        self.jobs = jobs
        self.counters = counters
        self.on_drop = on_drop

    def submit(self, event: FileEvent, scope: Scope) -> None:
        for rule, root in match(scope, event):
            self.counters.matched += 1
            if not self.jobs.put(Job(rule, root, event)):
                self.counters.dropped += 1
                self.on_drop()
