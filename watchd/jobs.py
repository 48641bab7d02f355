"""A job: one matched event for one rule, queued for a worker."""

from __future__ import annotations

import os
import threading
from collections import deque
from dataclasses import dataclass

from watchd.events import FileEvent
from watchd.rules import Root, Rule


@dataclass(frozen=True, slots=True)
class Job:
    rule: Rule
    root: Root
    event: FileEvent

    def values(self) -> dict[str, bytes]:
        """The placeholder values, as bytes: what ``{path}``, ``{name}`` … stand for."""
        path = self.event.path
        return {
            "path": path,
            "name": os.path.basename(path),
            "dir": os.path.dirname(path),
            "root": self.root.path,
            "event": self.event.event.encode(),
            "rule": self.rule.name.encode(),
            "src_path": self.event.src_path,
        }


class JobQueue:
    """A bounded FIFO of jobs between the notifier (which never waits) and the workers.

    ``put`` refuses rather than blocks when full. ``retire`` sends idle workers
    away (a smaller pool); ``close`` ends them all and returns the jobs not run.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[Job] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._retiring = 0
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, job: Job) -> bool:
        with self._ready:
            if self._closed or len(self._items) >= self.maxsize:
                return False
            self._items.append(job)
            self._ready.notify()
            return True

    def get(self) -> Job | None:
        """The next job, or None when the calling worker is to leave."""
        with self._ready:
            while not (self._items or self._retiring or self._closed):
                self._ready.wait()
            if self._closed:
                return None
            if self._retiring:
                self._retiring -= 1
                return None
            return self._items.popleft()

    def retire(self, workers: int) -> None:
        with self._ready:
            self._retiring += workers
            self._ready.notify(workers)

    def close(self) -> int:
        with self._ready:
            self._closed = True
            abandoned = len(self._items)
            self._items.clear()
            self._ready.notify_all()
            return abandoned
