"""What the control socket answers, each command by its function (on the socket's thread)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from watchd.control import status
from watchd.control.protocol import ProtocolError
from watchd.control.server import Answer
from watchd.control.status import Daemon
from watchd.core.trace import Tracer
from watchd.ledger import store
from watchd.ledger.rows import as_held
from watchd.ledger.store import JobRow
from watchd.outbox.deadletters import (
    change_dead_letters,
    changed_lines,
    jobs_on_disk,
    ledger_listing,
    runnable_jobs,
    unlisted,
)

T = TypeVar("T")


def document(daemon: Daemon) -> dict[str, Any]:
    """The status document: the live part asked of the main loop, the ledger read here."""
    live = daemon.ask(lambda: status.live(daemon))
    return status.with_ledger(live, _dead_by_rule(daemon))


def _dead_by_rule(daemon: Daemon) -> dict[str, int] | None:
    """Each rule's dead letters; while the ledger cannot be written, those of jobs as the
    daemon holds them (kept, retried or dropped since it could)."""
    counts = _read(daemon.ledger.file, store.dead_by_rule)
    if not daemon.ledger.problem:
        return counts
    written = _read(daemon.ledger.file, _dead_jobs) or []
    held = _held(daemon, written)
    if counts is None and not held:
        return None
    totals = Counter(counts or {})
    totals.subtract(Counter(row.rule for row in written))
    totals.update(Counter(row.rule for row in held))
    return dict(totals)


def _dead_jobs(connection: sqlite3.Connection) -> list[JobRow]:
    return store.jobs(connection, (store.DEAD,))


def _held(daemon: Daemon, written: list[JobRow]) -> list[JobRow]:
    """The dead letters of jobs as the daemon holds them: those ``written`` on disk, with what
    it has not written yet applied."""
    return [row for row in daemon.ledger.with_pending(written) if row.state == store.DEAD]


def answers(daemon: Daemon) -> dict[str, Answer]:
    def status_of(request: dict[str, object]) -> object:
        return document(daemon)

    def jobs_of(request: dict[str, object]) -> object:
        change = request.get("change")
        if change in ("retry", "drop"):
            return _changed(daemon, str(change), _ids(request.get("ids")))
        dead_only = bool(request.get("dead"))
        damaged: list[store.DamagedRow] = []
        read = _read(daemon.ledger.file,
                     lambda connection: jobs_on_disk(connection, dead_only, damaged))
        rows, deliveries = read or ([], [])
        rows = daemon.ledger.with_pending(rows)
        notes = _unread(daemon, read)
        if dead_only:
            rows = [row for row in rows if row.state == store.DEAD]
        else:
            rows = as_held(rows, daemon.jobs.held())
            if daemon.ledger.problem and not notes:
                notes = [f"the ledger cannot be written ({daemon.ledger.problem}): jobs are "
                         "listed as the daemon holds them"]
        return {"lines": list(ledger_listing(rows, deliveries, bool(request.get("json")))),
                "stderr": notes + unlisted(daemon.ledger.file, damaged)}

    def trace_of(request: dict[str, object]) -> object:
        rules = _strings(request.get("rules"), "rules")
        known = {rule.name for rule in daemon.ruleset.rules}
        unknown = sorted(set(rules) - known)
        if unknown:
            raise ProtocolError(f"no rule named {', '.join(map(repr, unknown))}; the rules are: "
                                + ", ".join(sorted(known)))
        paths = _strings(request.get("paths"), "paths")
        return Tracer(frozenset(rules), tuple(os.fsencode(path) for path in paths))

    return {"status": status_of, "jobs": jobs_of, "trace": trace_of}


def _unread(daemon: Daemon, read: object) -> list[str]:
    if read is not None:
        return []
    return [f"the ledger {daemon.ledger.file} cannot be read: the jobs the daemon holds are "
            "listed, not the dead letters"]


def _changed(daemon: Daemon, command: str,
             ids: list[store.DeadLetterId] | None) -> dict[str, object]:
    """``watchd jobs retry|drop`` on the daemon's ledger, which looks for the dead letters
    asked for again at once."""
    if daemon.ledger.problem:
        return _changed_held(daemon, command, ids)
    try:
        with contextlib.closing(store.connect(daemon.ledger.file, create=False)) as connection:
            done, unknown = change_dead_letters(connection, command, ids, daemon.ruleset)
    except FileNotFoundError:
        done, unknown = change_dead_letters(None, command, ids, daemon.ruleset)
    except (OSError, sqlite3.Error) as error:
        raise ProtocolError(f"cannot change the ledger {daemon.ledger.file}: {error}") from None
    if command == "retry" and done:
        daemon.ledger.look()
    return {"change": command, "lines": done, "stderr": unknown}


def _changed_held(daemon: Daemon, command: str,
                  ids: list[store.DeadLetterId] | None) -> dict[str, object]:
    """``watchd jobs retry|drop`` while the ledger cannot be written: the dead letters of
    jobs as the daemon holds them are queued again or ended by its writer (on disk once it
    can write); a webhook delivery's waits until then."""
    held = {row.id: row for row in _held(daemon, _read(daemon.ledger.file, _dead_jobs) or [])}
    asked = list(held) if ids is None else list(dict.fromkeys(ids))
    problems = [f"{i}: no such dead letter of a job (a webhook delivery's can be changed once "
                f"the ledger can be written: {daemon.ledger.problem})"
                for i in asked if i not in held]
    rows = [held[i] for i in asked if i in held]
    if command == "retry":
        rows, refused = runnable_jobs(rows, daemon.ruleset)
        problems += refused
        requested = [row._replace(state=store.REQUESTED) for row in rows]
        daemon.ask(lambda: daemon.ledger.on_found(requested))
    else:
        for row in rows:
            daemon.ledger.end(row.id)
    done, problems = changed_lines(command, [row.id for row in rows], problems)
    return {"change": command, "lines": done, "stderr": problems}


def _ids(value: object) -> list[store.DeadLetterId] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(type(item) in (int, str) for item in value):
        raise ProtocolError("ids is a list of job ids and delivery ids, or null for every "
                            "dead letter")
    return value


def _strings(value: object, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ProtocolError(f"{name} is a list of strings")
    return value


def _read(file: Path, query: Callable[[sqlite3.Connection], T]) -> T | None:
    """``query`` on a connection of this thread's own; None if there is no ledger to read."""
    try:
        with contextlib.closing(store.read_only(file)) as connection:
            return query(connection)
    except (OSError, sqlite3.Error):
        return None


