"""Webhook deliveries in the ledger, so that none is lost to a stop, a crash or a kill -9.

A delivery is kept (a row of the ledger's ``deliveries``, written by its writer thread with
the job that made it: one commit for a burst, no fsync of its own) before its first attempt,
and removed once the endpoint acknowledged it. One that exhausted its retries, or was refused
for good, becomes a dead letter, where ``watchd webhooks list`` shows it and ``watchd webhooks
replay`` sends it again.

watchd 0.1 kept them as files (``<state_dir>/spool/<rule>/<action>/*.json`` waiting,
``<state_dir>/dead/*.json`` dead letters): the first start of this version imports them
into the ledger and removes the files.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from watchd.core.logs import log
from watchd.ledger import store

SUFFIX = ".json"


@dataclass
class Delivery:
    id: str
    rule: str
    action: int  # the action's place in its rule, from 1
    event: str
    path: bytes
    body: bytes
    created: float
    attempts: int = 0
    last_error: str | None = None
    url: str | None = None  # where its webhook posted when it was made; None: anywhere
    dead: bool = False

    def values(self) -> tuple[object, ...]:
        """As ``store.DELIVERY_COLUMNS``."""
        return (self.id, self.rule, self.action, self.event, self.path, self.body, self.created,
                self.attempts, self.last_error, self.url, int(self.dead))

    @classmethod
    def from_legacy_file(cls, file: Path) -> Delivery:
        """A delivery as watchd 0.1 kept it, one JSON file each."""
        data = json.loads(file.read_bytes())
        return cls(data["id"], data["rule"], int(data["action"]), data["event"],
                   base64.b64decode(data["path_b64"]), data["body"].encode(),
                   float(data["created"]), int(data["attempts"]), data["last_error"])


class DeliveryWriter(Protocol):
    """Who writes deliveries: the daemon's ledger (its writer thread), or a command itself."""

    def put_delivery(self, values: tuple[object, ...]) -> None: ...

    def end_delivery(self, delivery_id: str) -> None: ...

    def flush(self) -> None:
        """Return once what was handed to it before is on disk."""


