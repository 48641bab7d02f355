"""What holds jobs until a time: the thread that releases them when it comes.

The debouncer, the settler and the batcher each keep a heap of ``(due, order, key)`` and say
what is due; this keeps the thread, started at the first deadline, that waits for the next one
and hands what is due to ``release`` outside the lock (the next stage's ``offer``, or the
queue's ``put``: neither waits). A stop waits for what that thread is handing on, so that the
next stage, stopped after this one, holds it; a job offered while the stop runs is held, not
refused. A reload's commit puts the jobs held under the new rules (``rebind``).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from watchd.core.job import Job

Key = TypeVar("Key", bound=Hashable)
# The longest a deadline's thread waits before it looks again: a wait past what a lock can
# take (``threading.TIMEOUT_MAX``) raises, and would end the thread, whatever its deadline.
LONGEST_WAIT = 3600.0


def wait_until(changed: threading.Condition, due: float | None) -> None:
    """Wait on ``changed`` for a notify or ``due`` (a ``time.monotonic()``; None: no
    deadline), at most ``LONGEST_WAIT``: the caller looks again when this returns."""
    wait = LONGEST_WAIT if due is None else min(due - time.monotonic(), LONGEST_WAIT)
    changed.wait(wait)


# A job under the rules of a reload: the same job under the rule of its name, or why it
# cannot be (``watchd.ledger.rows.under``).
Rebind = Callable[[Job], Job | str]


class Deadlines(ABC, Generic[Key]):
    def __init__(self, release: Callable[[Job], None], name: str) -> None:
        self.release = release
        self._name = name
        self._deadlines: list[tuple[float, int, Key]] = []
        self._order = itertools.count()
        self._changed = threading.Condition(threading.Lock())
        self._stopping = False
        self._stopped = False  # what is held was taken: an offer now is refused
        self._thread: threading.Thread | None = None

    @abstractmethod
    def _due(self, now: float) -> list[Job]:
        """Pop what is due by ``now`` (called with the lock held)."""

    @abstractmethod
    def _take_held(self) -> list[Job]:
        """Take every job held (called with the lock held, at the stop)."""

    @abstractmethod
    def _rebound(self, rebind: Rebind) -> tuple[list[tuple[Job, str]], list[Job]]:
        """Put each job held under ``rebind``'s rules, its due time worked out again from its
        rule's new delay; take those that cannot be, with why, and those to release now
        (called with the lock held)."""

    @abstractmethod
    def _dues(self) -> Iterable[tuple[float, Key]]:
        """When each key held is due (called with the lock held)."""

    @abstractmethod
    def _held_by_rule(self) -> Counter[str]:
        """How many paths each rule has held here (called with the lock held)."""

    def by_rule(self) -> Counter[str]:
        """How many paths each rule has held here now: for ``watchd status``."""
        with self._changed:
            return self._held_by_rule()

    def rebind(self, rebind: Rebind) -> list[tuple[Job, str]]:
        """A reload's commit: the jobs held put under its rules, due again by their rule's
        delay; those whose rule cannot hold them now, taken with why (never released)."""
        with self._changed:
            ended, released = self._rebound(rebind)
            self._deadlines = [(due, next(self._order), key) for due, key in self._dues()]
            heapq.heapify(self._deadlines)
            self._changed.notify()
        for job in released:
            self.release(job)
        return ended

    def stop(self) -> list[Job]:
        """Release nothing more; the jobs held and not released (for the ledger), taken once
        the thread has handed on what it was releasing (to a stage not stopped yet)."""
        with self._changed:
            self._stopping = True
            self._deadlines.clear()
            self._changed.notify()
        if self._thread is not None:
            self._thread.join()
        with self._changed:
            self._stopped = True
            return self._take_held()

    def _schedule(self, due: float, key: Key) -> None:
        """Add a deadline (called with the lock held); none once the stop began: the job is
        held for it."""
        if self._stopping:
            return
        heapq.heappush(self._deadlines, (due, next(self._order), key))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                released = self._due(time.monotonic())
                while not released and not self._stopping:
                    wait_until(self._changed, self._deadlines[0][0] if self._deadlines else None)
                    released = self._due(time.monotonic())
                if self._stopping:
                    return
            for job in released:
                self.release(job)
