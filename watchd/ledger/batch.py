"""One group commit's worth of operations, applied with as few statements as they allow.

Under a burst most of a job's operations meet in the same batch, or cancel out: a row kept
twice is written once (its last state), a job that ended before it was ever written is not
written at all, and what a rule saw at a path is written once, as it is now. What is left
goes to SQLite table by table with ``executemany`` (what the rules saw: in one statement,
``_put_records``). Tables are independent, so only the order within one matters, and it is
kept.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from collections.abc import Sequence
from typing import cast

from watchd.core.events import FileEvent
from watchd.core.job import Job
from watchd.ledger import store
from watchd.ledger.chunks import Chunks, Delta
from watchd.ledger.rows import queued_row
from watchd.ledger.store import JobRow
from watchd.source.snapshot import DIRECTORY, OTHER, FileState, file_state

# Events after which a rule has nothing at the path: its record goes.
_GONE_AFTER = frozenset({"delete", "moved_from", "delete_self", "move_self"})

# An operation: (kind, ...). "add": a job queued, with its id (its rule's record of its path
# is written with it if the rule catches up: the rule acted on the event there); "job": a
# job's row as it is now; "end": a job whose actions ended; "dir": a directory's records as
# a catch-up found it (upserts, deletions); "forget": a directory gone; "caught_up": a rule's
# first walk of a root done; "delivery": a webhook delivery to keep; "delivered": one acknowledged.
Operation = tuple[object, ...]
RecordKey = tuple[str, bytes]  # a rule, and a path
# A record to make from what is at the path when the batch is written (looked at once however
# many of the batch's jobs name it): for an event that does not carry the state the notifier
# saw (a close_write does, and is not looked at again).
LOOK: FileState = (0, -5, 0)
_UPSERT = ("ON CONFLICT(dir, name) DO UPDATE SET ino=excluded.ino, size=excluded.size, "
           "mtime=excluded.mtime")
PUT_RECORD = f"INSERT INTO seen VALUES(?, ?, ?, ?, ?) {_UPSERT}"
# The same for many rows at once, given as one JSON array of rows whose names are UTF-8 text
# (the database's text encoding: CAST gives back the name's bytes). WHERE: see SQLite's upsert.
PUT_RECORDS = ("INSERT INTO seen SELECT value->>0, CAST(value->>1 AS BLOB), value->>2, value->>3, "
               f"value->>4 FROM json_each(?) WHERE true {_UPSERT}")
# Up to this many records are upserted a row a step: fewer steps than that cost less than
# making and reading the JSON (the commit of a lone job, on which its action waits).
FEW_RECORDS = 8


class Batch:
    def __init__(self, connection: sqlite3.Connection, dir_ids: dict[tuple[str, bytes], int],
                 chunks: Chunks, delta: Delta) -> None:
        self.connection = connection
        self.dir_ids = dir_ids  # a cache of the dirs table, kept across batches
        self.chunks = chunks  # where the packed jobs are; changed through ``delta`` only
        self.delta = delta
        self.added: dict[int, JobRow] = {}  # jobs queued in this batch
        self.jobs: dict[int, JobRow | None] = {}  # each job's last row kept; None: ended
        self.deliveries: dict[str, tuple[object, ...] | None] = {}
        self.new_deliveries: set[str] = set()  # first kept in this batch: never written yet
        self.records: dict[RecordKey, FileState | None] = {}  # None: nothing there now
        self.touched: set[int] = set()  # the directories whose records it changes

    def apply(self, operations: list[Operation], dead_letters: int) -> int:
        """Apply them; then keep at most ``dead_letters`` of jobs and of deliveries each, if
        new ones came; how many old ones were dropped."""
        for operation in operations:
            kind = operation[0]
            if kind == "add":
                job = cast(Job, operation[2])
                row = queued_row(job, cast(int, operation[1]))
                self.added[row.id] = row
                if job.rule.catch_up or job.rule.poll:
                    for event in job.events:
                        self._seen(row.rule, event)
            elif kind == "job":
                row = cast(JobRow, operation[1])
                self.jobs[row.id] = row
            elif kind == "end":
                self.jobs[cast(int, operation[1])] = None
            elif kind == "dir":
                self._dir(*cast(tuple[str, bytes, list[tuple[bytes, FileState]], list[bytes]],
                                operation[1:]))
            elif kind == "forget":
                self._forget(*cast(tuple[str, bytes], operation[1:]))
            elif kind == "caught_up":
                self.connection.execute("INSERT OR IGNORE INTO rules(name, since) VALUES(?, ?)",
                                        (operation[1], time.time()))
                self.connection.execute("INSERT OR IGNORE INTO roots VALUES(?, ?)",
                                        operation[1:3])
            elif kind == "delivery":
                self._delivery(cast(tuple[object, ...], operation[1]))
            elif kind == "delivered":
                self.deliveries[cast(str, operation[1])] = None
        self._write_records()
        buried = self._write_jobs() + self._write_deliveries()
        return self._drop_old_dead_letters(dead_letters) if buried else 0

    def _delivery(self, values: tuple[object, ...]) -> None:
        delivery_id = cast(str, values[0])
        if delivery_id not in self.deliveries and values[7] == 0:  # no attempt yet: new
            self.new_deliveries.add(delivery_id)
        self.deliveries[delivery_id] = values

    def _seen(self, rule: str, event: FileEvent) -> None:
        if event.src_path:
            self.records[rule, event.src_path] = None
        self.records[rule, event.path] = (None if event.event in _GONE_AFTER
                                          else event.state or LOOK)

    def _write_records(self) -> None:
        kept, gone = [], []
        for (rule, path), state in self.records.items():
            directory, name = os.path.split(path)
            dir_id = self._dir_id(rule, directory)
            self.touched.add(dir_id)
            if state is LOOK:
                state = _looked_at(path)
            if state is None:
                gone.append((dir_id, name))
            else:
                kept.append((dir_id, name, store.stored_inode(state[0]), state[1], state[2]))
        self._put_records(kept)
        self._each("DELETE FROM seen WHERE dir=? AND name=?", gone)
        self.records.clear()

    def _put_records(self, rows: list[tuple[int, bytes, int, int, int]]) -> None:
        """Upsert the rows in one step, not one a row: each step of an ``executemany`` lets go
        of the interpreter lock, and under a burst the notifier then waits to have it back (a
        batch rule took in a fifth fewer files a second). A few rows, and a name that is not
        UTF-8, go one by one. (Deletions stay one by one: SQLite finds a list of (dir, name)
        pairs by dir alone, and a directory may hold a million.)"""
        if len(rows) <= FEW_RECORDS:
            self._each(PUT_RECORD, rows)
            return
        try:
            text = json.dumps([(dir_id, name.decode(), ino, size, mtime)
                               for dir_id, name, ino, size, mtime in rows], ensure_ascii=False)
        except UnicodeDecodeError:
            self.connection.executemany(PUT_RECORD, rows)
        else:
            self.connection.execute(PUT_RECORDS, (text,))

    def _dir(self, rule: str, directory: bytes, found: list[tuple[bytes, FileState]],
             gone: list[bytes]) -> None:
        for name, state in found:
            self.records[rule, os.path.join(directory, name)] = state
        for name in gone:
            self.records[rule, os.path.join(directory, name)] = None

    def _forget(self, rule: str, directory: bytes) -> None:
        self._write_records()  # what came before, first: the order is kept
        dir_id = self._dir_id(rule, directory)
        self.touched.add(dir_id)
        self.connection.execute("DELETE FROM seen WHERE dir=?", (dir_id,))
        self.connection.execute("DELETE FROM dirs WHERE id=?", (dir_id,))
        del self.dir_ids[rule, directory]

    def _write_jobs(self) -> int:
        """Pack the jobs queued here that nothing else happened to; write the rows of the
        others as they are now (a job ended before it was ever written: nothing); note the
        packed jobs that ended or moved to a row, and remove packed rows left empty. How many
        rows are dead letters."""
        packed, new = [], []
        for job_id, row in self.added.items():
            later = self.jobs.pop(job_id, row)
            if later is row:
                packed.append(row)
            elif later is not None:
                new.append(later)
        kept, gone, moved = [], [], []
        for job_id, later in self.jobs.items():
            if self.chunks.holds(job_id):
                moved.append(job_id)
            elif later is None:
                gone.append((job_id,))
            if later is not None:
                kept.append(later)
        self._each(store.NEW_JOB, new)
        self._each(store.PUT_JOB, kept)
        self._each("DELETE FROM jobs WHERE id=?", gone)
        self._pack(packed)
        self._note_ended(moved)
        return sum(row.state == store.DEAD for row in new + kept)

    def _pack(self, rows: list[JobRow]) -> None:
        if rows:
            ids = [row.id for row in rows]
            first, last = min(ids), max(ids)
            self.connection.execute("INSERT INTO queued VALUES(?, ?, ?)",
                                    (first, last, store.pack(rows)))
            self.delta.new = (first, ids)

    def _note_ended(self, job_ids: list[int]) -> None:
        if not job_ids:
            return
        self.chunks.ending(self.delta, job_ids)
        emptied = set(self.delta.emptied)  # their rows go now, with every note of them
        self._each("INSERT OR IGNORE INTO ended VALUES(?)",
                   [(job_id,) for job_id in job_ids if self.chunks.row_of[job_id] not in emptied])
        for first in self.delta.emptied:
            self.connection.execute("DELETE FROM ended WHERE id BETWEEN ? AND (SELECT last "
                                    "FROM queued WHERE first=?)", (first, first))
            self.connection.execute("DELETE FROM queued WHERE first=?", (first,))

    def _write_deliveries(self) -> int:
        """Write the deliveries' last states; how many are dead letters."""
        if not self.deliveries:
            return 0
        kept = [values for values in self.deliveries.values() if values is not None]
        self._each(store.PUT_DELIVERY, kept)
        self._each(store.END_DELIVERY, [
            (delivery_id,) for delivery_id, values in self.deliveries.items()
            if values is None and delivery_id not in self.new_deliveries])
        return sum(bool(values[-1]) for values in kept)

    def _drop_old_dead_letters(self, keep: int) -> int:
        dropped = 0
        for statement in (store.DROP_OLD_DEAD_JOBS, store.DROP_OLD_DEAD_DELIVERIES):
            dropped += self.connection.execute(statement, (keep,)).rowcount
        return dropped

    def _each(self, statement: str, rows: Sequence[tuple[object, ...]]) -> None:
        """``statement`` for each row; nothing asked of SQLite for none (a lone job's commit
        would ask it a handful of times for nothing)."""
        if rows:
            self.connection.executemany(statement, rows)

    def _dir_id(self, rule: str, directory: bytes) -> int:
        key = (rule, directory)
        dir_id = self.dir_ids.get(key)
        if dir_id is None:
            self.connection.execute("INSERT OR IGNORE INTO dirs(rule, path) VALUES(?, ?)", key)
            dir_id = self.connection.execute("SELECT id FROM dirs WHERE rule=? AND path=?",
                                             key).fetchone()[0]
            self.dir_ids[key] = dir_id
        return dir_id


def _looked_at(path: bytes) -> FileState | None:
    try:
        return record_of(os.lstat(path))
    except OSError:
        return None


def record_of(info: os.stat_result) -> FileState:
    """What the ledger keeps of an entry, as a snapshot does: a regular file's inode, size and
    mtime; a marker for anything else (a directory's content is its own record)."""
    if stat.S_ISREG(info.st_mode):
        return file_state(info)
    return DIRECTORY if stat.S_ISDIR(info.st_mode) else OTHER
