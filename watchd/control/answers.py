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
from watchd.outbox.deadletters import ledger_listing

T = TypeVar("T")


def document(daemon: Daemon) -> dict[str, Any]:
    """The status document: the live part asked of the main loop, the ledger read here."""
    live = daemon.ask(lambda: status.live(daemon))
    return status.with_ledger(live, _read(daemon.ledger.file, store.dead_by_rule))


def answers(daemon: Daemon) -> dict[str, Answer]:
    def status_of(request: dict[str, object]) -> object:
        return document(daemon)

    def jobs_of(request: dict[str, object]) -> object:
        states = (store.DEAD,) if request.get("dead") else (*store.UNFINISHED, store.DEAD)
        rows = _read(daemon.ledger.file, lambda connection: store.jobs(connection, states))
        if rows is None:
            raise ProtocolError(f"cannot read the ledger {daemon.ledger.file}")
        # The ledger keeps a first action's run unwritten (a crash runs it again, as queued):
        # the daemon knows which run now.
        running = daemon.workers.running_jobs()
        rows = [row._replace(state=store.RUNNING)
                if row.state == store.QUEUED and row.id in running else row for row in rows]
        return {"lines": list(ledger_listing(rows, bool(request.get("json"))))}

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


def _strings(value: object, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ProtocolError(f"{name} is a list of strings")
    return value


def _read(file: Path, query: Callable[[sqlite3.Connection], T]) -> T | None:
    """``query`` on a connection of this thread's own; None if there is no ledger to read."""
    try:
        with contextlib.closing(store.connect(file, create=False)) as connection:
            return query(connection)
    except (OSError, sqlite3.Error):
        return None


