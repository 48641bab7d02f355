"""Settle: act on a path only once its size and mtime have stayed the same for a while.

inotify says when a file was written, not when its writer is done: an upload that pauses
(a slow link, an SFTP client waiting on the network) looks finished between two writes. A
rule with ``settle`` holds each path's latest event and looks at the path with ``lstat``
when its time comes: if its size or mtime moved since the last look, it waits again; once
they have stayed the same for ``settle`` seconds, the job is released. A path that is gone
is released at once (there is nothing to wait for). At most ``limit`` paths settle at once;
past that an event is refused (and counted as dropped by the dispatcher). A path's newer
event takes the place of the one held: a job the ledger keeps (resumed at a start) lends it
its row, and of two it keeps, the one replaced ends (``ended``).
"""

from __future__ import annotations

import heapq
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace

from watchd.core.job import Job, JobKey
from watchd.core.rules import Rule
from watchd.run.deadlines import Deadlines, Rebind

Look = tuple[int, int, int] | None  # inode, size and mtime as lstat saw them; None: nothing
# Paths looked at per turn of the thread, with the lock held: the notifier, which offers
# events under that lock, waits for at most this many lstat calls.
LOOKS_PER_TURN = 256


class Settler(Deadlines[JobKey]):
    def __init__(self, release: Callable[[Job], None], limit: int,
                 ended: Callable[[Job], None]) -> None:
        super().__init__(release, "watchd-settle")
        self.limit = limit
        self.ended = ended  # a held job of the ledger that a newer one replaced: never run
        # (its latest job, what the last look saw, when to look again)
        self._pending: dict[JobKey, tuple[Job, Look, float]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def _held_by_rule(self) -> Counter[str]:
        return Counter(rule for rule, _ in self._pending)

    def holds(self, key: JobKey) -> bool:
        return key in self._pending

    def offer(self, job: Job) -> bool:
        """Hold ``job`` until its path has settled; False if too many paths are settling."""
        key = job.key
        looked = _look(job.event.path)  # before the lock: the thread's turns never wait on it
        with self._changed:
            held = self._pending.get(key)
            if held is not None:
                older = held[0]
                if older.id and not job.id:  # one the ledger holds: it ends when this runs
                    job = replace(job, id=older.id)
                elif older.id and older.id != job.id:  # two rows for one path: one run
                    self.ended(older)  # the ledger's end never waits: under the lock
                self._pending[key] = (job, held[1], held[2])  # the latest event, same look
                return True
            if len(self._pending) >= self.limit or self._stopped:
                return False
            if looked is not None:
                due = time.monotonic() + _settle(job.rule)
                self._pending[key] = (job, looked, due)
                self._schedule(due, key)
                return True
        self.release(job)  # nothing there: nothing to wait for
        return True

    def _due(self, now: float) -> list[Job]:
        released = []
        looks = 0
        while self._deadlines and self._deadlines[0][0] <= now and looks < LOOKS_PER_TURN:
            looks += 1
            _, _, key = heapq.heappop(self._deadlines)
            job, seen, _ = self._pending[key]
            looked = _look(job.event.path)
            if looked is not None and looked != seen:  # still being written: wait again
                due = now + _settle(job.rule)
                self._pending[key] = (job, looked, due)
                self._schedule(due, key)
            else:
                del self._pending[key]
                released.append(job)
        return released

    def _take_held(self) -> list[Job]:
        held = [job for job, _, _ in self._pending.values()]
        self._pending.clear()
        return held

    def _rebound(self, rebind: Rebind) -> tuple[list[tuple[Job, str]], list[Job]]:
        ended = []
        for key, (job, seen, due) in list(self._pending.items()):
            current = rebind(job)
            if isinstance(current, str):
                del self._pending[key]
                ended.append((job, current))
            else:  # looked at again the new rule's settle after the last look
                self._pending[key] = (current, seen,
                                      due - _settle(job.rule) + _settle(current.rule))
        return ended, []

    def _dues(self) -> Iterable[tuple[float, JobKey]]:
        return ((due, key) for key, (_, _, due) in self._pending.items())


def _settle(rule: Rule) -> float:
    return rule.settle or 0.0


def _look(path: bytes) -> Look:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)
