"""match → job → queue: each event is matched in its directory's scope, each match queued as a job.

This runs on the notifier thread, so it never blocks: a full queue drops the
job, counts it, and asks the main loop to say so. A job goes through the stages its
rule asks for, in this order: ``debounce`` (the path is quiet), ``settle`` (its size and
mtime stay the same), ``batch`` (collected with others), then the queue. A rule with
``ignore_own_writes`` skips events on a path its own action is running for (see
``watchd.run.ownwrites``). A reload's commit puts the jobs the stages hold under its rules;
one whose rule it removed or disabled ends there, not run.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from watchd.core.events import FileEvent
from watchd.core.job import Job
from watchd.core.logs import escape, log
from watchd.core.rules import Rule, RuleSet, Scope
from watchd.core.stats import Count, Counters
from watchd.core.trace import (
    BATCHED,
    DEBOUNCED,
    DROPPED,
    EVENT,
    IGNORED,
    MATCHED,
    NOT_MATCHED,
    SETTLING,
    tracing,
)
from watchd.ledger.rows import under
from watchd.match.matcher import match
from watchd.match.reasons import decisions
from watchd.run.batches import Batcher, as_batch
from watchd.run.deadlines import Deadlines
from watchd.run.debounce import Debouncer
from watchd.run.overlap import Overlap
from watchd.run.ownwrites import OwnWrites
from watchd.run.queue import JobQueue
from watchd.run.settle import Settler


class Dispatcher:
    def __init__(self, jobs: JobQueue, counters: Counters, on_drop: Callable[[], None],
                 own_writes: OwnWrites | None = None) -> None:
        self.jobs = jobs
        self.counters = counters
        self.on_drop = on_drop
        self.own_writes = own_writes or OwnWrites()
        self.batcher = Batcher(self.queue, jobs.maxsize)
        self.settler = Settler(self.collect, jobs.maxsize, self._end)
        self.debouncer = Debouncer(self.settle, jobs.maxsize)
        # While a catch-up runs: what it and the live events told (watchd.run.overlap).
        self.overlap: Overlap | None = None

    def submit(self, event: FileEvent, scope: Scope) -> bool:
        """Offer ``event`` to the rules of ``scope``; whether one matched it."""
        if tracing.on:
            _trace_match(event, scope)
        matched = False
        for rule, root in match(scope, event):
            matched = True
            self.counters.matched_by(rule.name)
            job = Job(rule, root, event)
            overlap = self.overlap
            if overlap is not None and not event.caught_up and overlap.told_already(job):
                if tracing.on:
                    tracing.emit(IGNORED, rule.name, event, "the catch-up acted on this change")
                continue
            if rule.ignore_own_writes and self.own_writes.ignoring(job.key):
                self.counters.add(Count.OWN_WRITES_IGNORED, rule.name)
                if tracing.on:
                    tracing.emit(IGNORED, rule.name, event, "its own action is writing it "
                                 "(ignore_own_writes)")
            elif rule.debounce:
                self._offered(job, self.debouncer.offer(job), DEBOUNCED)
            else:
                self.settle(job)
        return matched

    def settle(self, job: Job) -> None:
        """Hold the job until its path has settled, if its rule asks; then collect it."""
        if job.rule.settle is None:
            self.collect(job)
        else:
            self._offered(job, self.settler.offer(job), SETTLING)

    def resume(self, job: Job) -> None:
        """Queue a job the ledger held at start. One of a rule with ``settle`` waits for its
        path to settle again: it may have been settling at the stop, and its writer may have
        gone on while the daemon was down. So does a batch of one (a batch rule's path held
        at the stop is one); a larger batch, settled already, is queued whole."""
        if (job.rule.settle is None or len(job.batch) > 1
                or not self.settler.offer(replace(job, batch=()))):
            self.queue(job)

    def collect(self, job: Job) -> None:
        """Queue the job, or add it to its rule's batch; one the ledger holds (resumed, and
        settled again) is a batch of its own, whose end ends its row."""
        if job.rule.batch is None:
            self.queue(job)
        elif job.id:
            self.queue(as_batch(job))
        else:
            self._offered(job, self.batcher.offer(job), BATCHED)

    def queue(self, job: Job) -> None:
        """Queue the job (the queue traces what it did with it), or drop it."""
        if not self.jobs.put(job):
            self._offered(job, False, DROPPED)

    def _offered(self, job: Job, taken: bool, decision: str) -> None:
        """A stage took the job, or it is dropped (that stage is full)."""
        if not taken:
            self._dropped(job)
        if tracing.on:
            tracing.emit(decision if taken else DROPPED, job.rule.name, job.event,
                         _held_for(decision, job.rule) if taken else
                         "the queue is full (settings.queue_size)")

    def prepare(self, ruleset: RuleSet) -> Callable[[], None]:
        def commit() -> None:
            size = ruleset.settings.queue_size
            self.jobs.maxsize = self.debouncer.limit = self.batcher.limit = size
            self.settler.limit = size
            rebind = functools.partial(under, ruleset)
            for state, stage in self._stages():
                for job, why in stage.rebind(rebind):
                    log(logging.WARNING, f"not run: {why} (it was {state} at the reload)",
                        rule=job.rule.name, path=job.event.path, job=job.id or None,
                        count=job.count if job.batch else None)
                    self._end(job)
        return commit

    def _end(self, job: Job) -> None:
        """End a job held that will not run: its row, if the ledger keeps it (resumed)."""
        if job.id and self.jobs.ledger is not None:
            self.jobs.ledger.end(job.id)

    def _stages(self) -> tuple[tuple[str, Deadlines[Any]], ...]:
        """Each stage that holds jobs, with the state of what it holds, in the jobs' order."""
        return (("debouncing", self.debouncer), ("settling", self.settler),
                ("batching", self.batcher))

    def stop(self) -> list[Job]:
        """Release nothing more; the jobs of the events the stages still held (a batch rule's
        event held before its batch is a batch of one). Each stage stops in the jobs' order,
        once the one before has handed on what it was releasing."""
        held = self.debouncer.stop() + self.settler.stop()
        return [as_batch(job) for job in held] + self.batcher.stop()

    def holding(self, rule: str, root: bytes, path: bytes) -> bool:
        """Whether a stage holds an event of ``rule`` for ``path``: one the ledger has no
        record of yet (a job's is written when it is queued)."""
        key = (rule, path)
        return (self.debouncer.holds(key) or self.settler.holds(key)
                or self.batcher.holds((rule, root), path))

    def stats(self) -> dict[str, int]:
        return {**self.jobs.stats(), "debouncing": len(self.debouncer),
                "settling": len(self.settler), "batching": len(self.batcher)}

    def by_rule(self) -> dict[str, dict[str, int]]:
        """Each rule's jobs in the queue and paths held by each stage, by state."""
        figures = self.jobs.by_rule()
        for state, stage in self._stages():
            for rule, held in stage.by_rule().items():
                figures.setdefault(rule, {})[state] = held
        return figures

    def _dropped(self, job: Job) -> None:
        self.counters.add(Count.DROPPED, job.rule.name)
        self.on_drop()


def _held_for(decision: str, rule: Rule) -> str:
    """How long a stage holds a rule's paths, in words (for a trace line)."""
    if decision == DEBOUNCED:
        return f"until quiet for {rule.debounce:g}s"
    if decision == SETTLING:
        return f"until its size and mtime stay the same for {rule.settle:g}s"
    if decision == BATCHED and rule.batch is not None:
        return f"window {rule.batch.window:g}s, at most {rule.batch.max}"
    return ""


def _trace_match(event: FileEvent, scope: Scope) -> None:
    detail = "found by a rescan" if event.synthetic else ""
    if event.caught_up:
        detail = "found by a catch-up or a poll"
    tracing.emit(EVENT, None, event, detail,
                 src_path=escape(event.src_path) if event.src_path else None)
    for rule, refused in decisions(scope, event):
        tracing.emit(NOT_MATCHED if refused else MATCHED, rule.name, event, refused or "")
