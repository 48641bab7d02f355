"""job → worker → action: threads that take jobs and perform their rule's actions in order.

The pool is what each action performs itself with (``ActionContext``): it runs a process where
a stop or a restart can reach it, and hands deliveries to the outboxes.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import assert_never

from watchd.core.actions import Outcome, Process, ProcessResult, retry_delay
from watchd.core.job import Job, JobKey
from watchd.core.journal import MessageId
from watchd.core.logs import log
from watchd.core.rules import Rule, RuleSet
from watchd.core.stats import Count, Counters
from watchd.core.trace import DEAD_LETTER, RAN, REFUSED, RETRIED, tracing
from watchd.ledger.rows import Failure, job_of, row_of
from watchd.ledger.store import DEAD, RETRYING, RUNNING
from watchd.ledger.writer import Ledger
from watchd.run.guard import Refused, WrongKind, recheck, recheck_batch
from watchd.run.lstats import Lstats
from watchd.run.ownwrites import OwnWrites
from watchd.run.queue import JobQueue
from watchd.security.trust import ProgramTrust, Untrusted

# How long a command stopped for a newer event (on_busy: restart) gets between TERM and KILL.
RESTART_GRACE = 2.0
# How long the stop waits at a time for a second SIGTERM, between looks at the workers.
HURRY_TURN = 0.2
# Paths whose refusal for their kind has been logged (each once); the oldest are forgotten.
KIND_REFUSALS_REMEMBERED = 10_000
STDERR_KEPT = 2048  # bytes of a failed run's stderr a dead letter keeps


@dataclass(frozen=True, slots=True)
class LastFailure:
    """A rule's last failed run, for ``watchd status``."""

    time: float
    path: bytes
    failure: Failure


class _Left:
    """A job the stop left before its end: it stays in the ledger, for the next start."""


LEFT = _Left()


@dataclass(frozen=True, slots=True)
class _Failed:
    """The job at the action that failed (its step and try), and how it failed: what is
    retried, or kept as a dead letter, is that action."""

    job: Job
    failure: Failure


End = Job | _Failed | _Left | None


