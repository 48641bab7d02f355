"""Webhook deliveries on disk, so that none is lost to a stop, a crash or a kill -9.

A delivery is written (atomically: a temporary file, fsync, rename) before its first
attempt and removed once the endpoint acknowledged it. One that exhausted its retries,
or was refused for good, moves to the dead letters, where ``watchd webhooks list``
shows it and ``watchd webhooks replay`` sends it again.

    <state_dir>/spool/<rule>/<action>/<ns since epoch>-<id>.json   waiting, in order
    <state_dir>/dead/<id>.json                                     given up on
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from watchd.core.logs import log

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
    file: Path | None = field(default=None, compare=False)

    def to_json(self) -> bytes:
        return json.dumps({
            "id": self.id, "rule": self.rule, "action": self.action, "event": self.event,
            "path_b64": base64.b64encode(self.path).decode(), "body": self.body.decode(),
            "created": self.created, "attempts": self.attempts, "last_error": self.last_error,
        }, indent=1).encode()

    @classmethod
    def from_file(cls, file: Path) -> Delivery:
        data = json.loads(file.read_bytes())
        return cls(data["id"], data["rule"], int(data["action"]), data["event"],
                   base64.b64decode(data["path_b64"]), data["body"].encode(),
                   float(data["created"]), int(data["attempts"]), data["last_error"], file)


class Spool:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.waiting = state_dir / "spool"
        self.dead = state_dir / "dead"

    def prepare(self) -> None:
        _make_private(self.waiting)

    def prepare_dead(self) -> None:
        _make_private(self.dead)

    def outbox(self, rule: str, action: int) -> Path:
        return self.waiting / rule / str(action)

    def keep(self, delivery: Delivery) -> None:
        """Write a new delivery to its outbox's directory; it is on disk when this returns."""
        directory = self.outbox(delivery.rule, delivery.action)
        _make_private(directory)
        delivery.file = directory / f"{time.time_ns():020d}-{delivery.id}{SUFFIX}"
        _write_atomically(delivery.file, delivery.to_json())

    def done(self, delivery: Delivery) -> None:
        if delivery.file is not None:
            with contextlib.suppress(FileNotFoundError):
                delivery.file.unlink()

    def bury(self, delivery: Delivery) -> Path:
        """Move a delivery to the dead letters, with its attempts and last error."""
        _make_private(self.dead)
        grave = self.dead / f"{delivery.id}{SUFFIX}"
        waiting = delivery.file
        delivery.file = grave
        _write_atomically(grave, delivery.to_json())
        if waiting is not None and waiting != grave:
            with contextlib.suppress(FileNotFoundError):
                waiting.unlink()
        return grave

    def load(self, rule: str, action: int) -> list[Delivery]:
        """The deliveries waiting in one outbox, oldest first."""
        return list(_read_all(self.outbox(rule, action)))

    def outboxes(self) -> list[tuple[str, int]]:
        """Every (rule, action) with deliveries waiting on disk."""
        found = []
        if self.waiting.is_dir():
            for rule in sorted(self.waiting.iterdir()):
                for action in sorted(rule.iterdir()) if rule.is_dir() else ():
                    if action.name.isdigit() and any(action.glob(f"*{SUFFIX}")):
                        found.append((rule.name, int(action.name)))
        return found

    def dead_letters(self) -> list[Delivery]:
        return sorted(_read_all(self.dead), key=lambda delivery: delivery.created)


def _read_all(directory: Path) -> Iterator[Delivery]:
    if not directory.is_dir():
        return
    for file in sorted(directory.glob(f"*{SUFFIX}")):
        if file.name.startswith("."):
            continue  # a write cut short by a crash: its delivery was never acknowledged to anyone
        try:
            yield Delivery.from_file(file)
        except (OSError, ValueError, KeyError, TypeError) as error:
            log(logging.ERROR, f"unreadable webhook delivery file left alone: {error}", path=file)


def _make_private(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, path)
    # The rename is durable only once its directory is: without this, a power cut in the next
    # seconds could take a delivery the worker has already moved on from.
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
