"""Batches: a batch rule's events collected for its window, then one job for all their paths.

A batch begins with its first event and is released ``window`` seconds later, or at once
when it holds ``max`` paths or as many bytes of paths as its actions' argv can carry beside
their other arguments and environment (the kernel refuses an exec whose arguments and
environment pass ``ARG_MAX``: the next paths begin a new batch).
A path comes once in a batch, with its last event. Each rule's root has a batch of its own
(``{root}`` is one value). At most ``limit`` paths are held at once; past that an event is
refused (and counted as dropped by the dispatcher), as the debouncer does.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace

from watchd.core.argmax import argument_size
from watchd.core.events import FileEvent
from watchd.core.job import Job
from watchd.core.rules import Root, Rule
from watchd.run.deadlines import Deadlines, Rebind

# What the numbers of a run (its job's id, try and count, in its variables and maybe its
# argv) may add to its exec once the batch is a job: they are not known while it collects.
RUN_NUMBERS = 256
BatchKey = tuple[str, bytes]  # a rule's name, and its root's path


class _Collecting:
    __slots__ = ("bytes", "due", "events", "room", "root", "rule")

    def __init__(self, rule: Rule, root: Root, due: float, room: float) -> None:
        self.rule = rule
        self.root = root
        self.events: dict[bytes, FileEvent] = {}
        self.bytes = 0  # what its paths cost an argv
        self.room = room
        self.due = due

    def job(self) -> Job:
        events = tuple(self.events.values())
        return Job(self.rule, self.root, events[-1], batch=events)


class Batcher(Deadlines[BatchKey]):
    def __init__(self, release: Callable[[Job], None], limit: int) -> None:
        super().__init__(release, "watchd-batch")
        self.limit = limit
        self._batches: dict[BatchKey, _Collecting] = {}
        self._held = 0  # paths in all batches
        # Each batch key's room (``_room``), computed once for each rule the key had (a
        # reload compiles new rules).
        self._rooms: dict[BatchKey, tuple[Rule, float]] = {}

    def __len__(self) -> int:
        return self._held

    def _held_by_rule(self) -> Counter[str]:
        held: Counter[str] = Counter()
        for (rule, _), collecting in self._batches.items():
            held[rule] += len(collecting.events)
        return held

    def holds(self, key: BatchKey, path: bytes) -> bool:
        """Whether the batch of a rule at a root (``key``) holds ``path``."""
        with self._changed:
            batch = self._batches.get(key)
            return batch is not None and path in batch.events

    def offer(self, job: Job) -> bool:
        """Add ``job``'s event to its rule's batch; False if too many paths are held."""
        assert job.rule.batch is not None
        key = (job.rule.name, job.root.path)
        path = job.event.path
        full: list[Job] = []
        with self._changed:
            batch = self._batches.get(key)
            if batch is not None and path in batch.events:
                batch.events[path] = job.event
                return True
            if self._held >= self.limit or self._stopped:
                return False
            cost = argument_size(path)
            if batch is not None and batch.bytes + cost > batch.room:
                full.append(self._take(key))
                batch = None
            if batch is None:
                batch = self._begin(key, job)
            batch.events[path] = job.event
            batch.bytes += cost
            self._held += 1
            if len(batch.events) >= job.rule.batch.max:
                full.append(self._take(key))
        for released in full:  # outside the lock: the queue's put never waits, but may log
            self.release(released)
        return True

    def _begin(self, key: BatchKey, job: Job) -> _Collecting:
        assert job.rule.batch is not None
        due = time.monotonic() + _window(job.rule)
        batch = self._batches[key] = _Collecting(job.rule, job.root, due,
                                                 self._room_of(key, job))
        self._schedule(due, key)
        return batch

    def _take(self, key: BatchKey) -> Job:
        batch = self._batches.pop(key)
        self._held -= len(batch.events)
        return batch.job()

    def _due(self, now: float) -> list[Job]:
        released = []
        while self._deadlines and self._deadlines[0][0] <= now:
            due, _, key = heapq.heappop(self._deadlines)
            batch = self._batches.get(key)
            # A batch released full leaves its deadline behind; a new one has its own.
            if batch is not None and batch.due == due:
                released.append(self._take(key))
        return released

    def _take_held(self) -> list[Job]:
        held = [batch.job() for batch in self._batches.values()]
        self._batches.clear()
        self._held = 0
        return held

    def _rebound(self, rebind: Rebind) -> tuple[list[tuple[Job, str]], list[Job]]:
        ended: list[tuple[Job, str]] = []
        singles: list[Job] = []
        for key, batch in list(self._batches.items()):
            current = rebind(batch.job())
            if isinstance(current, str):
                ended.append((self._take(key), current))
            elif current.rule.batch is None:  # a rule no longer batching: a run per path
                self._take(key)
                singles += (replace(current, event=event, batch=()) for event in current.batch)
            else:  # released the new rule's window after its first event
                batch.due += _window(current.rule) - _window(batch.rule)
                batch.rule, batch.root = current.rule, current.root
                batch.room = self._room_of(key, current)
        return ended, singles

    def _room_of(self, key: BatchKey, job: Job) -> float:
        """The room of a batch of ``job``'s rule at its root, worked out once for each rule
        the key has had (a reload compiles new rules)."""
        rule, room = self._rooms.get(key, (None, 0.0))
        if rule is not job.rule:
            room = _room(job)
            self._rooms[key] = (job.rule, room)
        return room

    def _dues(self) -> Iterable[tuple[float, BatchKey]]:
        return ((batch.due, key) for key, batch in self._batches.items())


def _window(rule: Rule) -> float:
    """A batch rule's window (a rule without ``batch`` holds nothing here)."""
    return rule.batch.window if rule.batch is not None else 0.0


def _room(job: Job) -> float:
    """Bytes of paths a batch of ``job``'s rule at its root may hold: what the tightest of
    its actions' argv can carry (infinite if none has them in its argv)."""
    rooms = [room for action in job.rule.actions
             if (room := action.room_for_paths(as_batch(job))) is not None]
    return min(rooms) - RUN_NUMBERS if rooms else float("inf")


def as_batch(job: Job) -> Job:
    """A batch rule's one event as a batch of one (a debounced event held at the stop)."""
    return job if job.batch or job.rule.batch is None else replace(job, batch=(job.event,))
