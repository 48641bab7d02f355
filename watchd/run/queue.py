"""job → ledger → worker: the bounded queue of jobs, and which may run now.

Every job that enters the queue is kept in the ledger first (``ledger.add``: appended for
the writer thread, never waited on here); one replaced by a newer event ends there.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace

from watchd.core.job import Job, JobKey
from watchd.core.logs import LOGGER, log
from watchd.core.trace import QUEUED, SKIPPED, tracing
from watchd.ledger import store
from watchd.ledger.writer import Ledger


class _Waiting:
    """A queued job, with its place in arrival order; a run that follows a busy path may have
    its job replaced by a newer event's before it starts."""

    __slots__ = ("job", "order")

    def __init__(self, order: int, job: Job) -> None:
        self.order = order
        self.job = job


class JobQueue:
    """The bounded queue between the notifier (which never waits) and the workers.

    ``put`` refuses rather than blocks when full. ``get`` hands out the oldest job that may
    run now: its rule is under ``max_parallel`` and no action of its rule runs for its path.
    An event for a path whose action runs follows the rule's ``on_busy``: ``queue`` keeps one
    more run after it (later events replace that run's event), ``skip`` drops it, ``restart``
    keeps one more run and asks ``on_restart`` to stop the running one. A batch is never
    replaced: a rule's batches wait, each whole, for the one running. ``later`` holds a job
    to retry until its time. ``retire`` sends idle workers away; ``close`` ends them all and
    returns how many jobs were not run (they stay in the ledger, for the next start).
    """

    def __init__(self, maxsize: int,
                 on_restart: Callable[[JobKey], None] = lambda key: None,
                 ledger: Ledger | None = None) -> None:
        self.maxsize = maxsize
        self.on_restart = on_restart
        self.ledger = ledger
        self._retries: list[tuple[float, int, Job]] = []  # (when, order, job): a heap
        self.skipped = 0
        self._rules: dict[str, deque[_Waiting]] = {}  # only rules with jobs waiting
        self._count = 0
        self._order = itertools.count()
        self._running: dict[str, int] = {}
        self._busy: dict[JobKey, Job] = {}  # each path whose job a worker took: that job
        self._follow_ups: dict[JobKey, _Waiting] = {}
        self._ready = threading.Condition(threading.Lock())
        self._retiring = 0
        self._closed = False

    def __len__(self) -> int:
        return self._count

    def put(self, job: Job) -> bool:
        """Queue a new job (kept in the ledger), or one the ledger already holds (its id is
        set: found there at start, or asked for again)."""
        with self._ready:
            queued = self._put(job)
        if self.ledger is not None:
            self.ledger.write_added()  # after the worker it woke: see ``Ledger.write_added``
        return queued

    def _put(self, job: Job) -> bool:
        if self._closed:
            return False
        key = job.key
        if key in self._busy and not job.batch:
            return self._put_behind_busy(key, job)
        if self._count >= self.maxsize and not job.id:
            return False  # one the ledger holds was accepted once: it is never refused
        waiting = self._append(job)
        if tracing.on:
            tracing.emit(QUEUED, job.rule.name, job.event, f"{self._count} waiting")
        if LOGGER.isEnabledFor(logging.DEBUG):
            log(logging.DEBUG, "job queued", rule=job.rule.name, event=job.event.event,
                path=job.event.path, job=waiting.job.id or None,
                count=job.count if job.batch else None)
        return True

    def _put_behind_busy(self, key: JobKey, job: Job) -> bool:
        if job.rule.on_busy == "skip":
            self.skipped += 1
            if tracing.on:
                tracing.emit(SKIPPED, job.rule.name, job.event,
                             "its action runs for this path (on_busy: skip)")
            return True
        follow_up = self._follow_ups.get(key)
        if follow_up is not None:
            # Still one more run, with the newest event: the older one ends unrun.
            if self.ledger is not None:
                self.ledger.end(follow_up.job.id)
            follow_up.job = self._kept(job)
        elif self._count >= self.maxsize and not job.id:
            return False
        else:
            self._follow_ups[key] = self._append(job)
        if tracing.on:
            tracing.emit(QUEUED, job.rule.name, job.event, "to run once the running action "
                         f"ends (on_busy: {job.rule.on_busy}); an earlier event waiting is "
                         "replaced")
        if job.rule.on_busy == "restart":
            self.on_restart(key)
        return True

    def _kept(self, job: Job) -> Job:
        if job.id or self.ledger is None:
            return job
        return replace(job, id=self.ledger.add(job))

    def later(self, job: Job, delay: float) -> None:
        """Queue ``job`` again in ``delay`` seconds (a retry), whatever the queue holds."""
        with self._ready:
            if not self._closed:
                heapq.heappush(self._retries, (time.monotonic() + delay, next(self._order), job))
                self._ready.notify()

    def _append(self, job: Job) -> _Waiting:
        job = self._kept(job)
        waiting = _Waiting(next(self._order), job)
        queue = self._rules.get(job.rule.name)
        if queue is None:
            queue = self._rules[job.rule.name] = deque()
        queue.append(waiting)
        self._count += 1
        self._ready.notify()
        return waiting

    def get(self) -> Job | None:
        """The next job that may run, or None when the calling worker is to leave."""
        with self._ready:
            while True:
                if self._closed:
                    return None
                if self._retiring:
                    self._retiring -= 1
                    return None
                self._retries_due()
                waiting = self._next()
                if waiting is not None:
                    return self._take(waiting)
                self._ready.wait(self._retries[0][0] - time.monotonic() if self._retries
                                 else None)

    def _retries_due(self) -> None:
        now = time.monotonic()
        while self._retries and self._retries[0][0] <= now:
            self._append(heapq.heappop(self._retries)[2])

    def _next(self) -> _Waiting | None:
        """The oldest job that may run now, over every rule with jobs waiting."""
        best = None
        for name, queue in self._rules.items():
            limit = queue[0].job.rule.max_parallel
            if limit is not None and self._running.get(name, 0) >= limit:
                continue
            for waiting in queue:
                if waiting.job.key not in self._busy:
                    if best is None or waiting.order < best.order:
                        best = waiting
                    break
        return best

    def _take(self, waiting: _Waiting) -> Job:
        job = waiting.job
        name, key = job.rule.name, job.key
        queue = self._rules[name]
        queue.remove(waiting)
        if not queue:
            del self._rules[name]
        self._count -= 1
        if self._follow_ups.get(key) is waiting:
            del self._follow_ups[key]
        self._running[name] = self._running.get(name, 0) + 1
        self._busy[key] = job
        return job

    def done(self, job: Job) -> None:
        """A worker finished ``job``: its rule and its path may run again."""
        with self._ready:
            name = job.rule.name
            self._running[name] -= 1
            if not self._running[name]:
                del self._running[name]
            self._busy.pop(job.key, None)
            # What it frees (a place of its rule, its path) lets one more job run at the most:
            # one worker is woken for it, not all of them to find nothing and wait again.
            if self._next() is not None:
                self._ready.notify()

    def retire(self, workers: int) -> None:
        with self._ready:
            self._retiring += workers
            self._ready.notify(workers)

    def stats(self) -> dict[str, int]:
        return {"queued": self._count, "skipped": self.skipped, "retrying": len(self._retries)}

    def by_rule(self) -> dict[str, dict[str, int]]:
        """Each rule's jobs queued, running and waiting to be retried: for ``watchd status``."""
        with self._ready:
            figures: dict[str, dict[str, int]] = {}
            for name, queue in self._rules.items():
                figures.setdefault(name, {})["queued"] = len(queue)
            for name, running in self._running.items():
                figures.setdefault(name, {})["running"] = running
            for _, _, job in self._retries:
                rule = figures.setdefault(job.rule.name, {})
                rule["retrying"] = rule.get("retrying", 0) + 1
            return figures

    def held(self) -> list[tuple[str, Job, float | None]]:
        """Each job the queue holds now, in the ledger's state for it: queued, running (a
        worker took it), retrying (with when, in seconds since the epoch). For ``watchd jobs
        list``: the ledger writes a first action's run only if it fails, and late while it
        cannot be written."""
        with self._ready:
            since = time.time() - time.monotonic()
            held: list[tuple[str, Job, float | None]] = [
                (store.QUEUED, waiting.job, None)
                for queue in self._rules.values() for waiting in queue]
            held.extend((store.RUNNING, job, None) for job in self._busy.values())
            held.extend((store.RETRYING, job, since + when) for when, _, job in self._retries)
        return held

    def close(self) -> int:
        with self._ready:
            self._closed = True
            abandoned = self._count + len(self._retries)
            self._retries.clear()
            self._rules.clear()
            self._follow_ups.clear()
            self._count = 0
            self._ready.notify_all()
            return abandoned
