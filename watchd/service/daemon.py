"""The daemon: set everything up, then a main loop that owns all real work.

Signal handlers do nothing but make Python write the signal's number to a
self-pipe (``signal.set_wakeup_fd``); the main loop reads the pipe and reloads,
reports or stops. The notifier thread only reads and dispatches; workers only
run actions.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import select
import signal
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from watchd import __version__
from watchd.config.compile import read_rules, reresolve
from watchd.control.answers import answers, document
from watchd.control.protocol import ProtocolError
from watchd.control.protocol import socket_path as control_socket
from watchd.control.server import ControlServer
from watchd.core import logs
from watchd.core.job import Job
from watchd.core.journal import MessageId
from watchd.core.logs import escape, log
from watchd.core.problems import ConfigError
from watchd.core.rules import Root, RuleSet
from watchd.core.stats import DROP_REPORT_INTERVAL, Counters
from watchd.core.trace import tracing
from watchd.core.wakeup import Doorbell
from watchd.ledger import owner
from watchd.ledger.others import OthersWrites
from watchd.ledger.rows import job_of, row_of
from watchd.ledger.store import QUEUED, REQUESTED, RETRYING, JobRow, NewerLedger
from watchd.ledger.writer import Ledger
from watchd.outbox.outboxes import Deliveries
from watchd.run.catchup import CatchUp
from watchd.run.dispatch import Dispatcher
from watchd.run.ownwrites import OwnWrites
from watchd.run.queue import JobQueue
from watchd.run.workers import WorkerPool
from watchd.service.systemd import ServiceManager
from watchd.source.degraded import DegradedPoll
from watchd.source.mounts import MountTable, touches
from watchd.source.notifier import Notifier

if TYPE_CHECKING:
    from watchd.metrics.exposition import Metrics

EX_OK = 0
EX_FATAL = 3
EX_CONFIG = 78  # sysexits' EX_CONFIG: the unit's RestartPreventExitStatus
HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# What other threads ring the main loop's doorbell for, beside the signals: events were
# dropped; a symlink on a watched path may have changed; the status line has news.
_DROPS = 0
_LINKS = 0xFE
_STATUS = 0xFD
_ASKED = 0xFC  # the control socket asks what only the main loop may look at
# SIGUSR1's first figures, as 0.1 logged them; the counters follow, then the newer figures.
_REPORTED_FIRST = ("watches", "rules", "unwatched", "queued", "debouncing", "skipped", "running")
# On stop, how long a webhook attempt under way may finish; an unfinished one is sent again.
DELIVERY_STOP_WAIT = 2.0
# On stop, how long the ledger may take to write what it holds, and a catch-up to end its turn.
LEDGER_STOP_WAIT = 5.0
CATCH_UP_STOP_WAIT = 1.0
CONTROL_STOP_WAIT = 1.0
ASK_WAIT = 5.0  # how long the control socket waits for the main loop's answer (a turn: < 1 s)
T = TypeVar("T")


class Component(Protocol):
    """What the daemon asks of each part it runs, at every reload and every report."""

    def prepare(self, ruleset: RuleSet) -> Callable[[], None]:
        """Get ready for ``ruleset``: may fail (OSError), changes nothing the daemon runs on;
        returns the commit, which puts it in force and cannot fail."""
        ...

    def stats(self) -> dict[str, int]: ...


class Daemon:
    def __init__(self, config_path: Path, socket_path: str | None = None) -> None:
        self.config_path = config_path
        self.socket_path = control_socket(socket_path)
        self.started = time.time()
        self.loaded = self.started  # when the rules in force were read
        self.last_reload: dict[str, object] | None = None  # its time, ok, error
        self.reloads = {"ok": 0, "failed": 0}
        self._asked: queue.SimpleQueue[tuple[Callable[[], object], Future[object]]] = (
            queue.SimpleQueue())
        self.counters = Counters()
        self._doorbell = Doorbell()
        self._drops_reported = 0
        self._next_drop_report = 0.0
        self._stopping = False
        self._reload_failure = ""
        self.service = ServiceManager()
        self.control: ControlServer | None = None
        self.metrics: Metrics | None = None
        self._owns_state_dir: int | None = None  # the state directory's lock (ledger.owner)

    def run(self) -> int:
        try:
            ruleset = read_rules(self.config_path, for_daemon=True)
        except ConfigError as error:
            _log_problems("invalid configuration; not starting", error, MessageId.CONFIG_INVALID)
            return EX_CONFIG
        logs.set_level(ruleset.settings.log_level)
        _log_load_problems(ruleset)
        # Signals first: a stop asked for during a long first walk is not lost.
        previous = {signum: signal.signal(signum, _wake_only) for signum in HANDLED_SIGNALS}
        previous_wakeup = signal.set_wakeup_fd(self._doorbell.write_fd,
                                                warn_on_full_buffer=False)
        try:
            return self._serve(ruleset)
        finally:
            # Whoever called run() gets its process back as it was (a test, an embedding);
            # the handlers first, so that no signal finds a handler that writes nowhere.
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(previous_wakeup)
            if self._owns_state_dir is not None:
                os.close(self._owns_state_dir)  # last: the ledger is closed
                self._owns_state_dir = None

    def _serve(self, ruleset: RuleSet) -> int:
        try:
            self._start(ruleset)
        except (OSError, NewerLedger) as error:
            log(logging.CRITICAL, f"cannot start: {error}")
            return EX_FATAL
        self._start_metrics()
        self._open_control()
        log(logging.INFO, f"watchd {__version__} started", message_id=MessageId.STARTED,
            rules=len(ruleset.rules), watches=len(self.table), config=str(self.config_path))
        self.catch_up.begin()
        self.service.ready(self.status_line())
        try:
            status = self._loop()
        except Exception:
            log(logging.CRITICAL, "fatal error in the main loop", exc_info=True)
            status = EX_FATAL
        self._stop()
        return status

    def _start(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        state_dir = Path(ruleset.settings.state_dir)
        self._owns_state_dir = owner.claim(state_dir)  # before the ledger is read
        status_changed = functools.partial(self._wake, _STATUS)
        self.ledger = Ledger(state_dir, self.counters, status_changed)
        self.ledger.prepare(ruleset)()
        unfinished = self.ledger.open()
        self.others = OthersWrites(state_dir)
        self.deliveries = Deliveries(state_dir, self.counters, self.ledger)
        self.deliveries.prepare(ruleset)()
        self.ledger.on_asked = self.deliveries.take_asked
        own_writes = OwnWrites()
        self.jobs = JobQueue(ruleset.settings.queue_size,
                             on_restart=lambda key: self.workers.restart(key), ledger=self.ledger)
        self.dispatcher = Dispatcher(self.jobs, self.counters,
                                     functools.partial(self._wake, _DROPS), own_writes)
        # Before any event: what a stop or a crash left runs first, in its order.
        self._resume(unfinished)
        self.ledger.on_found = self._resume
        self.workers = WorkerPool(self.jobs, self.counters, self.deliveries.deliver, own_writes,
                                  status_changed, self.ledger)
        self.workers.resize(ruleset.settings.workers)
        self.deliveries.on_failure = self.workers.note_failure
        self.notifier = Notifier.watching(ruleset, self.dispatcher, self.counters,
                                          functools.partial(self._wake, _LINKS))
        self.table = self.notifier.table
        self.mounts = MountTable()
        self.catch_up = CatchUp(self.ledger, self.dispatcher, self.jobs, self.counters,
                                self.notifier)
        self.degraded = DegradedPoll(self.table, self.dispatcher, self.counters, status_changed)
        # In the order a reload commits them: the outboxes before the events that reach them;
        # the catch-up before the watches of new paths (it notes their events from then on,
        # and begins once they are watched).
        self.components: tuple[Component, ...] = (self.ledger, self.deliveries, self.catch_up,
                                                  self.notifier, self.degraded, self.dispatcher,
                                                  self.workers)
        self.catch_up.prepare(ruleset)()
        self.degraded.prepare(ruleset)()
        self.notifier.start()
        self.degraded.start()

    def _open_control(self) -> None:
        """The control socket; without it the daemon works all the same, and says so."""
        self.control = ControlServer(self.socket_path, answers(self), tracing)
        try:
            self.control.open()
        except OSError as error:
            log(logging.ERROR, f"no control socket (watchd status cannot reach this daemon): "
                f"{error}", path=self.socket_path)
            self.control = None
            return
        self.control.start()

    def _start_metrics(self) -> None:
        """Prometheus metrics, if asked for; without them the daemon works all the same."""
        settings = self.ruleset.settings.metrics
        if settings is None:
            return
        # Imported only here: the client library and its HTTP server are for daemons that
        # export (every start and every command line would load them otherwise).
        from watchd.metrics.exposition import Metrics

        self.metrics = Metrics(lambda: document(self))
        self.metrics.rules_loaded(self.ruleset)
        self.workers.on_ran = self.metrics.ran
        self.ledger.on_commit = self.metrics.committed
        try:
            self.metrics.start(settings)
        except OSError as error:
            host, port = settings.listen or ("", 0)
            log(logging.ERROR, f"no metrics served over HTTP: cannot listen on {host}:{port}: "
                f"{error.strerror or error}")

    def ask(self, question: Callable[[], T]) -> T:
        """From another thread: ``question`` answered on the main loop, within a turn of it."""
        if self._stopping:
            raise ProtocolError("the daemon is stopping")
        future: Future[object] = Future()
        self._asked.put((question, future))
        self._wake(_ASKED)
        try:
            return future.result(ASK_WAIT)  # type: ignore[return-value]
        except FutureTimeout:
            raise ProtocolError("the daemon's main loop did not answer in time") from None

    def _answer_questions(self) -> None:
        while True:
            try:
                question, future = self._asked.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(question())
            except Exception as error:  # told to the asker, whose handler logs it
                future.set_exception(error)

    def _resume(self, rows: list[JobRow]) -> None:
        """Queue the jobs the ledger holds unfinished (at start), or that ``watchd jobs retry``
        asked for; one whose rule can no longer run it becomes a dead letter, saying why.
        Called on the main thread at start, on the ledger's later."""
        now = time.time()
        for row in rows:
            job = job_of(row, self.ruleset)
            if isinstance(job, str):
                self.ledger.keep_not_run(row, job)
            elif row.state == RETRYING and row.next_at:
                self.jobs.later(job, max(0.0, row.next_at - now))
            elif row.state == REQUESTED:  # asked for by an admin: run now
                self.ledger.keep(row_of(job, QUEUED))
                self.jobs.put(job)
            else:
                self.dispatcher.resume(job)
        if rows:
            log(logging.INFO, f"{len(rows)} job(s) from the ledger queued", jobs=len(rows))

    def _loop(self) -> int:
        while not self._stopping:
            doorbell = self._doorbell.read_fd
            watched = [doorbell] if self.others.fd is None else [doorbell, self.others.fd]
            readable, _, mounts_changed = select.select(watched, [], [self.mounts.fd],
                                                        self._timeout(time.monotonic()))
            if mounts_changed:
                self._mounts_changed()
            if self.others.fd in readable:
                self.others.drain()
                self.ledger.look()
            signals, rung = self._doorbell.take()
            if _LINKS in rung:
                self._reresolve()
            if _ASKED in rung:
                self._answer_questions()
            # Each signal once per turn: SIGHUPs that came during a reload make one more.
            for signum in dict.fromkeys(signals):
                self._handle(signum)
            self._report_drops()
            if not self.notifier.is_alive():
                # Deaf is worse than down: exit, and let the service manager restart us.
                log(logging.CRITICAL, "the event reader thread has stopped; exiting")
                return EX_FATAL
            self.service.status(self.status_line())
            self.service.pet_watchdog(time.monotonic())
        return EX_OK

    def _mounts_changed(self) -> None:
        mounted, unmounted = self.mounts.changed()
        with self.table.lock:
            for root in self.ruleset.roots:
                if not any(touches(point, root.path) for point in mounted | unmounted):
                    continue
                self.table.rewatch(root, unmounted)
                log(logging.INFO, "a file system was mounted or unmounted at a watched path: "
                    "watching what is there now", path=root.path)

    def _reresolve(self) -> None:
        """A symlink on a watched path changed: resolve every root again, watch what moved."""
        with self.table.lock:
            current = self.ruleset
            ruleset = reresolve(current)
            if ruleset is not None:
                self.table.apply(ruleset, _followed_again(current, ruleset))
                self.ruleset = ruleset
        if ruleset is None:
            return
        before = {root.path: root for root in current.roots}
        for root in ruleset.roots:
            _log_resolved(before.get(root.path), root)

    def _timeout(self, now: float) -> float | None:
        """How long the loop may sleep: until a drop report or a watchdog ping is due."""
        due = [self.service.watchdog_timeout(now)]
        if self.counters.dropped > self._drops_reported:
            due.append(max(0.0, self._next_drop_report - now))
        return min((t for t in due if t is not None), default=None)

    def _handle(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            log(logging.INFO, f"stopping on {signal.Signals(signum).name}")
            self._stopping = True
        elif signum == signal.SIGHUP:
            self.reload()
        elif signum == signal.SIGUSR1:
            self.report()

    def reload(self) -> None:
        """Read the rules again and put them in force in two phases: every component
        prepares (any may fail, and then nothing has changed), then every one commits."""
        started = time.monotonic()
        self.service.reloading()
        try:
            ruleset = read_rules(self.config_path, for_daemon=True)
            self._warn_of_restart_settings(ruleset)
            commits = [component.prepare(ruleset) for component in self.components]
        except ConfigError as error:
            _log_problems("reload failed: the current rules stay in force", error,
                          MessageId.RELOAD_FAILED)
            self._reload_failed(f"{error.problems[0]}" + (
                f" (and {len(error.problems) - 1} more)" if len(error.problems) > 1 else ""))
            return
        except OSError as error:
            reason = f"cannot keep webhook deliveries: {error}"
            log(logging.ERROR, f"reload failed: the current rules stay in force: {reason}",
                message_id=MessageId.RELOAD_FAILED)
            self._reload_failed(reason)
            return
        _log_load_problems(ruleset)
        self.ruleset = ruleset
        for commit in commits:
            commit()
        self.catch_up.begin()
        self.counters.keep_rules({rule.name for rule in ruleset.rules})
        if self.metrics is not None:
            self.metrics.rules_loaded(ruleset)
        logs.set_level(ruleset.settings.log_level)
        self._reload_failure = ""
        self.loaded = time.time()
        self.last_reload = {"time": self.loaded, "ok": True, "error": None}
        self.reloads["ok"] += 1
        log(logging.INFO, "reloaded", message_id=MessageId.RELOADED, rules=len(ruleset.rules),
            watches=len(self.table), duration_ms=round((time.monotonic() - started) * 1000))
        self.service.ready(self.status_line())

    def _warn_of_restart_settings(self, ruleset: RuleSet) -> None:
        in_force = self.deliveries.state_dir
        if Path(ruleset.settings.state_dir) != in_force:
            log(logging.WARNING, "settings.state_dir takes effect at the next restart",
                state_dir=str(in_force))
        if ruleset.settings.metrics != self.ruleset.settings.metrics:
            log(logging.WARNING, "settings.metrics takes effect at the next restart")

    def _reload_failed(self, reason: str) -> None:
        self._reload_failure = reason
        self.last_reload = {"time": time.time(), "ok": False, "error": reason}
        self.reloads["failed"] += 1
        self.service.ready(self.status_line())

    def stats(self) -> dict[str, int]:
        """Every component's figures and the counters: what STATUS= and SIGUSR1 tell, the
        figures 0.1 told first in the order it told them."""
        figures = {"rules": len(self.ruleset.rules)}
        for component in self.components:
            figures.update(component.stats())
        first = {name: figures.pop(name) for name in _REPORTED_FIRST}
        return {**first, **self.counters.summary(), **figures}

    def status_line(self) -> str:
        """One line for STATUS=: what is watched, what happened, what is wrong."""
        stats = self.stats()
        parts = [f"{stats['rules']} rules", f"{stats['watches']} watches",
                 f"{stats['events']} events", f"{stats['actions_ok']} actions ok",
                 f"{stats['actions_failed']} failed"]
        ok, failed, waiting = (stats["webhooks_ok"], stats["webhooks_failed"],
                               stats["webhooks_waiting"])
        if ok or failed or waiting:
            parts.append(f"webhooks {ok} ok, {failed} failed, {waiting} waiting")
        if stats["dropped"] or stats["webhooks_dropped"]:
            parts.append(f"{stats['dropped'] + stats['webhooks_dropped']} dropped")
        if stats["overflows"]:
            parts.append(f"{stats['overflows']} overflows")
        parts.extend(self.degradations(stats))
        if self._reload_failure:
            parts.append(f"last reload FAILED, previous rules in force: {self._reload_failure}")
        return ", ".join(parts)

    def degradations(self, stats: dict[str, int]) -> list[str]:
        found = []
        untrusted = [root for root in self.ruleset.roots if root.untrusted]
        if untrusted:
            found.append("DEGRADED: not following " + "; ".join(
                f"{escape(root.path)} ({root.untrusted})" for root in untrusted))
        refused = self.workers.refused_programs()
        if refused:
            found.append("DEGRADED: programs refused at their last run: " + "; ".join(
                f"{escape(program)} ({reason})" for program, reason in refused))
        if self.ledger.problem:
            found.append(f"DEGRADED: {self.ledger.problem}")
        if stats["unwatched"]:
            found.append(f"DEGRADED: {stats['unwatched']} directories not watched "
                         "(inotify watch limit)")
        return found

    def report(self) -> None:
        log(logging.INFO, "counters", fields=self.stats())

    def _wake(self, reason: int) -> None:
        self._doorbell.ring(reason)  # on other threads: the notifier for each drop

    def _report_drops(self) -> None:
        dropped = self.counters.dropped
        now = time.monotonic()
        if dropped > self._drops_reported and now >= self._next_drop_report:
            log(logging.WARNING, "queue full: events dropped", message_id=MessageId.EVENTS_DROPPED,
                dropped=dropped - self._drops_reported, total=dropped, queue_size=self.jobs.maxsize)
            self._drops_reported = dropped
            self._next_drop_report = now + DROP_REPORT_INTERVAL

    def _stop(self) -> None:
        grace = self.ruleset.settings.stop_grace
        self.service.stopping(grace)
        if self.control is not None:
            self.control.stop(CONTROL_STOP_WAIT)
        if self.metrics is not None:
            self.metrics.stop()
        self.notifier.stop()
        self.degraded.stop(CATCH_UP_STOP_WAIT)
        self.catch_up.stop(CATCH_UP_STOP_WAIT)
        held = self.dispatcher.stop()
        for job in held:  # debounced, settling, batching: they wait in the ledger too
            if not job.id:  # one resumed at the start keeps its row
                self.ledger.add(job)
        waiting = len(held) + self.workers.stop(grace, self._asked_to_hurry) + self.workers.left
        self.deliveries.stop(DELIVERY_STOP_WAIT)
        # LEDGER_STOP_WAIT, tried again meanwhile: another process may let go of the ledger (a
        # backup, sqlite3). Not the whole grace too: a ledger on a full or read-only disk
        # would make every stop that long.
        unwritten = self.ledger.close(LEDGER_STOP_WAIT)
        self.others.close()
        self._report_drops()
        lost = len(unwritten.jobs)
        if lost:
            _log_lost(unwritten.jobs, self.ledger)
        waiting -= lost
        said = f"; {waiting} job(s) wait in the ledger for the next start" if waiting else ""
        if lost:
            said += f"; {lost} job(s) lost: the ledger could not be written"
        if unwritten.operations:
            said += f"; {unwritten.operations} change(s) to the ledger could not be written"
        log(logging.INFO, "stopped" + said, message_id=MessageId.STOPPED,
            fields={"waiting": waiting or None, "lost": lost or None,
                    "unwritten": unwritten.operations or None, **self.counters.summary()})

    def _asked_to_hurry(self, timeout: float) -> bool:
        """During the stop grace: whether a second SIGTERM or SIGINT came within ``timeout``."""
        if not select.select([self._doorbell.read_fd], [], [], timeout)[0]:
            return False
        signals, _ = self._doorbell.take()  # what else rang matters no more: it stops
        for signum in signals:
            if signum in (signal.SIGTERM, signal.SIGINT):
                log(logging.WARNING, f"{signal.Signals(signum).name} again: killing the "
                    "running actions now")
                return True
        return False


def _wake_only(signum: int, frame: object) -> None:
    """The C-level handler has already written ``signum`` to the wakeup pipe."""


def _log_lost(jobs: list[Job], ledger: Ledger) -> None:
    """Say which jobs a stop lost, by rule: the ledger could not be written before it ended.
    A rule with ``catch_up`` acts on what they changed at the next start (its records of
    their paths were not written either)."""
    by_rule = Counter(job.rule for job in jobs)
    named = "; ".join(
        f"{count} of rule {rule.name!r} (" + ("its catch-up acts on what they changed at the "
                                              "next start" if rule.catch_up else "not run") + ")"
        for rule, count in sorted(by_rule.items(), key=lambda item: item[0].name))
    log(logging.ERROR, f"{len(jobs)} job(s) lost at the stop, not kept: the ledger could not be "
        f"written ({ledger.problem or 'its last write did not end in time'}): {named}",
        message_id=MessageId.LEDGER_DEGRADED, path=str(ledger.file), lost=len(jobs),
        rule=",".join(sorted(rule.name for rule in by_rule)))


def _log_load_problems(ruleset: RuleSet) -> None:
    """What ``watchd check`` would say of rules the daemon runs all the same."""
    for problem in ruleset.warnings:
        log(logging.WARNING, f"rules: {problem}", message_id=MessageId.RULES_WARNING)
    for problem in ruleset.untrusted_paths:
        log(logging.ERROR, f"not watched: {problem}", message_id=MessageId.PATH_UNTRUSTED)


def _followed_again(old: RuleSet, new: RuleSet) -> frozenset[bytes]:
    """Roots behind an untrusted symlink before, followed now: a directory was made there
    while the daemon ran, and what is in it is new."""
    refused = {root.path for root in old.roots if root.untrusted}
    return frozenset(root.path for root in new.roots
                     if root.path in refused and root.untrusted is None)


def _log_resolved(old: Root | None, new: Root) -> None:
    """Say where a root leads now, if that changed (``old``: the root at that path before)."""
    rules = ",".join(rule.name for rule in new.rules)
    if old is not None and old.untrusted == new.untrusted:
        return
    if new.untrusted:
        log(logging.ERROR, "a watched path now leads through an untrusted symlink: not "
            f"followed; its directory stays watched: {new.untrusted}",
            message_id=MessageId.PATH_UNTRUSTED, path=new.path, rule=rules)
    elif old is not None:
        log(logging.WARNING, "a watched path no longer leads through an untrusted symlink: "
            "watching it as it is", path=new.path, rule=rules)
    else:
        log(logging.WARNING, "a symlink on a watched path changed: watching where it leads now",
            path=new.path, rule=rules)


def _log_problems(message: str, error: ConfigError, message_id: MessageId) -> None:
    for problem in error.problems:
        log(logging.ERROR, f"{message}: {problem}", message_id=message_id)
