"""Queue → worker → action → log: threads that take jobs and run their rule's actions in order."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

from watchd.actions.command import CommandResult, RunningCommand
from watchd.counters import Counters
from watchd.deliveries import Deliveries
from watchd.guard import Refused, WrongKind, owner, recheck
from watchd.jobs import Job, JobKey, JobQueue
from watchd.journal import MessageId
from watchd.logs import log
from watchd.ownwrites import OwnWrites
from watchd.rules import Command, RunAs
from watchd.trust import ProgramTrust, Untrusted

# How long a command stopped for a newer event (on_busy: restart) gets between TERM and KILL.
RESTART_GRACE = 2.0
# How long the stop waits at a time for a second SIGTERM, between looks at the workers.
HURRY_TURN = 0.2
# Paths whose refusal for their kind has been logged (each once); the oldest are forgotten.
KIND_REFUSALS_REMEMBERED = 10_000


class WorkerPool:
    def __init__(self, jobs: JobQueue, counters: Counters, deliveries: Deliveries,
                 own_writes: OwnWrites, on_status_change: Callable[[], None] = lambda: None,
                 ) -> None:
        self.jobs = jobs
        self.counters = counters
        self.deliveries = deliveries
        self.own_writes = own_writes
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[threading.Thread, tuple[JobKey, RunningCommand]] = {}
        self._restarted: set[threading.Thread] = set()
        self._kind_refused: dict[JobKey, None] = {}
        self._programs = ProgramTrust()
        # Programs that failed their trust check at their last run, and why: for STATUS=.
        self.untrusted_programs: dict[str, str] = {}
        self.on_status_change = on_status_change
        self._lock = threading.Lock()
        jobs.on_restart = self.restart

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
                    for _, command in self._running.values():
                        command.kill()
                self._join(grace)
                break
        return abandoned

    def restart(self, key: JobKey) -> None:
        """Stop the command running for ``key`` (a newer event came; on_busy: restart)."""
        with self._lock:
            for thread, (running_key, command) in self._running.items():
                if running_key == key and thread not in self._restarted:
                    self._restarted.add(thread)
                    command.kill(signal.SIGTERM)
                    threading.Timer(RESTART_GRACE, command.kill).start()

    def busy(self) -> int:
        return len(self._running)

    def _join(self, timeout: float) -> bool:
        """Wait for every worker, ``timeout`` seconds in all; True if all have ended."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            guarded = job.rule.ignore_own_writes
            if guarded:
                self.own_writes.started(job.key)
            try:
                self._run_actions(job)
            except Exception:
                # A bug here must cost one job, not a worker: the pool would shrink unseen.
                self.counters.add("actions_failed")
                log(logging.ERROR, "action failed: internal error", exc_info=True,
                    rule=job.rule.name, path=job.event.path)
            finally:
                if guarded:
                    self.own_writes.finished(job.key)
                self.jobs.done(job)

    def _run_actions(self, job: Job) -> None:
        try:
            # Once, before the first action: later ones may move the file on purpose.
            info = recheck(job)
        except WrongKind as refusal:
            self._refused_kind(job, refusal)
            return
        except Refused as refusal:
            self._skipped(job, 0, refusal)
            return
        for index, action in enumerate(job.rule.actions):
            if self.stopping.is_set():
                return
            if isinstance(action, Command):
                try:
                    user = owner(job, action, info) if action.as_owner else action.user
                except Refused as refusal:
                    self._skipped(job, index, refusal)
                    return
                ok = self._run_command(job, index, action, user)
            else:
                # Accepted for delivery (on disk, queued) is success here; the outbox logs the rest.
                ok = self.deliveries.submit(job, index + 1) is not None
            if ok is None:
                return  # restarted: the run that follows does the rest
            self.counters.add("actions_ok" if ok else "actions_failed")
            if not ok:
                return

    def _refused_kind(self, job: Job, refusal: WrongKind) -> None:
        """Counted every time, logged once per rule and path: a user could make many."""
        self.counters.add("refused_by_kind")
        with self._lock:
            if job.key in self._kind_refused:
                return
            self._kind_refused[job.key] = None
            if len(self._kind_refused) > KIND_REFUSALS_REMEMBERED:
                del self._kind_refused[next(iter(self._kind_refused))]
        log(logging.WARNING, f"not acted on: {refusal}", rule=job.rule.name,
            event=job.event.event, path=job.event.path)

    def _skipped(self, job: Job, index: int, refusal: Refused) -> None:
        self.counters.add("actions_skipped")
        log(logging.WARNING, f"action skipped: {refusal}", rule=job.rule.name,
            event=job.event.event, path=job.event.path, step=index + 1)

    def _program_trusted(self, job: Job, index: int, command: Command) -> bool:
        """Whether the program may still run: a user may have been given it since the load."""
        try:
            self._programs.check(command.program)
        except Untrusted as untrusted:
            with self._lock:
                news = self.untrusted_programs.get(command.program) != str(untrusted)
                self.untrusted_programs[command.program] = str(untrusted)
            if news:
                self.on_status_change()
            self.counters.add("programs_untrusted")
            log(logging.ERROR, f"action failed: not run: {untrusted}",
                message_id=MessageId.PROGRAM_UNTRUSTED, rule=job.rule.name, event=job.event.event,
                path=job.event.path, action="command", step=index + 1, program=command.program)
            return False
        if command.program in self.untrusted_programs:
            with self._lock:
                self.untrusted_programs.pop(command.program, None)
            self.on_status_change()
        return True

    def _run_command(self, job: Job, index: int, command: Command,
                     user: RunAs | None) -> bool | None:
        """Run one command: True if it succeeded, False if it failed, None if restarted."""
        if not self._program_trusted(job, index, command):
            return False
        me = threading.current_thread()
        running = RunningCommand(job, command, user)
        with self._lock:
            self._running[me] = (job.key, running)
        try:
            result = running.run()
        finally:
            with self._lock:
                del self._running[me]
                restarted = me in self._restarted
                self._restarted.discard(me)
        if restarted:
            log(logging.INFO, "action restarted: a newer event came for its path",
                rule=job.rule.name, event=job.event.event, path=job.event.path, step=index + 1)
            return None
        _log_result(job, index, result)
        return result.ok


def _log_result(job: Job, index: int, result: CommandResult) -> None:
    fields: dict[str, object] = {
        "rule": job.rule.name,
        "event": job.event.event,
        "path": job.event.path,
        "action": "command",
        "step": index + 1,
        "exit_status": result.status,
        "duration_ms": round(result.duration * 1000),
        "found_by_scan": True if job.event.synthetic else None,
    }
    if result.ok:
        log(logging.INFO, "action ok", **fields)
        return
    reason = _failure(result, job, index)
    remaining = len(job.rule.actions) - index - 1
    if remaining:
        reason += f"; {remaining} later action(s) skipped"
    log(
        logging.ERROR,
        f"action failed: {reason}",
        message_id=MessageId.ACTION_FAILED,
        **fields,
        stderr=result.stderr.strip()[-512:] or None,
    )


def _failure(result: CommandResult, job: Job, index: int) -> str:
    """How a command failed, in words: the number is in a field too, the signal named."""
    if result.timed_out:
        timeout = job.rule.actions[index].timeout
        return f"timed out after {timeout:g}s; process group killed"
    if result.error:
        return result.error
    status = result.status or 0
    if status > 0:
        return f"exited with status {status}"
    try:
        return f"killed by signal {signal.Signals(-status).name}"
    except ValueError:
        return f"killed by signal {-status}"