class DirectWriter:
    """Deliveries written at once, by this process (``watchd webhooks replay``)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def put_delivery(self, values: tuple[object, ...]) -> None:
        with store.transaction(self.connection):
            self.connection.execute(store.PUT_DELIVERY, values)

    def end_delivery(self, delivery_id: str) -> None:
        with store.transaction(self.connection):
            self.connection.execute(store.END_DELIVERY, (delivery_id,))

    def flush(self) -> None:
        """Written already: each in its own transaction."""


class Spool:
    def __init__(self, state_dir: Path, writer: DeliveryWriter | None = None) -> None:
        self.state_dir = state_dir
        self.file = store.path_in(state_dir)
        self.writer = writer

    def keep(self, delivery: Delivery) -> None:
        assert self.writer is not None
        self.writer.put_delivery(delivery.values())

    def done(self, delivery: Delivery) -> None:
        assert self.writer is not None
        self.writer.end_delivery(delivery.id)

    def bury(self, delivery: Delivery) -> str:
        """Make a delivery a dead letter, with its attempts and last error; where it is kept.
        It is on disk when this returns (as ``flush``): the log line that follows tells an
        admin to look for it with ``watchd webhooks list``, which reads only what is."""
        grave = self.bury_later(delivery)
        assert self.writer is not None
        self.writer.flush()
        return grave

    def bury_later(self, delivery: Delivery) -> str:
        """``bury``, written with the next commit (a reload's, on the main loop: it may not
        wait for the disk)."""
        assert self.writer is not None
        delivery.dead = True
        self.writer.put_delivery(delivery.values())
        return str(self.file)

    def load(self, rule: str, action: int) -> list[Delivery]:
        """The deliveries waiting in one outbox, oldest first (not the dead letters asked for
        again: the ledger hands those over once it takes them, ``take_asked_deliveries``)."""
        return self._select(f"dead={store.WAITING} AND rule=? AND action=?", (rule, action))

    def outboxes(self) -> list[tuple[str, int]]:
        """Every (rule, action) with deliveries waiting."""
        return list(self.waiting().keys())

    def waiting(self, asked: bool = False) -> dict[tuple[str, int], int]:
        """How many deliveries wait in each outbox (with ``asked``: the dead letters asked for
        again as well, which wait for the daemon to take them)."""
        wanted = f"({store.WAITING},{store.ASKED})" if asked else f"({store.WAITING})"
        with self._reading() as connection:
            if connection is None:
                return {}
            return {(rule, action): count for rule, action, count in connection.execute(
                f"SELECT rule, action, count(*) FROM deliveries WHERE dead IN {wanted} "
                "GROUP BY rule, action ORDER BY rule, action")}

    def dead_letters(self) -> list[Delivery]:
        return self._select(f"dead={store.BURIED}", ())

    def import_legacy(self) -> list[Delivery]:
        """Move what watchd 0.1 left in the spool and dead-letter directories into the ledger
        (one transaction), then remove those files: done once, at the first start. The
        deliveries imported that wait to be sent."""
        waiting = sorted((self.state_dir / "spool").glob(f"*/*/*{SUFFIX}"))
        dead = sorted((self.state_dir / "dead").glob(f"*{SUFFIX}"))
        if not waiting and not dead:
            return []
        found = [(file, delivery) for file, delivery in _legacy(waiting)]
        found += [(file, _buried(delivery)) for file, delivery in _legacy(dead)]
        with (contextlib.closing(store.connect(self.file, create=True)) as connection,
              store.transaction(connection)):
            connection.executemany(store.PUT_DELIVERY,
                                   [delivery.values() for _, delivery in found])
        for file, _ in found:
            file.unlink()
        for directory in sorted({file.parent for file in waiting + dead}, reverse=True):
            for empty in (directory, directory.parent, directory.parent.parent):
                with contextlib.suppress(OSError):
                    empty.rmdir()
        log(logging.INFO, f"imported {len(found)} webhook deliveries of watchd 0.1 (their files "
            f"in {self.state_dir}) into the ledger", path=str(self.file))
        return [delivery for _, delivery in found if not delivery.dead]

    def _select(self, where: str, parameters: tuple[object, ...]) -> list[Delivery]:
        with self._reading() as connection:
            if connection is None:
                return []
            rows = connection.execute(
                f"SELECT {','.join(store.DELIVERY_COLUMNS)} FROM deliveries WHERE {where} "
                "ORDER BY seq", parameters).fetchall()
        return [delivery_of(row) for row in rows]

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection | None]:
        """A connection to read with; None where there is no ledger that can be read (then
        nothing waits: the daemon says why the ledger cannot be had)."""
        try:
            connection = store.read_only(self.file)
        except (OSError, sqlite3.Error):
            yield None
            return
        try:
            yield connection
        finally:
            connection.close()


def delivery_of(row: tuple[object, ...]) -> Delivery:
    """A delivery from its row (``store.DELIVERY_COLUMNS``)."""
    data = dict(zip(store.DELIVERY_COLUMNS, row, strict=True))
    data["dead"] = data["dead"] == store.BURIED
    return Delivery(**data)  # type: ignore[arg-type]


def _buried(delivery: Delivery) -> Delivery:
    delivery.dead = True
    return delivery


def _legacy(files: list[Path]) -> Iterator[tuple[Path, Delivery]]:
    for file in files:
        if file.name.startswith("."):
            continue  # a write cut short by a crash: its delivery was never acknowledged to anyone
        try:
            yield file, Delivery.from_legacy_file(file)
        except (OSError, ValueError, KeyError, TypeError) as error:
            log(logging.ERROR, f"unreadable webhook delivery file left alone: {error}", path=file)
