"""The ledger's database: its schema, how it is opened, and the queries on it.

One SQLite file, ``<state_dir>/ledger.db``, in WAL mode so that ``watchd jobs`` can read and
change it while the daemon writes. Only the daemon's writer thread (``watchd.ledger.writer``)
writes jobs and records while it runs; ``watchd jobs retry|drop`` change only dead letters
(and mark them ``requested``, which the daemon picks up).

    queued the jobs each commit queued, packed in one row (``watchd.ledger.chunks``)
    ended  the packed jobs that ended, or whose row moved to ``jobs``
    jobs   one row a job once it is more than queued: retrying, a dead letter, on to its next
           action, asked for again
    rules  each rule the ledger has caught up with once: its first start is behind it
    dirs   each directory a rule last saw, by rule
    seen   what a rule last saw in each directory: name, inode, size, mtime
    deliveries  webhook deliveries from their acceptance until acknowledged, and dead letters
"""

from __future__ import annotations

import contextlib
import marshal
import os
import secrets
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

FILE_NAME = "ledger.db"
SCHEMA_VERSION = 4  # 2: jobs.batch; 3: deliveries.url; 4: roots
BUSY_TIMEOUT_MS = 2000  # how long a write waits for another process's lock before it fails

# The states of a job row. A job that is running when the daemon dies is queued again at the
# next start (at least once); ``requested``: a dead letter that ``watchd jobs retry`` asked for.
QUEUED, RUNNING, RETRYING, DEAD, REQUESTED = "queued", "running", "retrying", "dead", "requested"
UNFINISHED = (QUEUED, RUNNING, RETRYING, REQUESTED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs(
    id INTEGER PRIMARY KEY, state TEXT NOT NULL, rule TEXT NOT NULL, root BLOB NOT NULL,
    path BLOB NOT NULL, event TEXT NOT NULL, is_dir INTEGER NOT NULL, src_path BLOB NOT NULL,
    caught_up INTEGER NOT NULL, step INTEGER NOT NULL, tries INTEGER NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, next_at REAL,
    action TEXT, status INTEGER, error TEXT, stderr BLOB, batch BLOB);
CREATE TABLE IF NOT EXISTS queued(first INTEGER PRIMARY KEY, last INTEGER NOT NULL,
    data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS ended(id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS rules(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL,
    since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS roots(rule TEXT NOT NULL, path BLOB NOT NULL,
    PRIMARY KEY(rule, path)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dirs(id INTEGER PRIMARY KEY, rule TEXT NOT NULL,
    path BLOB NOT NULL, UNIQUE(rule, path));
CREATE TABLE IF NOT EXISTS seen(dir INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL,
    size INTEGER NOT NULL, mtime INTEGER NOT NULL, PRIMARY KEY(dir, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries(seq INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL,
    rule TEXT NOT NULL, action INTEGER NOT NULL, event TEXT NOT NULL, path BLOB NOT NULL,
    body BLOB NOT NULL, created REAL NOT NULL, attempts INTEGER NOT NULL, last_error TEXT,
    dead INTEGER NOT NULL, url TEXT);
"""
# The columns each upgrade adds to a table of an earlier version (a table it lacks, ``roots``,
# is made by ``_create``).
_ADDED_COLUMNS = (("jobs", "batch", "BLOB"), ("deliveries", "url", "TEXT"))
DELIVERY_COLUMNS = ("id", "rule", "action", "event", "path", "body", "created", "attempts",
                    "last_error", "url", "dead")
# A delivery, new or as it is now (attempts made, given up on); it keeps its place in order.
PUT_DELIVERY = (f"INSERT INTO deliveries({','.join(DELIVERY_COLUMNS)}) "
                f"VALUES({','.join('?' * len(DELIVERY_COLUMNS))}) ON CONFLICT(id) DO UPDATE SET "
                "rule=excluded.rule, action=excluded.action, attempts=excluded.attempts, "
                "last_error=excluded.last_error, url=excluded.url, dead=excluded.dead")
END_DELIVERY = "DELETE FROM deliveries WHERE id=?"
# The dead letters past the newest N (the parameter), of jobs and of deliveries.
DROP_OLD_DEAD_JOBS = ("DELETE FROM jobs WHERE state='dead' AND id <= (SELECT id FROM jobs "
                      "WHERE state='dead' ORDER BY id DESC LIMIT 1 OFFSET ?)")
DROP_OLD_DEAD_DELIVERIES = ("DELETE FROM deliveries WHERE dead=1 AND seq <= (SELECT seq FROM "
                            "deliveries WHERE dead=1 ORDER BY seq DESC LIMIT 1 OFFSET ?)")


class JobRow(NamedTuple):
    """A job as the ledger keeps it: a row of ``jobs``, its columns in order (a tuple: one is
    made for every job queued, on the event path)."""

    id: int
    state: str
    rule: str
    root: bytes
    path: bytes
    event: str
    is_dir: bool
    src_path: bytes
    caught_up: bool
    step: int  # the action to perform next, from 1
    tries: int  # runs of that action started
    created: float
    updated: float
    next_at: float | None = None  # retrying: when (seconds since the epoch)
    action: str | None = None  # the last failed run: what it ran
    status: int | None = None  # … its exit status (minus a signal's number)
    error: str | None = None  # … how it failed, in words
    stderr: bytes | None = None  # … the tail of its stderr
    batch: bytes | None = None  # a batch's events (``watchd.ledger.rows``); None: one event

    def as_json(self) -> dict[str, object]:
        """For ``watchd jobs list --json``: names as text (bytes escaped as in logs); a
        batch's paths as a list."""
        document: dict[str, object] = {
            column: value.decode("utf-8", "backslashreplace") if isinstance(value, bytes)
            else value for column, value in self._asdict().items() if column != "batch"}
        if self.batch is not None:
            document["batch"] = [path.decode("utf-8", "backslashreplace")
                                 for path, *_ in marshal.loads(self.batch)]
        return document


JOB_COLUMNS = JobRow._fields
# A job never written yet.
NEW_JOB = f"INSERT INTO jobs({','.join(JOB_COLUMNS)}) VALUES({','.join('?' * len(JOB_COLUMNS))})"
# A job's row, new or as it is now; its creation time stays that of its first.
PUT_JOB = (f"INSERT INTO jobs({','.join(JOB_COLUMNS)}) VALUES({','.join('?' * len(JOB_COLUMNS))}) "
           "ON CONFLICT(id) DO UPDATE SET " + ", ".join(
               f"{column}=excluded.{column}" for column in JOB_COLUMNS
               if column not in ("id", "created")))


# SQLite's INTEGER is signed 64-bit, and an inode number may use all 64 bits (an NFS file id):
# one past 2**63 is kept as the negative number of the same bits.
_INODES = 1 << 64


def stored_inode(ino: int) -> int:
    return ino - _INODES if ino >= _INODES >> 1 else ino


def records(rows: Iterable[tuple[bytes, int, int, int]]) -> dict[bytes, tuple[int, int, int]]:
    """The ``seen`` rows (name, ino, size, mtime) of a directory, each name's state."""
    return {name: (ino + _INODES if ino < 0 else ino, size, mtime)
            for name, ino, size, mtime in rows}


def path_in(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


class NotALedger(sqlite3.DatabaseError):
    """A file where the ledger is that is not one: not a regular file (a symlink planted
    there), or a database of another program. It is kept aside as a corrupt one, unchanged."""


class NewerLedger(sqlite3.Error):
    """A ledger a newer watchd made (the package was downgraded): neither read nor written,
    as this version cannot tell what the newer one keeps in it."""


class DamagedRow(sqlite3.DatabaseError):
    """A row of ``queued`` whose packed jobs cannot be read, in a ledger that can."""


def connect(file: Path, *, create: bool) -> sqlite3.Connection:
    """A connection in WAL mode, each commit durable (``synchronous=FULL``); with ``create``,
    the state directory and schema are made if missing. Raises ``sqlite3.DatabaseError`` for a
    file that is not a database (``NotALedger`` for one that is not a ledger), ``NewerLedger``,
    ``OSError``/``sqlite3.OperationalError`` if it cannot be had."""
    if create:
        file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    elif not file.exists():
        raise FileNotFoundError(f"no ledger at {file}")
    _refuse_unless_regular(file)
    uri = f"file:{file}" + ("" if create else "?mode=rw")
    connection = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                                 isolation_level=None, check_same_thread=False)
    try:
        _refuse_unless_ledger(connection, file)  # before anything is written to it
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        if create:
            with transaction(connection):
                _create(connection)
        _upgrade(connection)
        # Reading a table proves the file is a ledger (one without tables is made one above).
        connection.execute("SELECT count(*) FROM jobs WHERE id < 0").fetchone()
        if create:
            _only_for_its_owner(file)
    except BaseException:
        connection.close()
        raise
    return connection


def read_only(file: Path) -> sqlite3.Connection:
    """A connection that only reads, beside the daemon's writer or where it cannot write (a
    read-only mount, a full disk). SQLite reads a WAL database read-only only with its
    ``-shm`` there (a writer, or a crash, leaves it). With no WAL either, nothing is being
    written to the file, and it is read as immutable (a writer that begins then writes its
    WAL, not the file). Raises ``sqlite3.Error`` as ``connect``."""
    _refuse_unless_regular(file)
    try:
        return _reading(file, f"file:{file}?mode=ro")
    except sqlite3.OperationalError:
        if os.path.exists(f"{file}-wal"):
            raise
    return _reading(file, f"file:{file}?mode=ro&immutable=1")


def _reading(file: Path, uri: str) -> sqlite3.Connection:
    connection = sqlite3.connect(uri, uri=True, isolation_level=None,
                                 timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    try:
        _refuse_unless_ledger(connection, file)
        connection.execute("SELECT count(*) FROM jobs WHERE id < 0").fetchone()
    except BaseException:
        connection.close()
        raise
    return connection


def _refuse_unless_regular(file: Path) -> None:
    """The ledger, its WAL and its shm are regular files of one name each: SQLite follows a
    symlink planted there, and would write, and make 0600, what it leads to."""
    for name in (str(file), f"{file}-wal", f"{file}-shm"):
        try:
            status = os.lstat(name)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(status.st_mode):
            raise _symlink(name)
        if not stat.S_ISREG(status.st_mode):
            raise NotALedger(f"{name} is not a regular file, not a ledger")


def _symlink(name: str) -> NotALedger:
    return NotALedger(f"{name} is a symbolic link, not a ledger: it is not followed")


def _refuse_unless_ledger(connection: sqlite3.Connection, file: Path) -> None:
    """A database with tables is a ledger if it has watchd's schema row, of this version or
    an earlier one, and the columns of that version (an upgrade adds only ``_ADDED_COLUMNS``):
    another program's database (a ``jobs`` table of its own) is not one, nor to be changed."""
    tables = {name for (name,) in connection.execute(
        "SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        return  # new
    row = (connection.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
           if "meta" in tables else None)
    if row is None or not isinstance(row[0], int):
        raise NotALedger(f"{file} is a database without watchd's schema (its tables: "
                         f"{', '.join(sorted(tables))}), not a ledger")
    if row[0] > SCHEMA_VERSION:
        raise NewerLedger(f"the ledger {file} was made by a newer watchd (its schema is "
                          f"{row[0]}, this version's {SCHEMA_VERSION}): it is left as it is. "
                          "Install that version again, or move the file away to begin a new "
                          "ledger (the jobs in it are then not run)")
    for table in sorted(tables & _NEEDED_COLUMNS.keys()):
        have = {column[1] for column in connection.execute(f"PRAGMA table_info({table})")}
        if missing := _NEEDED_COLUMNS[table] - have:
            raise NotALedger(f"{file} is not a ledger: its table {table} has no column "
                             f"{', '.join(sorted(missing))}")


def _needed_columns() -> dict[str, set[str]]:
    """The columns of each table of the schema, but those an upgrade adds."""
    with contextlib.closing(sqlite3.connect(":memory:")) as scratch:
        scratch.executescript(_SCHEMA)
        tables = [name for (name,) in scratch.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")]
        return {table: {column[1] for column in scratch.execute(f"PRAGMA table_info({table})")}
                - {added for name, added, _ in _ADDED_COLUMNS if name == table}
                for table in tables}


_NEEDED_COLUMNS = _needed_columns()


def _only_for_its_owner(file: Path) -> None:
    """Mode 0600, never through a symlink swapped in since the check (``os.chmod`` follows
    one, and Linux has no ``lchmod``). Through an ``O_PATH`` descriptor, as glibc's
    ``fchmodat(AT_SYMLINK_NOFOLLOW)``: closing any other descriptor of the file would drop
    the POSIX locks this process's SQLite connections hold on it."""
    descriptor = os.open(file, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if stat.S_ISLNK(os.fstat(descriptor).st_mode):
            raise _symlink(str(file))
        os.chmod(f"/proc/self/fd/{descriptor}", 0o600)
    finally:
        os.close(descriptor)


def _create(connection: sqlite3.Connection) -> None:
    for statement in filter(str.strip, _SCHEMA.split(";")):
        connection.execute(statement)
    connection.execute("INSERT OR IGNORE INTO meta(key, value) VALUES('schema', ?)",
                       (SCHEMA_VERSION,))
    connection.execute("INSERT OR IGNORE INTO meta(key, value) VALUES('instance', ?)",
                       (secrets.randbits(48),))


def _upgrade(connection: sqlite3.Connection) -> None:
    """A ledger of an earlier version, made current: each step adds what it lacks."""
    for table, column, kind in _ADDED_COLUMNS:
        columns = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
        if columns and column not in columns:
            with transaction(connection):
                connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    connection.execute("UPDATE meta SET value=? WHERE key='schema' AND value<?",
                       (SCHEMA_VERSION, SCHEMA_VERSION))


def root_recorded(connection: sqlite3.Connection, rule: str, root: bytes) -> bool:
    """Whether ``rule``'s first walk of the tree at ``root`` is in the ledger."""
    try:
        return connection.execute("SELECT 1 FROM roots WHERE rule=? AND path=?",
                                  (rule, root)).fetchone() is not None
    except sqlite3.OperationalError:  # a ledger older than the table, opened read-only
        return False


def has_records_under(connection: sqlite3.Connection, rule: str, root: bytes) -> bool:
    """Whether ``rule`` has records of directories at or below ``root``: a tree it walked,
    for a ledger of before the roots were kept."""
    below = root.rstrip(b"/") + b"/"
    return connection.execute(
        "SELECT 1 FROM dirs WHERE rule=? AND (path=? OR (path>=? AND path<?)) LIMIT 1",
        (rule, root, below, below[:-1] + b"0")).fetchone() is not None  # "0" follows "/"


def instance(connection: sqlite3.Connection) -> str:
    """This ledger's own name, made at its creation: ids made from job ids differ from those
    of a ledger begun anew (a corrupt one put aside)."""
    row = connection.execute("SELECT value FROM meta WHERE key='instance'").fetchone()
    return f"{row[0]:012x}" if row else "0" * 12


@contextlib.contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[None]:
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def put_aside(file: Path) -> Path:
    """Move a database SQLite cannot read (and its WAL) aside, where it can be looked at."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    aside = file.with_name(f"{file.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{file}{suffix}", f"{aside}{suffix}")
    return aside


def next_id(connection: sqlite3.Connection) -> int:
    """The first job id not used yet: ids are never given twice, even after a drop."""
    row = connection.execute(
        "SELECT max(coalesce((SELECT value FROM meta WHERE key='next_id'), 1), "
        "coalesce((SELECT max(id) FROM jobs), 0) + 1, "
        "coalesce((SELECT max(last) FROM queued), 0) + 1)").fetchone()
    return int(row[0])


def jobs(connection: sqlite3.Connection, states: Iterable[str] = (*UNFINISHED, DEAD),
         ids: Iterable[int] | None = None,
         damaged: list[DamagedRow] | None = None) -> list[JobRow]:
    """The jobs in these states (of these ids): rows of ``jobs``, and the packed jobs not
    ended (queued), in the order of their ids; ``damaged`` as ``packed_jobs``."""
    wanted = tuple(states)
    chosen = None if ids is None else tuple(ids)
    query = (f"SELECT {','.join(JOB_COLUMNS)} FROM jobs "
             f"WHERE state IN ({','.join('?' * len(wanted))})")
    parameters: list[object] = list(wanted)
    if chosen is not None:
        query += f" AND id IN ({','.join('?' * len(chosen))})"
        parameters.extend(chosen)
    rows = [_row(row) for row in connection.execute(query, parameters)]
    if QUEUED in wanted:
        have = {job_id for (job_id,) in connection.execute("SELECT id FROM jobs")}
        rows.extend(row for _, row in packed_jobs(connection, damaged) if row.id not in have
                    and (chosen is None or row.id in chosen))
    return sorted(rows)


def _row(values: tuple[object, ...]) -> JobRow:
    row = JobRow._make(values)
    return row._replace(is_dir=bool(row.is_dir), caught_up=bool(row.caught_up))


# A packed job: the columns of its row as it was queued (the rest are NULL then), and a
# batch's events after them.
_PACKED = 13


def pack(rows: list[JobRow]) -> bytes:
    return marshal.dumps([tuple(row)[:_PACKED] + ((row.batch,) if row.batch else ())
                          for row in rows])


def unpack(data: bytes) -> list[JobRow]:
    """Raises ``ValueError`` for data that is not packed jobs (damaged on the disk)."""
    try:
        packed = marshal.loads(data)
    except (EOFError, TypeError) as error:  # cut short; not bytes (a value of another type)
        raise ValueError(error) from None
    if not isinstance(packed, list) or not all(
            isinstance(values, tuple) and len(values) in (_PACKED, _PACKED + 1)
            for values in packed):
        raise ValueError("not a list of packed jobs")
    return [JobRow(*values) if len(values) == _PACKED
            else JobRow(*values[:_PACKED])._replace(batch=values[_PACKED])
            for values in packed]


def packed_jobs(connection: sqlite3.Connection,
                damaged: list[DamagedRow] | None = None) -> Iterator[tuple[int, JobRow]]:
    """Every packed job not ended: (the first id of its row, the job as queued). A row that
    cannot be read is noted in ``damaged`` and skipped (the rest can be run); without
    ``damaged``, raised."""
    ended = {job_id for (job_id,) in connection.execute("SELECT id FROM ended")}
    for first, last, data in connection.execute(
            "SELECT first, last, data FROM queued ORDER BY first"):
        try:
            rows = unpack(data)
        except ValueError as error:
            not_ended = last - first + 1 - sum(first <= job_id <= last for job_id in ended)
            problem = DamagedRow(f"the row of queued jobs {first}-{last} ({not_ended} not "
                                 f"ended) cannot be read: {error}")
            if damaged is None:
                raise problem from None
            damaged.append(problem)
            continue
        for row in rows:
            if row.id not in ended:
                yield first, row._replace(state=QUEUED, is_dir=bool(row.is_dir),
                                          caught_up=bool(row.caught_up))


# A delivery's ``dead``: waiting, a dead letter, or a dead letter asked for again (``watchd jobs
# retry``) that the daemon has not taken back into its outbox yet.
WAITING, BURIED, ASKED = 0, 1, 2

DeadLetterId = int | str  # a job's id, or a webhook delivery's


def request_retry(connection: sqlite3.Connection, job_ids: list[int],
                  delivery_ids: list[str]) -> list[DeadLetterId]:
    """Mark these dead letters (of jobs, of webhook deliveries) to be run again; those that
    were (still dead letters)."""
    return _change_dead(connection, job_ids, delivery_ids,
                        "UPDATE jobs SET state=?, tries=0, next_at=NULL, updated=? WHERE id=?",
                        lambda job_id: (REQUESTED, time.time(), job_id),
                        f"UPDATE deliveries SET dead={ASKED}, attempts=0 WHERE id=?")


def drop(connection: sqlite3.Connection, job_ids: list[int],
         delivery_ids: list[str]) -> list[DeadLetterId]:
    """Forget these dead letters, as ``request_retry``."""
    return _change_dead(connection, job_ids, delivery_ids, "DELETE FROM jobs WHERE id=?",
                        lambda job_id: (job_id,), "DELETE FROM deliveries WHERE id=?")


def _change_dead(connection: sqlite3.Connection, job_ids: list[int], delivery_ids: list[str],
                 job_statement: str, job_parameters: Callable[[int], tuple[object, ...]],
                 delivery_statement: str) -> list[DeadLetterId]:
    with transaction(connection):
        found_jobs = [row.id for row in jobs(connection, (DEAD,), job_ids)]
        connection.executemany(job_statement, [job_parameters(job_id) for job_id in found_jobs])
        wanted = set(delivery_ids)
        found_deliveries = [delivery_id for (delivery_id,) in connection.execute(
            f"SELECT id FROM deliveries WHERE dead={BURIED} ORDER BY seq")
            if delivery_id in wanted]
        connection.executemany(delivery_statement,
                               [(delivery_id,) for delivery_id in found_deliveries])
    return [*found_jobs, *found_deliveries]


def job_of_delivery(delivery_id: str, ledger: str) -> int | None:
    """The id of the job whose webhook made a delivery (``msg_<ledger>_<job>_<action>``); None
    for one another ledger made (0.1's, imported)."""
    prefix = f"msg_{ledger}_"
    if not delivery_id.startswith(prefix):
        return None
    job, _, place = delivery_id[len(prefix):].partition("_")
    return int(job) if job.isdigit() and place.isdigit() else None


def dead_deliveries(connection: sqlite3.Connection) -> list[tuple[object, ...]]:
    """The webhook deliveries that are dead letters, as ``DELIVERY_COLUMNS``, oldest first."""
    return connection.execute(f"SELECT {','.join(DELIVERY_COLUMNS)} FROM deliveries "
                              f"WHERE dead={BURIED} ORDER BY seq").fetchall()


def take_asked_deliveries(connection: sqlite3.Connection) -> list[tuple[object, ...]]:
    """The dead deliveries asked for again, made waiting: the daemon's to send (it takes them
    at its start from those waiting, and later from what this returns)."""
    with transaction(connection):
        rows = connection.execute(f"SELECT {','.join(DELIVERY_COLUMNS)} FROM deliveries "
                                  f"WHERE dead={ASKED} ORDER BY seq").fetchall()
        if rows:
            # Asked for by an admin: sent to the URL its webhook has now (``url`` is what
            # keeps a delivery from going anywhere else unasked).
            connection.execute(f"UPDATE deliveries SET dead={WAITING}, url=NULL "
                               f"WHERE dead={ASKED}")
    return [(*row[:-2], None, WAITING) for row in rows]


def dead_by_rule(connection: sqlite3.Connection) -> dict[str, int]:
    """How many dead letters each rule has in the ledger: of jobs, and of webhook deliveries."""
    counts: dict[str, int] = {}
    for rule, count in connection.execute(
            "SELECT rule, count(*) FROM jobs WHERE state='dead' GROUP BY rule UNION ALL "
            f"SELECT rule, count(*) FROM deliveries WHERE dead={BURIED} GROUP BY rule"):
        counts[str(rule)] = counts.get(str(rule), 0) + int(count)
    return counts
