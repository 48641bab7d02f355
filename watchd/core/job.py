"""A job: one matched event for one rule, or one batch of them, as it travels from the match
to the action."""

from __future__ import annotations

import os
from dataclasses import dataclass

from watchd.core.events import FileEvent
from watchd.core.rules import Root, Rule

JobKey = tuple[str, bytes]  # a rule's name and a path: what runs one at a time
BATCH_PATH = b""  # a batch's path in its key: one batch of a rule runs at a time


@dataclass(frozen=True, slots=True)
class Job:
    """``id`` is the job's in the ledger (0 until it is queued); ``step`` the action to
    perform next, from 1; ``tries`` how many runs of that action have been started.
    ``batch``: the events of a batch rule's job, each path once, in order (``event`` is the
    last of them); empty for any other job."""

    rule: Rule
    root: Root
    event: FileEvent
    id: int = 0
    step: int = 1
    tries: int = 0
    batch: tuple[FileEvent, ...] = ()

    @property
    def key(self) -> JobKey:
        return (self.rule.name, BATCH_PATH if self.batch else self.event.path)

    @property
    def events(self) -> tuple[FileEvent, ...]:
        """The events the job acts on: a batch's, or its one event."""
        return self.batch or (self.event,)

    @property
    def count(self) -> int:
        return len(self.batch) or 1

    @property
    def caught_up(self) -> bool:
        """Whether a catch-up (or a poll) found what the job acts on: all of a batch."""
        return all(event.caught_up for event in self.events)

    def values(self) -> dict[str, bytes]:
        """The placeholder values, as bytes: what ``{path}``, ``{name}`` … stand for; a
        batch's only name its rule, its root, its paths (NUL-separated) and their count."""
        common = {"root": self.root.path, "rule": self.rule.name.encode(),
                  "paths": b"\0".join(event.path for event in self.events),
                  "count": str(self.count).encode()}
        if self.batch:
            return common
        path = self.event.path
        return {
            "path": path,
            "name": os.path.basename(path),
            "dir": os.path.dirname(path),
            "event": self.event.event.encode(),
            "src_path": self.event.src_path,
            **common,
        }
