"""The ledger's one writer: a thread that commits what the daemon hands it, many at a time.

Whoever changes a job (the notifier queueing it, a worker starting or ending it) only appends
an operation to a list and wakes this thread (for jobs queued, the queue wakes it once it has
woken their worker: ``write_added``): nobody waits on the disk. The thread takes the
whole list, applies it in one transaction and commits (one fsync for a burst: group commit).
A job's id is its place in that order, so "committed up to id N" tells a worker whether the
job it took is on disk yet; it waits for that (rarely: the writer is usually ahead) so that
an action never runs for a job a crash could forget.

When a commit fails (a full disk, a read-only or locked database) the operations stay in
memory, in order, and are tried again every ``RETRY_INTERVAL``: the daemon runs on, degraded
and saying so, and loses nothing it can hold. Past ``MAX_PENDING`` held operations the
records of what rules saw go first (a later catch-up may then act once more), then nothing:
jobs themselves are also in the queue, which is bounded. A close goes on trying until its
timeout; what it could not write it says (``Unwritten``): the jobs among it are lost.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, cast

from watchd.core.job import Job
from watchd.core.journal import MessageId
from watchd.core.logs import log
from watchd.core.rules import RuleSet
from watchd.core.stats import Count, Counters
from watchd.ledger import store
from watchd.ledger.batch import Batch, Operation
from watchd.ledger.chunks import Chunks, Delta
from watchd.ledger.store import JobRow
from watchd.source.snapshot import FileState

RETRY_INTERVAL = 5.0  # seconds between attempts to write while the ledger cannot be written
DURABLE_WAIT = 5.0  # the longest a worker waits for its job to be on disk before it runs anyway
MAX_PENDING = 1_000_000  # operations held in memory while the ledger cannot be written
# The most operations one commit takes: a burst's first jobs are on disk (and may run) soon,
# rather than after the whole burst has been written.
BATCH_LIMIT = 2000
# How long what nobody waits for (a job's end, a delivery acknowledged) may wait to be written
# with what comes after it: a job queued is written at once, and takes these with it.
LAZY_WINDOW = 0.05
# While closing, how soon a write that failed is tried again (each try may also wait for
# another process's lock: store.BUSY_TIMEOUT_MS).
CLOSE_RETRY_INTERVAL = 0.2


class Unwritten(NamedTuple):
    """What a close could not write: how many operations, and the jobs among them kept new
    and neither ended nor dead letters (they were to wait in the ledger, and are lost)."""

    operations: int
    jobs: list[Job]



class Ledger:
    def __init__(self, state_dir: Path, counters: Counters,
                 on_status_change: Callable[[], None] = lambda: None) -> None:
        self.file = store.path_in(state_dir)
        self.counters = counters
        self.on_status_change = on_status_change
        # Dead letters asked for again, or jobs found once the database could be opened late.
        self.on_found: Callable[[list[JobRow]], None] = lambda rows: None
        # Dead webhook deliveries asked for again (``store.take_asked_deliveries``), later than
        # the start: theirs to send anew.
        self.on_asked: Callable[[list[tuple[object, ...]]], None] = lambda rows: None
        self.on_commit: Callable[[float], None] = lambda seconds: None  # each commit's time
        self.dead_letters = 10_000  # kept at most, of jobs and of deliveries each
        self._connection: sqlite3.Connection | None = None
        self._pending: list[Operation] = []
        lock = threading.Lock()
        self._changed = threading.Condition(lock)  # for the writer: operations to write
        self._written = threading.Condition(lock)  # for who waits on it: a commit, or not
        self._last_id = 0
        self._committed = 0
        self._closing = False
        self._close_by = 0.0  # while closing: when the writer gives up (monotonic)
        self._writing: list[Operation] = []  # the batch the writer took, until written or held
        self._problem = ""  # why the ledger cannot be written now; "" when it can
        self._closed = threading.Event()  # wakes the writer from a wait between retries
        self._urgent = False  # a job waits to be on disk: commit now
        self._added = False  # jobs were added since the last ``write_added``
        self._taken = 0  # batches taken by the writer
        self._flushing = 0  # batches up to this one are taken at once: a flush waits for them
        self._written_batches = 0  # the number of the last batch taken that is on disk
        self._data_version: int | None = None
        self._look = False  # another process changed the ledger: look for what it asked
        self._dir_ids: dict[tuple[str, bytes], int] = {}
        # The jobs of a ledger read while it could not be written, run from memory then: not
        # again once it can be opened, when their ends are written.
        self._run_from_memory: set[int] = set()
        # Each directory's records' version: the number of the commit that last changed them
        # (a directory not changed since the database was opened: that of the opening).
        self._commits = 0
        self._opened_at = 0
        self._versions: dict[int, int] = {}
        self._chunks = Chunks()
        self._instance = f"{secrets.randbits(48):012x}"  # the database's, once it is open
        self._thread = threading.Thread(target=self._run, name="watchd-ledger", daemon=True)

    # -- for the daemon ------------------------------------------------------------------------

    def open(self) -> list[JobRow]:
        """Open (or make) the database; the jobs a stop or a crash left unfinished. A file
        SQLite cannot read is put aside and a new ledger begun; one that cannot be opened
        (read-only, full, locked) leaves the ledger degraded, tried again in the background.
        Raises ``store.NewerLedger``: a downgraded watchd does not start on a newer ledger."""
        # The deliveries asked for are waiting ones, at a start.
        rows, _ = self._try_open(at_start=True)
        if self._connection is None:
            # Ids given before the ledger can be read must not be those of the jobs in it:
            # these start past any it can hold (microseconds since the epoch).
            self._last_id = self._committed = time.time_ns() // 1000
            rows = self._read_unfinished()
            self._run_from_memory = {row.id for row in rows}
        self._thread.start()
        return rows

    def prepare(self, ruleset: RuleSet) -> Callable[[], None]:
        """The commit sets how many dead letters are kept (the ledger itself is the one in the
        state directory of the start)."""
        def commit() -> None:
            self.dead_letters = ruleset.settings.dead_letters
        return commit

    @property
    def problem(self) -> str:
        """Why the ledger cannot be written now (for STATUS=), or ""."""
        return self._problem

    def stats(self) -> dict[str, int]:
        return {"ledger_pending": len(self._pending)}

    def with_pending(self, rows: list[JobRow]) -> list[JobRow]:
        """Rows read from the disk as the writer will leave them: what it holds and has not
        written yet (a moment's worth, or all since the ledger could not be written) applied:
        jobs ended gone, jobs changed as they are now (a dead letter kept, a retry)."""
        by_id = {row.id: row for row in rows}
        with self._changed:
            pending = list(self._pending)  # copied, not read, under the lock: add never waits
        for operation in pending:
            if operation[0] == "end":
                by_id.pop(cast(int, operation[1]), None)
            elif operation[0] == "job":
                row = cast(JobRow, operation[1])
                by_id[row.id] = row
        return sorted(by_id.values())

    def add(self, job: Job) -> int:
        """Keep a new job, queued; its id. Called from any thread; never waits on the disk.
        For a rule with ``catch_up``, its record of the path is written with it (in the same
        commit: a job on disk is never without it, or a crash could make a catch-up act on it
        again). It is written once ``write_added`` (or ``close``) is called."""
        with self._changed:
            self._last_id += 1
            job_id = self._last_id
            # The job itself, not its row: the queue holds it anyway, and the row is made by
            # the writer (a burst's pending operations cost a few words each).
            self._pending.append(("add", job_id, job))
            self._added = True
        return job_id

    def write_added(self) -> None:
        """Wake the writer for the jobs added, to write them now. The queue calls it after it
        has woken the worker that takes the job: the worker, woken first, gets the interpreter
        lock first, and does what comes before the command while SQLite commits without it.
        (Woken first, the writer kept the lock for most of its commit, and the worker only
        began once it was over: docs/performance.md.)"""
        with self._changed:
            if self._added and not self._urgent:  # else the writer was woken for one already
                self._urgent = True
                self._changed.notify()
            self._added = False

    def keep(self, row: JobRow) -> None:
        """Keep a job's row as it is now (retrying, dead, queued again)."""
        self._append(("job", row), urgent=row.state == store.DEAD)

    def keep_not_run(self, row: JobRow, why: str) -> None:
        """A job the rules in force cannot run (its rule, root or action gone), kept as a dead
        letter that says why."""
        self.keep(row._replace(state=store.DEAD, error=why))
        log(logging.WARNING, f"job not run: {why}; kept as a dead letter", rule=row.rule,
            path=row.path, job=row.id)

    def keep_dead(self, row: JobRow) -> None:
        """Keep a dead letter, and return once it is on disk (as ``flush``): the log line
        that follows tells an admin to look for it with ``watchd jobs list``, which reads
        only what is. For a worker: the main loop and the writer itself may not wait."""
        self.keep(row)
        self.flush()

    def end(self, job_id: int) -> None:
        self._append(("end", job_id))

    def record_dir(self, rule: str, directory: bytes, found: list[tuple[bytes, FileState]],
                   gone: list[bytes]) -> None:
        self._append(("dir", rule, directory, found, gone))

    def forget_dir(self, rule: str, directory: bytes) -> None:
        self._append(("forget", rule, directory))

    def caught_up(self, rule: str, root: bytes) -> None:
        """The rule's first walk of the tree at ``root`` is recorded."""
        self._append(("caught_up", rule, root))

    def put_delivery(self, values: tuple[object, ...]) -> None:
        """A webhook delivery, as ``store.DELIVERY_COLUMNS``: new, or as it is now."""
        self._append(("delivery", values), urgent=bool(values[-1]))

    def end_delivery(self, delivery_id: str) -> None:
        self._append(("delivered", delivery_id))

    def records_version(self, dir_id: int) -> int:
        """A number that changes after each commit that changes the records of directory
        ``dir_id``: records read from the disk while it is the same are still those there.
        Read it before the records; any thread."""
        return self._versions.get(dir_id, self._opened_at)

    @property
    def instance(self) -> str:
        return self._instance

    def wait_durable(self, job_id: int) -> None:
        """Return once job ``job_id`` is on disk, or at once while the ledger cannot be
        written (the job runs from memory), or after ``DURABLE_WAIT`` at the most."""
        deadline = time.monotonic() + DURABLE_WAIT
        with self._changed:
            while (self._committed < job_id and not self._problem and not self._closing
                   and (remaining := deadline - time.monotonic()) > 0):
                self._written.wait(remaining)

    def look(self) -> None:
        """Another process closed the ledger after writing it (``watchd jobs retry``, or only
        ``list``): look for dead letters it asked to run again."""
        with self._changed:
            self._look = True
            self._changed.notify()

    def flush(self) -> None:
        """Return once what was handed to the writer before is on disk (for a reader of the
        ledger, such as the catch-up: it sees only what is), or at once while it cannot be
        written, or after ``DURABLE_WAIT`` at the most."""
        deadline = time.monotonic() + DURABLE_WAIT
        with self._changed:
            # What is pending now is taken in this many batches, the first even if it is none.
            wanted = self._taken + max(1, -(-len(self._pending) // BATCH_LIMIT))
            self._flushing = max(self._flushing, wanted)
            self._urgent = True
            self._changed.notify()
            while (self._written_batches < wanted and not self._problem and not self._closing
                   and (remaining := deadline - time.monotonic()) > 0):
                self._written.wait(remaining)

    def backlog(self, limit: int) -> None:
        """Wait while more than ``limit`` operations are held (a catch-up's bulk), unless the
        ledger cannot be written (they are held in memory then, and must not grow)."""
        with self._changed:
            while len(self._pending) > limit and not self._problem and not self._closing:
                self._written.wait(0.5)

    def close(self, timeout: float) -> Unwritten:
        """Write what is held, trying for up to ``timeout`` (the ledger may be let go of by
        another process meanwhile), stop; what could not be written."""
        with self._changed:
            self._close_by = time.monotonic() + timeout
            self._closing = True
            self._changed.notify_all()
            self._written.notify_all()
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._changed:
            left = self._writing + self._pending  # a write still under way may not end
        if self._connection is not None and not self._thread.is_alive():
            self._connection.close()
        return Unwritten(len(left), _jobs_lost(left))

    # -- the writer thread ---------------------------------------------------------------------

    def _append(self, operation: Operation, urgent: bool = False) -> None:
        """Hand an operation to the writer; ``urgent``: write it now, with what waits (what
        the log tells an admin to look at: a dead letter), else within ``LAZY_WINDOW``."""
        with self._changed:
            self._pending.append(operation)
            if urgent and not self._urgent:
                self._urgent = True
                self._changed.notify()
            elif len(self._pending) == 1:  # else the writer was woken already
                self._changed.notify()

    def _try_open(self, at_start: bool = False) -> tuple[list[JobRow], list[tuple[object, ...]]]:
        """The jobs left unfinished, and the dead deliveries asked for again (made waiting).
        A newer ledger refuses the start (``at_start``), else leaves the ledger degraded."""
        try:
            connection = self._connect()
            rows = self._unfinished(connection)
            self._chunks.load(connection)
            first = store.next_id(connection)
            self._instance = store.instance(connection)
            asked = store.take_asked_deliveries(connection)  # last: nothing fails after it
        except (OSError, sqlite3.Error) as error:
            if at_start and isinstance(error, store.NewerLedger):
                raise
            self._failed(f"cannot open {self.file}: {_reason(error)}")
            return [], []
        with self._changed:
            self._connection = connection
            # Ids go on from the highest ever given, and past those given while degraded.
            self._last_id = max(self._last_id, first - 1)
            self._committed = first - 1
            self._data_version = None
            self._commits += 1  # a database begun again reuses the directories' ids
            self._opened_at, self._versions = self._commits, {}
        return rows, asked

    def _read_unfinished(self) -> list[JobRow]:
        """The jobs left unfinished, read from a ledger that cannot be written: they run from
        memory, as the jobs queued while it cannot be, rather than wait for it."""
        try:
            with contextlib.closing(store.read_only(self.file)) as connection:
                return self._unfinished(connection)
        except store.NewerLedger:
            raise  # read only at the start, which it refuses
        except (OSError, sqlite3.Error):
            return []  # found once the ledger can be opened

    def _unfinished(self, connection: sqlite3.Connection) -> list[JobRow]:
        """The jobs left unfinished. Those of a row that cannot be read are lost, and said
        to be: the rest of the ledger (the other jobs, the dead letters, what the rules saw)
        is read, rather than put aside with them."""
        damaged: list[store.DamagedRow] = []
        rows = store.jobs(connection, store.UNFINISHED, damaged=damaged)
        for problem in damaged:
            log(logging.CRITICAL, f"the ledger is damaged: {problem}. Those jobs are not run; "
                "the row is left in the ledger (table queued) to look at with sqlite3",
                message_id=MessageId.LEDGER_CORRUPT, path=str(self.file))
        return rows

    def _connect(self) -> sqlite3.Connection:
        try:
            return store.connect(self.file, create=True)
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as error:
            aside = store.put_aside(self.file)
            self.counters.add(Count.LEDGER_CORRUPT)
            log(logging.CRITICAL, f"the ledger is corrupt ({error}): kept aside as {aside}; a new "
                "ledger is begun. Jobs that were waiting in it are not run: look at the kept "
                "file with sqlite3", message_id=MessageId.LEDGER_CORRUPT, path=str(aside))
            return store.connect(self.file, create=True)

    def _run(self) -> None:
        while True:
            with self._changed:
                # A flush asked while the writer was busy, with nothing left to write, was not
                # heard: it is answered with an empty batch, not slept through.
                if not self._pending and not self._closing and not self._look and not self._urgent:
                    self._changed.wait(RETRY_INTERVAL if self._problem else None)
                if (self._pending and not self._urgent and not self._closing
                        and self._taken >= self._flushing):
                    # Nobody waits for these (ends, retries, deliveries): many to a commit.
                    self._changed.wait(LAZY_WINDOW)
                batch = self._writing = self._pending[:BATCH_LIMIT]
                del self._pending[:BATCH_LIMIT]
                self._taken += 1
                taken = self._taken
                self._urgent = bool(self._pending) and _has_urgent(self._pending)
                # A wake for jobs taken now must not mark the writer as woken: it may sleep
                # next, and the wake for the next job would be skipped.
                self._added = self._added and bool(self._pending)
                upto = self._last_id if not self._pending else _highest_job(batch, self._committed)
                closing = self._closing
            if self._connection is None:
                found, asked = self._try_open()
                found = [row for row in found if row.id not in self._run_from_memory]
                if found:
                    self.on_found(found)
                if asked:
                    self.on_asked(asked)
            written = self._write(batch, upto) if self._connection is not None else False
            if written:
                with self._changed:
                    self._writing = []
                    self._written_batches = taken
                    self._written.notify_all()
            if not written:
                self._hold(batch)
                if closing:
                    remaining = self._close_by - time.monotonic()
                    if remaining <= 0:
                        return
                    time.sleep(min(CLOSE_RETRY_INTERVAL, remaining))  # nothing wakes it now
                else:
                    self._closed.wait(RETRY_INTERVAL)
                continue
            if closing:
                with self._changed:
                    if not self._pending:
                        return
            elif self._look:
                self._look = False
                self._look_for_requests()

    def _write(self, batch: list[Operation], upto: int) -> bool:
        assert self._connection is not None
        delta, dropped = Delta(), 0
        started = time.monotonic()
        written = Batch(self._connection, self._dir_ids, self._chunks, delta)
        try:
            if batch:
                with store.transaction(self._connection):
                    dropped = written.apply(batch, self.dead_letters)
                    self._connection.execute(
                        "INSERT OR REPLACE INTO meta(key, value) VALUES('next_id', ?)",
                        (upto + 1,))
        except sqlite3.Error as error:
            self._dir_ids.clear()  # rolled back: ids made in it are not there
            self._failed(f"cannot write {self.file}: {_reason(error)}")
            return False
        if written.touched:  # committed: only now may a reader find the records changed
            self._commits += 1
            for dir_id in written.touched:
                self._versions[dir_id] = self._commits
        if batch:
            self.on_commit(time.monotonic() - started)
        if dropped:
            self.counters.add(Count.DEAD_LETTERS_DROPPED, amount=dropped)
            log(logging.WARNING, f"{dropped} oldest dead letter(s) dropped: settings."
                f"dead_letters keeps {self.dead_letters}", path=str(self.file))
        self._chunks.apply(delta)
        with self._changed:
            self._committed = max(self._committed, upto)
            recovered, self._problem = self._problem, ""
            self._written.notify_all()
        if recovered:
            log(logging.WARNING, f"the ledger can be written again ({recovered} before); what "
                "was held in memory is written", message_id=MessageId.LEDGER_DEGRADED,
                path=str(self.file))
            self.on_status_change()
        return True

    def _hold(self, batch: list[Operation]) -> None:
        """Keep a batch that could not be written before what came since, within the bound."""
        with self._changed:
            held = batch + self._pending
            if len(held) > MAX_PENDING:
                kept = [op for op in held if op[0] not in ("dir", "forget")]
                self.counters.add(Count.LEDGER_DROPPED, amount=len(held) - len(kept))
                held = kept[-MAX_PENDING:]
            self._pending = held
            self._writing = []

    def _failed(self, problem: str) -> None:
        self.counters.add(Count.LEDGER_FAILURES)
        with self._changed:
            news = not self._problem
            self._problem = problem
            self._written.notify_all()
        if news:
            log(logging.ERROR, f"DEGRADED: {problem}; jobs are kept in memory (and lost to a "
                f"crash) until it can be written, tried every {RETRY_INTERVAL:g}s",
                message_id=MessageId.LEDGER_DEGRADED, path=str(self.file))
            self.on_status_change()

    def _look_for_requests(self) -> None:
        """Dead letters ``watchd jobs retry`` marked since the last look (another process's
        commit changes ``data_version``): jobs, and webhook deliveries."""
        assert self._connection is not None
        try:
            version = self._connection.execute("PRAGMA data_version").fetchone()[0]
            if version == self._data_version:
                return
            self._data_version = version
            rows = store.jobs(self._connection, (store.REQUESTED,))
            asked = store.take_asked_deliveries(self._connection)
        except sqlite3.Error:
            return  # looked at again next time
        if rows:
            self.on_found(rows)
        if asked:
            self.on_asked(asked)


def _has_urgent(operations: list[Operation]) -> bool:
    """Whether someone waits for one of these: a job queued (its worker), a dead letter (an
    admin)."""
    for operation in operations:
        kind, value = operation[0], operation[1]
        if kind == "add" or (kind == "job" and isinstance(value, JobRow)
                             and value.state == store.DEAD):
            return True
        if kind == "delivery" and isinstance(value, tuple) and value[-1]:
            return True
    return False


def _jobs_lost(operations: list[Operation]) -> list[Job]:
    """The jobs kept new in ``operations`` that neither end nor are kept dead in them."""
    added = {op[1]: op[2] for op in operations if op[0] == "add"}
    for operation in operations:
        if operation[0] == "end":
            added.pop(operation[1], None)
        elif operation[0] == "job":
            row = cast(JobRow, operation[1])
            if row.state == store.DEAD:
                added.pop(row.id, None)
    return [cast(Job, job) for job in added.values()]


def _highest_job(batch: list[Operation], committed: int) -> int:
    """The highest id of a job kept new in ``batch``: what is on disk once it is written, when
    more waits after it (ids are given in the order of the list)."""
    for operation in reversed(batch):
        if operation[0] == "add":
            job_id = operation[1]
            assert isinstance(job_id, int)
            if job_id > committed:
                return job_id
    return committed




def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error)