class WorkerPool:
    def __init__(self, jobs: JobQueue, counters: Counters, deliver: Callable[[Job, int], bool],
                 own_writes: OwnWrites, on_status_change: Callable[[], None] = lambda: None,
                 ledger: Ledger | None = None) -> None:
        self.jobs = jobs
        self.ledger = ledger
        self._last_result = threading.local()  # each worker's last process run: for a failure
        self.left = 0  # jobs the stop cut short: they wait in the ledger, for the next start
        self.counters = counters
        self.deliver = deliver
        self.own_writes = own_writes
        self.stopping = threading.Event()
        self._killed = False  # the stop has killed what ran past its grace
        self._threads: list[threading.Thread] = []
        self._running: dict[threading.Thread, tuple[Job, Process]] = {}  # each worker's process
        self._restarted: set[threading.Thread] = set()
        self._kind_refused: dict[JobKey, None] = {}
        self._programs = ProgramTrust()
        self.lstats = Lstats()  # a batch's re-check
        # Programs that failed their trust check at their last run, and why: for STATUS=.
        self._untrusted_programs: dict[str, str] = {}
        self.on_status_change = on_status_change
        # Told of each action run: its rule, and how long it took (the metrics' histogram).
        self.on_ran: Callable[[str, float], None] = lambda rule, seconds: None
        # Each rule's last failed run: for ``watchd status``.
        self.last_failures: dict[str, LastFailure] = {}
        self._lock = threading.Lock()
        # The rules of the last reload (None: those of the start, every job's).
        self._ruleset: RuleSet | None = None
        self._rules: dict[str, Rule] = {}

    def prepare(self, ruleset: RuleSet) -> Callable[[], None]:
        def commit() -> None:
            self._ruleset = ruleset
            self._rules = {rule.name: rule for rule in ruleset.rules}
            self.resize(ruleset.settings.workers)
        return commit

    def _under_current_rules(self, job: Job) -> Job | str:
        """A job tried already (a retry) under rules a reload has replaced since, under the
        rules in force now: "fix the rule and reload" reaches its next try. Why not, if it
        cannot be (its rule, root or action is gone, or its rule's actions were added or
        removed: a step is a place). Others run as they were matched."""
        if not job.tries or self._ruleset is None or self._rules.get(job.rule.name) is job.rule:
            return job
        current = job_of(row_of(job, RETRYING), self._ruleset)
        if isinstance(current, Job) and len(current.rule.actions) != len(job.rule.actions):
            # Actions added or removed: the one at the job's step may be another one now.
            return (f"rule {job.rule.name!r} has {len(current.rule.actions)} action(s) now, "
                    f"not {len(job.rule.actions)}: action {job.step} may be another one")
        return current

    def _not_run(self, job: Job, why: str) -> None:
        if self.ledger is not None and job.id:
            self.ledger.keep_not_run(row_of(job, DEAD), why)
        else:  # nowhere to keep it (no ledger)
            log(logging.WARNING, f"job not run: {why}", rule=job.rule.name, path=job.event.path)

    def refused_programs(self) -> list[tuple[str, str]]:
        """Programs that failed their trust check at their last run, and why."""
        with self._lock:
            return list(self._untrusted_programs.items())

    def stats(self) -> dict[str, int]:
        return {"running": len(self._running),
                "workers": sum(thread.is_alive() for thread in self._threads)}

    def resize(self, count: int) -> None:
        """Have ``count`` workers: start more, or send the extra ones away once idle."""
        self._threads = [thread for thread in self._threads if thread.is_alive()]
        surplus = len(self._threads) - count
        if surplus > 0:
            self.jobs.retire(surplus)
        for _ in range(-surplus):
            thread = threading.Thread(target=self._work, name="watchd-worker", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, grace: float, hurry: Callable[[float], bool] = lambda wait: False) -> int:
        """Run nothing new; wait up to ``grace`` for running actions, then kill them.

        ``hurry(seconds)`` waits up to that long for a reason to kill them at once (a second
        SIGTERM); it is asked in short turns. Returns how many queued jobs were not run.
        """
        self.stopping.set()
        abandoned = self.jobs.close()
        deadline = time.monotonic() + grace
        while not self._join(0):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or hurry(min(remaining, HURRY_TURN)):
                with self._lock:
                    self._killed = True
                    for _, command in self._running.values():
                        command.kill()
                self._join(grace)
                break
        self.lstats.close()
        return abandoned

    def restart(self, key: JobKey) -> None:
        """Stop the command running for ``key`` (a newer event came; on_busy: restart)."""
        with self._lock:
            for thread, (job, command) in self._running.items():
                if job.key == key and thread not in self._restarted:
                    self._restarted.add(thread)
                    command.kill(signal.SIGTERM)
                    threading.Timer(RESTART_GRACE, command.kill).start()

    def _join(self, timeout: float) -> bool:
        """Wait for every worker, ``timeout`` seconds in all; True if all have ended."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def _work(self) -> None:
        while (taken := self.jobs.get()) is not None:
            current = self._under_current_rules(taken)
            if isinstance(current, str):
                self.jobs.done(taken)
                self._not_run(taken, current)
                continue
            job = self._started(current)
            guarded = job.rule.ignore_own_writes
            if guarded:
                self.own_writes.started(job)
            try:
                end = self._run_actions(job)
            except Exception:
                # A bug here must cost one job, not a worker: the pool would shrink unseen.
                self.counters.add(Count.ACTIONS_FAILED, job.rule.name)
                log(logging.ERROR, "action failed: internal error", exc_info=True,
                    rule=job.rule.name, path=job.event.path, job=job.id or None)
                end = _Failed(job, Failure(job.rule.actions[job.step - 1].kind,
                                           "internal error"))
            finally:
                if guarded:
                    self.own_writes.finished(job)
                self.jobs.done(taken)
            self._ended(job, end)

    @staticmethod
    def _started(job: Job) -> Job:
        """The job as it runs now, its try counted. The try is kept in the ledger only if it
        fails: a job cut short by a crash is run again as it was queued (at least once)."""
        return replace(job, tries=job.tries + 1)

    def _run_actions(self, job: Job) -> End:
        """Perform the job's actions from its step on. None: it ended (ok, skipped, refused,
        restarted); ``_Failed``: an action failed (the job at its step); the job at its next
        step: it was stopped between two actions (``LEFT`` before the first)."""
        # Once, before the first action: later ones may move the file on purpose.
        checked = self._rechecked(job)
        if checked is None:
            return None
        job, info = checked
        for step in range(job.step, len(job.rule.actions) + 1):
            if self.stopping.is_set():
                return LEFT if step == job.step else job
            if step != job.step:
                job = replace(job, step=step, tries=1)
                if self.ledger is not None and job.id:
                    self.ledger.keep(row_of(job, RUNNING))
            self._last_result.result = None  # a failure is told by its own action's run
            started = time.monotonic()
            outcome = job.rule.actions[step - 1].perform(self, job, step, info)
            took = time.monotonic() - started
            self.on_ran(job.rule.name, took)
            if tracing.on:
                self._trace_ran(job, step, outcome, took)
            if outcome is Outcome.OK:
                self.counters.add(Count.ACTIONS_OK, job.rule.name)
            elif outcome is Outcome.HANDED_ON:
                pass  # counted ok or failed at its end
            elif outcome is Outcome.FAILED:
                self.counters.add(Count.ACTIONS_FAILED, job.rule.name)
                return _Failed(job, self._failure(job))
            elif outcome is Outcome.RESTARTED or outcome is Outcome.SKIPPED:
                return None  # said why; a restarted run is followed by another
            elif outcome is Outcome.STOPPED:
                return LEFT  # at this step, in the ledger: run again at the next start
            else:
                assert_never(outcome)
        return None

    def _rechecked(self, job: Job) -> tuple[Job, os.stat_result | None] | None:
        """The job with what the re-check lets through, and its path's lstat (a batch's paths
        are each looked at, those refused leave it, and it has no one lstat); None if
        nothing is left to act on."""
        if not job.batch:
            try:
                return job, recheck(job)
            except Refused as refusal:
                self._refused(job, refusal)
                return None
        kept = []
        for event, refused in recheck_batch(job, self.lstats):
            if refused is None:
                kept.append(event)
            else:
                self._refused(replace(job, event=event, batch=()), refused)
        if not kept:
            return None
        return replace(job, event=kept[-1], batch=tuple(kept)), None

    def _trace_ran(self, job: Job, step: int, outcome: Outcome, took: float) -> None:
        result: ProcessResult | None = getattr(self._last_result, "result", None)
        detail = f"action {step} ({job.rule.actions[step - 1].kind}): {outcome.name.lower()}"
        if result is not None and not result.ok:
            detail += f": {result.describe()}"
        tracing.emit(RAN, job.rule.name, job.event, detail, duration_ms=round(took * 1000),
                     exit_status=result.status if result else None, job=job.id or None,
                     count=job.count if job.batch else None, **{"try": job.tries})

    def _refused(self, job: Job, refusal: Refused) -> None:
        if tracing.on:
            tracing.emit(REFUSED, job.rule.name, job.event, f"by the re-check: {refusal}")
        if isinstance(refusal, WrongKind):
            self._refused_kind(job, refusal)
        else:
            self.skip(job, job.step, str(refusal))

    def _failure(self, job: Job) -> Failure:
        action = job.rule.actions[job.step - 1]
        result: ProcessResult | None = getattr(self._last_result, "result", None)
        self._last_result.result = None
        described = action.describe(job.values())
        if result is None:
            failure = Failure(described, f"the {action.kind} action failed (see the log)")
        else:
            failure = Failure(described, result.describe(), result.status,
                              result.stderr[-STDERR_KEPT:] or None)
        self.note_failure(job.rule.name, job.event.path, failure)
        return failure

    def note_failure(self, rule: str, path: bytes, failure: Failure) -> None:
        """The rule's last failure, for ``watchd status`` (from any thread)."""
        self.last_failures[rule] = LastFailure(time.time(), path, failure)

    def _ended(self, job: Job, end: End) -> None:
        """Keep in the ledger what became of the job: ended, retried later, a dead letter, or
        left for the next start (stopped)."""
        if isinstance(end, _Failed):
            self._failed(end.job, end.failure)
        elif end is LEFT:
            self._left()
        elif isinstance(end, Job):
            self._left()
            if self.ledger is not None and end.id:
                self.ledger.keep(row_of(replace(end, tries=0), RUNNING))
        elif end is None and self.ledger is not None and job.id:
            self.ledger.end(job.id)

    def _left(self) -> None:
        with self._lock:
            self.left += 1

    def _failed(self, job: Job, failure: Failure) -> None:
        if self.stopping.is_set():
            self._left()  # perhaps killed by the stop itself: it stays queued
            return
        action = job.rule.actions[job.step - 1]
        fields = {"rule": job.rule.name, "event": job.event.event, "path": job.event.path,
                  "step": job.step, "job": job.id or None, "try": job.tries}
        if job.tries <= action.retries:
            delay = retry_delay(action.backoff, job.tries)
            self.counters.add(Count.RETRIED, job.rule.name)
            log(logging.WARNING, f"job retried: try {job.tries + 1} of {action.retries + 1} in "
                f"{delay:.1f}s", fields=fields)
            if tracing.on:
                tracing.emit(RETRIED, job.rule.name, job.event, f"try {job.tries + 1} of "
                             f"{action.retries + 1} in {delay:.1f}s", job=job.id or None)
            if self.ledger is not None and job.id:
                self.ledger.keep(row_of(job, RETRYING, failure, time.time() + delay))
            self.jobs.later(job, delay)
            return
        self.counters.add(Count.DEAD_LETTERS, job.rule.name)
        if tracing.on:
            tracing.emit(DEAD_LETTER, job.rule.name, job.event, f"after {job.tries} tries: "
                         f"{failure.error}", job=job.id or None)
        if self.ledger is None or not job.id:
            return
        self.ledger.keep_dead(row_of(job, DEAD, failure))
        log(logging.ERROR, f"job kept as a dead letter after {job.tries} tries: "
            f"{failure.error}; run it again with: watchd jobs retry {job.id}",
            message_id=MessageId.JOB_DEAD, fields=fields)

    def _refused_kind(self, job: Job, refusal: WrongKind) -> None:
        """Counted every time, logged once per rule and path: a user could make many."""
        self.counters.add(Count.REFUSED_BY_KIND, job.rule.name)
        with self._lock:
            if job.key in self._kind_refused:
                return
            self._kind_refused[job.key] = None
            if len(self._kind_refused) > KIND_REFUSALS_REMEMBERED:
                del self._kind_refused[next(iter(self._kind_refused))]
        log(logging.WARNING, f"not acted on: {refusal}", rule=job.rule.name,
            event=job.event.event, path=job.event.path)

    def skip(self, job: Job, step: int, reason: str) -> Outcome:
        self.counters.add(Count.ACTIONS_SKIPPED, job.rule.name)
        log(logging.WARNING, f"action skipped: {reason}", rule=job.rule.name,
            event=job.event.event, path=job.event.path, step=step)
        return Outcome.SKIPPED

    def _program_trusted(self, job: Job, step: int, program: str) -> bool:
        """Whether the program may still run: a user may have been given it since the load."""
        try:
            self._programs.check(program)
        except Untrusted as untrusted:
            with self._lock:
                news = self._untrusted_programs.get(program) != str(untrusted)
                self._untrusted_programs[program] = str(untrusted)
            if news:
                self.on_status_change()
            self.counters.add(Count.PROGRAMS_UNTRUSTED, job.rule.name)
            log(logging.ERROR, f"action failed: not run: {untrusted}",
                message_id=MessageId.PROGRAM_UNTRUSTED, rule=job.rule.name, event=job.event.event,
                path=job.event.path, action=job.rule.actions[step - 1].kind, step=step,
                program=program)
            return False
        if program in self._untrusted_programs:
            with self._lock:
                self._untrusted_programs.pop(program, None)
            self.on_status_change()
        return True

    def run_process(self, job: Job, step: int, program: str,
                    process: Process) -> ProcessResult | Outcome:
        """Run one process where stop and restart reach it; how it ended, or FAILED if its
        program is not trusted now, RESTARTED if a newer event stopped it."""
        if not self._program_trusted(job, step, program):
            return Outcome.FAILED
        if self.ledger is not None and job.id:
            # A process is never started for a job a crash could forget. (A delivery needs no
            # wait: it is kept after its job, in the same order, so never without it.)
            self.ledger.wait_durable(job.id)
        me = threading.current_thread()
        with self._lock:
            self._running[me] = (job, process)
        try:
            result = process.run()
            self._last_result.result = result
        finally:
            with self._lock:
                del self._running[me]
                restarted = me in self._restarted
                self._restarted.discard(me)
        if restarted:
            log(logging.INFO, "action restarted: a newer event came for its path",
                rule=job.rule.name, event=job.event.event, path=job.event.path, step=step)
            return Outcome.RESTARTED
        if self._killed and not result.ok:
            return replace(result, stopped=True)
        return result
