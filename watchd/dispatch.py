"""Rule match → queue: each event is matched in its directory's scope, each match queued as a job.

This runs on the notifier thread, so it never blocks: a full queue drops the
job, counts it, and asks the main loop to say so. A rule with ``debounce`` goes
through the debouncer first; one with ``ignore_own_writes`` skips events on a
path its own action is running for (see ``watchd.ownwrites``).
"""

from __future__ import annotations

from collections.abc import Callable

from watchd.counters import Counters
from watchd.debounce import Debouncer
from watchd.events import FileEvent
from watchd.jobs import Job, JobQueue
from watchd.ownwrites import OwnWrites
from watchd.rules import Scope, match


class Dispatcher:
    def __init__(self, jobs: JobQueue, counters: Counters, on_drop: Callable[[], None],
                 own_writes: OwnWrites | None = None) -> None:
        self.jobs = jobs
        self.counters = counters
        self.on_drop = on_drop
        self.own_writes = own_writes or OwnWrites()
        self.debouncer = Debouncer(self.queue, jobs.maxsize)

    def submit(self, event: FileEvent, scope: Scope) -> None:
        for rule, root in match(scope, event):
            self.counters.matched += 1
            job = Job(rule, root, event)
            if rule.ignore_own_writes and self.own_writes.ignoring(job.key):
                self.counters.add("own_writes_ignored")
            elif rule.debounce:
                if not self.debouncer.offer(job):
                    self._dropped()
            else:
                self.queue(job)

    def queue(self, job: Job) -> None:
        if not self.jobs.put(job):
            self._dropped()

    def _dropped(self) -> None:
        self.counters.add("dropped")
        self.on_drop()
