"""What the control socket answers, each command by its function (on the socket's thread)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
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
from watchd.outbox.deadletters import change_dead_letters, jobs_on_disk, ledger_listing

T = TypeVar("T")


def document(daemon: Daemon) -> dict[str, Any]:
    """The status document: the live part asked of the main loop, the ledger read here."""
    live = daemon.ask(lambda: status.live(daemon))
    return status.with_ledger(live, _read(daemon.ledger.file, store.dead_by_rule))


def answers(daemon: Daemon) -> dict[str, Answer]:
    def status_of(request: dict[str, object]) -> object:
        return document(daemon)

    def jobs_of(request: dict[str, object]) -> object:
        change = request.get("change")
        if change in ("retry", "drop"):
            return _changed(daemon, str(change), _ids(request.get("ids")))
        dead_only = bool(request.get("dead"))
        read = _read(daemon.ledger.file, lambda connection: jobs_on_disk(connection, dead_only))
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
                "stderr": notes}

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


