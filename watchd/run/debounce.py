"""Debounce: hold each (rule, path)'s latest event until the path has been quiet long enough.

An editor's save storm or a large copy then fires one action, with the last event. One
thread keeps a heap with one deadline per pending path (pushed back, not duplicated, as
events keep coming), so a path written without pause holds one entry, not one per write.
At most ``limit`` paths are pending at once; past that an event is refused (and counted
as dropped by the dispatcher).
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Callable, Iterable

from watchd.core.job import Job, JobKey
from watchd.core.rules import Rule
from watchd.run.deadlines import Deadlines, Rebind


class Debouncer(Deadlines[JobKey]):
    def __init__(self, release: Callable[[Job], None], limit: int) -> None:
        super().__init__(release, "watchd-debounce")
        self.limit = limit
        self._pending: dict[JobKey, tuple[Job, float]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def _held_by_rule(self) -> Counter[str]:
        return Counter(rule for rule, _ in self._pending)

    def holds(self, key: JobKey) -> bool:
        return key in self._pending

    def offer(self, job: Job) -> bool:
        """Hold ``job`` until its path is quiet; False if too many paths are pending."""
        due = time.monotonic() + _quiet(job.rule)
        key = job.key
        with self._changed:
            if key in self._pending:
                self._pending[key] = (job, due)  # its heap entry is moved on when it comes up
                return True
            if len(self._pending) >= self.limit or self._stopped:
                return False
            self._pending[key] = (job, due)
            self._schedule(due, key)
        return True

    def _due(self, now: float) -> list[Job]:
        released = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, key = heapq.heappop(self._deadlines)
            job, due = self._pending[key]
            if due > now:  # events came since: wait for the quiet again
                self._schedule(due, key)
            else:
                del self._pending[key]
                released.append(job)
        return released

    def _take_held(self) -> list[Job]:
        held = [job for job, _ in self._pending.values()]
        self._pending.clear()
        return held

    def _rebound(self, rebind: Rebind) -> tuple[list[tuple[Job, str]], list[Job]]:
        ended = []
        for key, (job, due) in list(self._pending.items()):
            current = rebind(job)
            if isinstance(current, str):
                del self._pending[key]
                ended.append((job, current))
            else:  # quiet since its last event for the new rule's debounce
                self._pending[key] = (current, due - _quiet(job.rule) + _quiet(current.rule))
        return ended, []

    def _dues(self) -> Iterable[tuple[float, JobKey]]:
        return ((due, key) for key, (_, due) in self._pending.items())


def _quiet(rule: Rule) -> float:
    return rule.debounce or 0.0
